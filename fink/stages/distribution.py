"""distribution: user filters over the science archive, each selection to its own Kafka topic.

Notes
-----
One streaming query serves every filter: the science archive is read as a file stream,
all filters run in one Arrow UDF per micro-batch (:func:`fink.filters.apply_filters`),
each selected alert becomes one row per topic that wants it, and the batch goes to Kafka
in one transaction (:class:`fink.io.delivery.BatchPublisher`): after a crash and restart no
alert reaches a topic twice.

The wire format is the Fink community client's: the message value is the alert with its
added values as schemaless Avro (Spark's ``to_avro``), the key the JSON of that Avro
schema; the schema is also published on ``<topic>_schema``. A topic may drop the cutouts
or keep only chosen fields; topics with the same choice share one encoding per alert.
Topics are created with their partitions and retention when the stage is built, before
any write.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated, local_path
from fink.filters.filter_api import SELECTED, AlertFilter, label, load_filters
from fink.log import logger
from fink.runtime import metrics
from fink.runtime.streaming import observed
from fink.science.science_api import add_metrics
from fink.stages.science_stream import expander, science_schema, source
from fink.stages.topics import Encoding, alert_columns, derived, encodings, messages, prepare_topics
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter

    from fink.stages.step import Step

QUERY_NAME = "distribution"
FILTERS_METRICS = "distribution_filters"
#: Parquet options of an outbox, read once then deleted: its values are whole encoded alerts,
#: not worth compressing or a dictionary
OUTBOX_OPTIONS = {"compression": "none", "parquet.enable.dictionary": "false"}
#: the file that seals a complete outbox: its topics and message keys (JSON)
SEAL = "_fink_outbox.json"
#: where a filter runs: in the micro-batch pass (any filter), or in the real-time lane (SQL conditions)
LANES = ("microbatch", "realtime")

@dataclasses.dataclass(frozen=True)
class DistributionConfig(surveys.OfSurvey, Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    filters
        Topic -> filter by dotted path (``package.module:function``), or a mapping
        ``{"condition": "<Spark SQL over the alert's fields>", "lane": "realtime"}``: a filter of
        the real-time lane (:mod:`fink.stages.realtime`: sub-second, at least once, no
        science module). Empty: the survey description's topics and filters.
    filter_params
        Topic -> keyword parameters of its filter.
    topic_options
        Topic -> ``{"cutouts": false}`` to drop the three cutouts, and/or
        ``{"fields": [...]}`` to send only these top-level fields.
    partitions, retention_ms
        Of each topic created (and of its ``_schema`` topic).
    max_files_per_trigger
        Science archive files read per micro-batch at most (0: all new files).
    science_path, checkpoint
        Empty means under ``data_dir`` (and the survey's folder): ``science``,
        ``checkpoints/distribution``.
    survey
        A shipped survey (``ztf``, ``rubin``) or a description file: the science archive's
        layout and the default filters.
    """

    filters: dict = dataclasses.field(default_factory=dict)
    filter_params: dict = dataclasses.field(default_factory=dict)
    topic_options: dict = dataclasses.field(default_factory=dict)
    partitions: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    max_files_per_trigger: int = 8
    science_path: str = ""
    checkpoint: str = ""
    survey: str = "ztf"

    def validate(self, source: str = "configuration") -> None:
        for topic, entry in self.filters.items():
            if isinstance(entry, str):
                continue
            if not isinstance(entry, dict) or set(entry) - {"condition", "lane"} or \
                    entry.get("lane", "realtime") not in LANES or not isinstance(entry.get("condition"), str):
                raise ConfigError(f"{source}: filter of topic '{topic}' must be a dotted path, or "
                                  f"{{condition: <SQL>, lane: realtime}}, got {entry!r}")
            if entry.get("lane", "realtime") != "realtime":
                raise ConfigError(f"{source}: filter of topic '{topic}': a SQL condition runs in the real-time "
                                  "lane (lane: realtime); for the micro-batch lane write it as a filter function")
        if not self.topic_filters() and not self.realtime_filters():
            raise ConfigError(f"{source}: no filter: map at least one topic to a filter")
        for topic, opts in self.topic_options.items():
            if topic not in self.topic_filters():
                raise ConfigError(f"{source}: topic_options for '{topic}', which has no filter")
            if not isinstance(opts, dict) or set(opts) - {"cutouts", "fields"}:
                raise ConfigError(f"{source}: topic_options['{topic}'] takes only 'cutouts' and 'fields'")
            if "fields" in opts and (not isinstance(opts["fields"], list) or not opts["fields"]):
                raise ConfigError(f"{source}: topic_options['{topic}']['fields'] must be a non-empty list")
        if self.partitions < 1 or self.retention_ms < 1 or self.max_files_per_trigger < 0:
            raise ConfigError(f"{source}: partitions >= 1, retention_ms >= 1 and max_files_per_trigger >= 0")


    def topic_filters(self) -> dict[str, str]:
        """Topic -> filter of the micro-batch lane: the configured ones, or the survey's."""
        return {t: f for t, f in (self.filters or self.description().filters).items() if isinstance(f, str)}

    def realtime_filters(self) -> dict[str, str]:
        """Topic -> SQL condition of the real-time lane's filters (:mod:`fink.stages.realtime`)."""
        return {t: f["condition"] for t, f in self.filters.items() if isinstance(f, dict)}

    def paths(self, fink_cfg: FinkConfig) -> dict[str, str]:
        survey = self.description()
        return {"science": self.science_path or survey.data_uri(fink_cfg, "science"),
                "checkpoint": self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "distribution")}

    def load_filters(self) -> list[AlertFilter]:
        return load_filters(self.topic_filters(), self.filter_params)


