"""distribution's sink: each micro-batch's messages encoded into an outbox, then delivered
to Kafka in the batch's transaction while Spark computes the next batch.

The topics a batch sends to are those of its filters and of the watchlists registered when
it started (:mod:`fink.stages.watching`): each outbox is sealed with its own topic names and
encodings, so a restart delivers it as it was computed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import local_path
from fink.log import logger
from fink.runtime import metrics
from fink.stages import watching
from fink.stages.topics import Encoding, messages

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

QUERY_NAME = "distribution"
#: Parquet options of an outbox, read once then deleted: its values are whole encoded alerts,
#: not worth compressing or a dictionary
OUTBOX_OPTIONS = {"compression": "none", "parquet.enable.dictionary": "false"}
#: the file that seals a complete outbox: its topics and message keys (JSON)
SEAL = "_fink_outbox.json"



def query_id(spark: "SparkSession", checkpoint: str) -> str:
    """The id Spark keeps in the checkpoint: the same across restarts, new for a new checkpoint."""
    from fink.io.filestore import writer_id

    return writer_id(spark, checkpoint)


class Sink:
    """The ``foreachBatch`` function: encode the batch's messages, deliver them in one transaction.

    With a local checkpoint the encoded messages wait in the batch's outbox, and its Kafka
    transaction runs on a thread of its own while Spark encodes the next batch: the call for
    batch ``n`` returns once batch ``n - 1`` is delivered and ``n``'s outbox is sealed
    (:data:`SEAL`: its topics and keys, written once Spark's files are complete). A crash
    after Spark recorded a batch but before Kafka committed it leaves that outbox, which
    :meth:`recover` (run by :func:`build`) delivers before anything else. A transaction that
    failed fails every later batch until its outbox, and those after it, are delivered.
    """

    def __init__(self, bootstrap: str, topics: list[str], encs: list[Encoding], checkpoint: str,
                 added: dict[str, Any] | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.bootstrap, self.topics, self.encs, self.checkpoint = bootstrap, topics, encs, checkpoint
        self.added = added  # the batches' derived columns, when their schema is known (messages())
        self.keys = {k: e.schema.encode() for e in encs for k in e.topics}
        #: the watchlists' encoding in the batches to come (their topics after the filters'), if any
        self.watch: Encoding | None = None
        self.publisher = None
        #: batch id -> messages per topic (None: delivered before, a replay); filled as they commit
        self.delivered: dict[int, dict[str, int] | None] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fink-distribution")
        self._failed: BaseException | None = None

    @property
    def writes_outbox(self) -> bool:
        """Whether a batch's messages are written by one Spark action, into its outbox (a local
        checkpoint), rather than fetched partition by partition through the driver."""
        return _outbox(self.checkpoint, 0) is not None

    def route(self, topics: list[str], watch: Encoding | None) -> None:
        """Send the batches to come to ``topics``: the filters' then the watchlists' (``watch``:
        their encoding, its topic numbers after the filters')."""
        self.topics, self.watch = list(topics), watch
        self.keys = {k: e.schema.encode() for e in self._encodings() for k in e.topics}

    def _encodings(self) -> list[Encoding]:
        return [*self.encs, *([self.watch] if self.watch is not None and self.watch.topics else [])]

    def _publisher(self, spark: "SparkSession"):
        from fink.io.delivery import BatchPublisher

        if self.publisher is None:
            self.publisher = BatchPublisher(self.bootstrap, f"{QUERY_NAME}-{query_id(spark, self.checkpoint)}")
        return self.publisher

    def __call__(self, batch: "DataFrame", batch_id: int) -> None:
        spark = batch.sparkSession
        publisher = self._publisher(spark)
        if self._failed is not None:  # the query runs again after a failed transaction
            self._resume(spark)
        outbox = _outbox(self.checkpoint, batch_id)
        if publisher.delivered(batch_id):  # a replay of a delivered batch: nothing to compute
            self.delivered[batch_id] = None
            if outbox is not None:  # what a crash right after the commit left
                shutil.rmtree(outbox, ignore_errors=True)
            return
        rows = messages(batch, self.encs, self.added).select("_k", "value") if self.encs else None
        if self.watch is not None and self.watch.topics:
            matched = watching.messages(batch, self.watch, self.added)
            rows = matched if rows is None else rows.unionByName(matched)
        if rows is None:  # no filter of this lane and no watchlist: the batch recorded, nothing sent
            self.delivered[batch_id] = publisher.publish(batch_id, iter(()))
            return
        clock = metrics.Clock()
        if outbox is None:
            # partition by partition through the driver's JVM (a checkpoint Python cannot read)
            out = ((self.topics[r[0]], self.keys[r[0]], r[1]) for r in rows.toLocalIterator(prefetchPartitions=False))
            self.delivered[batch_id] = publisher.publish(batch_id, out)
            clock.lap("encode_publish")
            metrics.note(QUERY_NAME, batch_id, {"delivered": self.delivered[batch_id], "seconds": clock.laps})
            return
        shutil.rmtree(outbox, ignore_errors=True)  # an earlier attempt's, killed before its commit
        rows.write.mode("overwrite").options(**OUTBOX_OPTIONS).parquet(str(outbox))
        self._seal(outbox)
        clock.lap("encode")
        self.flush()  # the previous batch's transaction, which ran meanwhile
        clock.lap("wait")
        self._pool.submit(self._deliver, batch_id, outbox, clock)

    def _resume(self, spark: "SparkSession | None") -> None:
        """After a failed transaction: deliver its outbox, and those after it, before anything else."""
        self.flush(raise_failure=False)
        self._failed = None
        self.recover(spark)

    def _seal(self, outbox: Path) -> None:
        """Mark a complete outbox with what its topic indexes stand for (the filters may change
        before a restart delivers it)."""
        seal = {"topics": self.topics, "encodings": [[e.schema, list(e.topics)] for e in self._encodings()]}
        tmp = outbox / f".{SEAL}.tmp"
        tmp.write_text(json.dumps(seal))
        tmp.replace(outbox / SEAL)

    def _deliver(self, batch_id: int, outbox: Path, clock: "metrics.Clock | None" = None) -> None:
        """Send a sealed outbox in the batch's transaction, then delete it; a failure is kept
        (and the outbox with it) for :meth:`flush` to raise."""
        clock = clock or metrics.Clock()
        try:
            seal = json.loads((outbox / SEAL).read_text())
            topics = seal["topics"]
            keys = {k: schema.encode() for schema, members in seal["encodings"] for k in members}
            out = ((topics[k], keys[k], v) for k, v in read_outbox(outbox))
            self.delivered[batch_id] = self.publisher.publish(batch_id, out)
        except BaseException as exc:
            self._failed = exc
            logger.error("distribution: batch %d not delivered, its outbox kept for the next try: %s", batch_id, exc)
            raise
        shutil.rmtree(outbox, ignore_errors=True)
        clock.lap("publish")
        metrics.note(QUERY_NAME, batch_id, {"delivered": self.delivered[batch_id], "seconds": clock.laps})

    def flush(self, timeout: float | None = None, raise_failure: bool = True) -> None:
        """Wait until every transaction handed to the delivery thread so far has ended; raise
        the failure of one (again on every call, until the query runs again and delivers it)."""
        self._pool.submit(lambda: None).result(timeout)  # one thread: runs after those before it
        if raise_failure and self._failed is not None:
            raise self._failed

    def recover(self, spark: "SparkSession | None") -> list[int]:
        """Deliver the sealed outboxes a crash left (in batch order), drop the unsealed ones
        (Spark runs their batch again); return the batches delivered."""
        folder = local_path(self.checkpoint)
        folder = None if folder is None else folder / "outbox"
        if folder is None or not folder.is_dir():
            return []
        sent = []
        for path in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            batch_id = int(path.name)
            if not (path / SEAL).exists() or self._publisher(spark).delivered(batch_id):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if spark is not None and not sent:
                metrics.attach(spark)  # what it delivers is noted in the store like any batch
            logger.info("distribution: batch %d was recorded by Spark, not by Kafka: delivered now", batch_id)
            self._deliver(batch_id, path)
            sent.append(batch_id)
        return sent


def _outbox(checkpoint: str, batch_id: int) -> Path | None:
    """Where a batch's encoded messages wait for the transaction: ``<checkpoint>/outbox/<batch>``
    when the checkpoint is a local folder, else None (they go through the driver's JVM).

    Notes
    -----
    The Spark tasks write the messages there as Parquet, and this process reads them back
    with pyarrow, a few at a time, into the transaction. Fetched through the driver's JVM
    instead (``toLocalIterator``), every partition's messages became a task result that the
    6 GB driver of the pipeline kept by gigabytes behind a backlog, until it ran out of heap.
    """
    folder = local_path(checkpoint)
    return None if folder is None else folder / "outbox" / str(batch_id)


def read_outbox(folder: Path, rows_per_read: int = 64) -> Iterator[tuple[int, bytes]]:
    """The ``(topic index, value)`` messages of an outbox, ``rows_per_read`` in memory at a time."""
    import pyarrow.parquet as pq

    for path in sorted(folder.glob("*.parquet")):
        for chunk in pq.ParquetFile(path).iter_batches(batch_size=rows_per_read, columns=["_k", "value"]):
            yield from zip(chunk.column(0).to_pylist(), chunk.column(1).to_pylist(), strict=True)