# -- the science archive as a stream ---------------------------------------------------------


# -- what each topic receives ----------------------------------------------------------------


def select(df: "DataFrame", filters: list[AlertFilter]) -> "DataFrame":
    """Run every filter; count alerts and selections per topic in the query's metrics."""
    from pyspark.sql import functions as F

    from fink.filters.filter_api import apply_filters

    df = apply_filters(df, filters, observe_as=FILTERS_METRICS)
    counts = [F.sum(F.array_contains(F.col(SELECTED), k).cast("int")).alias(f"selected_{f.module.key}")
              for k, f in enumerate(filters)]
    df = df.observe(QUERY_NAME, F.count(F.lit(1)).alias("alerts"),
                    F.sum((F.size(F.col(SELECTED)) > 0).cast("int")).alias("selected"), *counts)
    return metrics.observe_latency(df)  # Kafka timestamp -> start of the batch that sends it


# -- the stage -------------------------------------------------------------------------------


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
        self.publisher = None
        #: batch id -> messages per topic (None: delivered before, a replay); filled as they commit
        self.delivered: dict[int, dict[str, int] | None] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fink-distribution")
        self._failed: BaseException | None = None

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
        rows = messages(batch, self.encs, self.added).select("_k", "value")
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
        seal = {"topics": self.topics, "encodings": [[e.schema, list(e.topics)] for e in self.encs]}
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


def build(spark: "SparkSession", stage_cfg: DistributionConfig, fink_cfg: FinkConfig,
          producer: Any = None) -> "DataStreamWriter":
    """The stage's unstarted writer: science archive -> filters -> one Kafka topic per filter.

    The stage's own query runs its step (:func:`step`) on each batch of the science archive's
    new files, joined to their raw alerts. Filter loading errors and bad topic options are
    raised here; the topics exist when it returns. ``producer``: the raw2science
    configuration that writes the science archive, for its layout while the archive is still
    empty (:func:`stored_schema`).
    """
    from fink.stages.step import standalone

    paths = stage_cfg.paths(fink_cfg)
    return standalone(step(spark, stage_cfg, fink_cfg, checkpoint=paths["checkpoint"], producer=producer,
                           from_files=True), paths["checkpoint"])


def step(spark: "SparkSession", stage_cfg: DistributionConfig, fink_cfg: FinkConfig, *, checkpoint: str,
         producer: Any = None, from_files: bool = False, **context: Any) -> "Step":
    """The stage as a step: the batch's science alerts in (in a pipeline: cached by
    raw2science; alone: the science archive's new rows joined to their alerts), each
    filter's selection to its topic in the batch's transaction.

    The filters run on the columns they read alone (with the alerts' Kafka coordinates); the
    selected alerts are then joined back to the full rows and encoded once per encoding. The
    transactions and outboxes are keyed by ``checkpoint`` (the pipeline's, or the stage's).
    ``from_files``: the science rows' layout from the archive's records (alone), not from
    ``producer`` (a pipeline's raw2science).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from fink.filters.community_filters import resolve_filters
    from fink.filters.filter_api import FilterError, selected
    from fink.science.science_api import ModuleColumns, ScienceModuleError, check_inputs, module_metrics
    from fink.stages.step import Output, Step, count_where, latency_quantiles, report

    paths = stage_cfg.paths(fink_cfg)
    filters = stage_cfg.load_filters()
    topics = [f.topic for f in filters]
    schema = science_schema(spark, paths["science"], producer, stage_cfg.survey, from_files=from_files)
    fink_names = stage_cfg.description().fink_columns()  # this broker's columns under Fink's names
    filters = resolve_filters(filters, schema, fink_names)  # Fink's filters' arguments, as Fink resolves them
    encs = encodings(alert_columns(spark.createDataFrame([], schema), fink_names).schema, stage_cfg.topic_options,
                     topics)
    prepare_topics(fink_cfg.kafka_bootstrap, encs, topics, stage_cfg.partitions, stage_cfg.retention_ms)
    sink = Sink(fink_cfg.kafka_bootstrap, topics, encs, checkpoint, derived(schema, fink_names))
    sink.recover(spark)
    ids = ["kafka_topic", "kafka_partition", "kafka_offset"]
    heads = list(dict.fromkeys(c.split(".")[0] for f in filters for c in f.module.inputs))
    try:
        check_inputs([f.module for f in filters], schema)
    except ScienceModuleError as exc:  # an input column that is not in the alerts, named before anything runs
        raise FilterError(str(exc).replace("science module", "filter", 1)) from exc
    made = ModuleColumns([f.module for f in filters], metrics_column="_metrics")
    narrow = [F.col(c) for c in dict.fromkeys([*ids, "kafka_timestamp", *heads])]
    answers = [*[F.col(c) for c in ids], F.col("kafka_timestamp"),
               selected([F.col(ModuleColumns.TMP).getField(f"_sel{k}") for k in range(len(filters))]).alias(SELECTED),
               *made.metrics, F.current_timestamp().alias("_at")]

    def run(science: "DataFrame", batch_id: int, rows: int | None) -> Output:
        started = time.time()
        if not filters:  # every filter runs in the real-time lane
            alerts = rows if rows is not None else science.count()
            return Output(None, 0, report(QUERY_NAME, batch_id, alerts, {"alerts": alerts, "selected": 0}, None,
                                          started))
        clock = metrics.Clock()
        # the filters on the columns they read alone, their UDF built once (apply_filters' columns)
        flags = science.select(*narrow, made.call).select(*answers).persist(StorageLevel.MEMORY_AND_DISK_DESER)
        picked = F.col(SELECTED)
        chosen = flags.where(F.size(picked) > 0).select(*ids, SELECTED)
        # the selected alerts, whole, encoded once per encoding into the outbox; the batch's
        # transaction then runs on the sink's thread while the pipeline goes on
        try:
            sink(science.join(F.broadcast(chosen), ids, "inner"), batch_id)
        except BaseException:
            flags.unpersist()  # not handed to the pipeline yet: released here
            raise
        clock.lap("select_encode")

        def finish() -> dict[str, Any]:
            tally = flags.agg(F.count(F.lit(1)).alias("alerts"), count_where(F.size(picked) > 0).alias("selected"),
                              *[count_where(F.array_contains(picked, k)).alias(f"selected_{f.module.key}")
                                for k, f in enumerate(filters)],
                              latency_quantiles(F.col("kafka_timestamp"), F.col("_at")).alias("_lat"),
                              *module_metrics([f.module for f in filters], "_metrics")).first().asDict()
            clock.lap("counts")
            observed = {k: int(tally[k] or 0) for k in ["alerts", "selected"] + [f"selected_{f.module.key}"
                                                                                  for f in filters]}
            account = report(QUERY_NAME, batch_id, observed["alerts"], observed, list(tally["_lat"] or []) or None,
                             started, laps=clock.laps)
            account["observedMetrics"][FILTERS_METRICS] = {
                k: v for k, v in tally.items() if k not in observed and not k.startswith("_")}
            return account

        return Output(None, 0, None, [flags], finish)

    return Step(QUERY_NAME, reads="science", writes=None, run=run, sink=sink,
                source=lambda: source(spark, paths["science"], stage_cfg.survey, stage_cfg.max_files_per_trigger,
                                      producer),
                source_table=paths["science"],
                expand=expander(spark, paths["science"], producer.survey if producer is not None else stage_cfg.survey,
                                fink_cfg, schema))


def reconcile(progress: list[dict], sink: Sink) -> dict[str, Any]:
    """Account for a run: alerts read, per topic selected (observed) and delivered (Kafka,
    once the sink's last transaction has ended).

    ``balanced`` when every topic got exactly what its filter selected (replayed batches,
    already delivered, are left out of both sides).
    """
    sink.flush()
    delivered = sink.delivered
    totals: dict[str, Any] = {"batches": 0, "alerts": 0, "selected": 0, "topics": {}, "filters": {},
                              "replayed": sum(1 for v in delivered.values() if v is None)}
    for p in progress:
        values = observed(p, QUERY_NAME)
        batch = int(p["batchId"])
        if not values or not values.get("alerts"):
            continue
        if batch in delivered and delivered[batch] is None:
            continue
        totals["batches"] += 1
        totals["alerts"] += int(values["alerts"])
        totals["selected"] += int(values.get("selected") or 0)
        sent = delivered.get(batch) or {}
        for key, n in values.items():
            if key.startswith("selected_"):
                entry = totals["topics"].setdefault(key[len("selected_"):], {"selected": 0, "delivered": 0})
                entry["selected"] += int(n or 0)
        for topic, n in sent.items():
            totals["topics"].setdefault(label(topic), {"selected": 0, "delivered": 0})["delivered"] += n
        add_metrics(totals["filters"], observed(p, FILTERS_METRICS))
    totals["balanced"] = all(t["selected"] == t["delivered"] for t in totals["topics"].values())
    return totals
