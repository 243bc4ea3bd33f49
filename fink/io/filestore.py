"""Exactly-once Parquet tables written batch by batch, and their compaction.

Notes
-----
A micro-batch is written to a staging folder, then its files are moved into the table
under names made of the batch's key (``part-<writer>-<batch>-<n>.parquet``), then a commit
marker ``_commits/<writer>-<batch>.json`` records what the batch held. A batch replayed after
a crash (Spark re-runs the last uncommitted batch with the same data) first removes files of
its own key, then writes them again: no file is lost or doubled.

The key holds the writer (:func:`batch_key`: the streaming query's id, kept in its
checkpoint) as well as the batch id: two queries writing one table (a stage service, then
the one-pass pipeline; or a query whose checkpoint was deleted) number their batches from 0
each, and batch 0 of the second is not batch 0 of the first. Tables written before the key
held the writer have ``part-b<batch>-`` and ``_commits/<batch>.json``: still read, never
taken for a new batch. Moves and listings go through
Hadoop's ``FileSystem`` so the same code works on a local disk, HDFS or S3.

Readers ignore folders and files whose names start with ``_`` or ``.``, so staging and
markers never show up in queries.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fink.log import logger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class FileStore:
    """Hadoop file system operations on one table root."""

    def __init__(self, spark: "SparkSession", root: str):
        self.spark, self.root = spark, root.rstrip("/")
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def path(self, *parts: str):
        return self._Path("/".join([self.root, *parts]))

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def files(self, *parts: str) -> list[str]:
        """Relative paths of every data file under ``parts`` (recursive, markers excluded)."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        out, it = [], self.fs.listFiles(base, True)
        prefix = str(self.fs.makeQualified(base).toUri().getPath()).rstrip("/") + "/"
        while it.hasNext():
            path = str(it.next().getPath().toUri().getPath())
            rel = path[len(prefix):]
            if not any(p.startswith(("_", ".")) for p in rel.split("/")):
                out.append(rel)
        return sorted(out)

    def write_text(self, text: str, *parts: str) -> None:
        stream = self.fs.create(self.path(*parts), True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()

    def replace_text(self, text: str, *parts: str) -> None:
        """Write a whole file atomically: a hidden temporary beside it, then a rename over it
        (a reader sees the old content or the new one, never a part)."""
        *folder, name = parts
        tmp = (*folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self.write_text(text, *tmp)
        try:
            if not self.exists(*parts):
                self.move(tmp, tuple(parts))
            else:  # over the old file, in one rename
                jvm = self.spark.sparkContext._jvm
                conf = self.spark.sparkContext._jsc.hadoopConfiguration()
                options = self.spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
                options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
                target = self.fs.makeQualified(self.path(*parts))
                context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(target.toUri(), conf)
                context.rename(self.fs.makeQualified(self.path(*tmp)), target, options)
        finally:
            if self.exists(*tmp):
                self.delete(*tmp)

    def read_text(self, *parts: str) -> str:
        stream = self.fs.open(self.path(*parts))
        try:
            jvm = self.spark.sparkContext._jvm
            return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def move(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        target = self.path(*dst)
        self.fs.mkdirs(target.getParent())
        if self.fs.exists(target):
            self.fs.delete(target, False)
        if not self.fs.rename(self.path(*src), target):
            raise OSError(f"cannot move {self.path(*src)} to {target}")

    def delete(self, *parts: str) -> None:
        self.fs.delete(self.path(*parts), True)


def write_batch(df: "DataFrame", root: str, batch_id: BatchKey, partition_by: str | None, files: int = 1,
                options: Mapping[str, str] | None = None) -> int:
    """Write ``df`` as batch ``batch_id`` of the table at ``root``, exactly once; return its files.

    Without the commit marker, first removes any file this batch id left behind.
    """
    folders = stage(df, root, batch_id, partition_by, files, options)
    return publish(df.sparkSession, root, batch_id, folders)


def staging_folder(batch_id: BatchKey) -> str:
    """Where batch ``batch_id`` is written before its files move into the table (hidden from readers)."""
    return f"_staging/b{batch_id}"


def row_count(spark: "SparkSession", files: list[str]) -> int:
    """Rows in the Parquet ``files``, from their footers: read in this process when they are
    local, by Spark otherwise (a job of its own, for ``hdfs://`` or ``s3a://``)."""
    from fink.config import local_path

    if not files:
        return 0
    local = [local_path(f) for f in files]
    if all(p is not None for p in local):
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in local)
    return spark.read.parquet(*files).count()


def stage(df: "DataFrame", root: str, batch_id: BatchKey, partition_by: str | None, files: int = 1,
          options: Mapping[str, str] | None = None, append: bool = False) -> dict[str, list[str]]:
    """Write ``df`` to the staging folder of ``batch_id``; return its Parquet files by partition folder.

    ``options`` are Parquet writer options (``compression``, ``parquet.enable.dictionary``...);
    ``append``: beside what an earlier call staged for the batch (a batch written in parts).

    Nothing is visible in the table yet: :func:`publish` moves the files in.
    """
    store = FileStore(df.sparkSession, root)
    staging = staging_folder(batch_id)
    if not append:
        store.delete(staging)
    writer = df.coalesce(files).write.mode("append" if append else "overwrite").options(**(options or {}))
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.parquet(f"{store.root}/{staging}")
    by_folder: dict[str, list[str]] = {}
    for rel in store.files(staging):
        if rel.endswith(".parquet"):
            folder, _, _ = rel.rpartition("/")
            by_folder.setdefault(folder, []).append(rel)
    return by_folder


def publish(spark: "SparkSession", root: str, batch_id: BatchKey, folders: dict[str, list[str]]) -> int:
    """Move the staged files of ``folders`` (from :func:`stage`) into the table; drop the staging folder.

    The files are named after the batch id, so a replayed batch first removes its own.
    Returns the number of files moved.
    """
    store = FileStore(spark, root)
    staging = staging_folder(batch_id)
    mine = _prefix(batch_id)
    clean_attempt(spark, root, batch_id)
    store.write_text("", "_commits", f"{batch_id}.started")
    moved = 0
    for folder, rels in folders.items():
        for k, rel in enumerate(sorted(rels)):
            name = f"{mine}{k:04d}.parquet"
            store.move((staging, rel), tuple(p for p in (folder, name) if p))
            moved += 1
    store.delete(staging)
    return moved


#: a batch of a table: its key (:func:`batch_key`), or a bare id (tables before writers had keys)
BatchKey = int | str


def batch_key(writer: Any, batch_id: int) -> BatchKey:
    """The key of micro-batch ``batch_id`` of the query ``writer`` (its id, as its progress
    reports (a UUID) and checkpoint give it; the first 8 characters are kept); the bare id without one."""
    return f"{str(writer)[:8]}-{batch_id:010d}" if writer else int(batch_id)


def writer_id(spark: "SparkSession", checkpoint: str) -> str:
    """The id of the streaming query whose checkpoint is ``checkpoint`` (written when it first
    started, the same across restarts, new for a new checkpoint)."""
    text = FileStore(spark, checkpoint).read_text("metadata")
    return str(json.loads(text.splitlines()[0])["id"])


def _prefix(batch: BatchKey) -> str:
    return f"part-b{batch:010d}-" if isinstance(batch, int) else f"part-{batch}-"


def batch_files(spark: "SparkSession", root: str, batch_id: BatchKey) -> list[str]:
    """The paths of the files batch ``batch_id`` published into the table at ``root``."""
    store = FileStore(spark, root)
    return [f"{store.root}/{rel}" for rel in store.files() if rel.rpartition("/")[2].startswith(_prefix(batch_id))]


def clean_attempt(spark: "SparkSession", root: str, batch_id: BatchKey) -> None:
    """Remove the files an interrupted earlier attempt of ``batch_id`` moved into the table."""
    store = FileStore(spark, root)
    if store.exists("_commits", f"{batch_id}.started"):
        for rel in store.files():
            if rel.rpartition("/")[2].startswith(_prefix(batch_id)):
                store.delete(rel)


def committed(spark: "SparkSession", root: str, batch_id: BatchKey) -> dict[str, Any] | None:
    """The commit record of ``batch_id``, if that batch was fully written."""
    store = FileStore(spark, root)
    if not store.exists("_commits", f"{batch_id}.json"):
        return None
    try:
        record = json.loads(store.read_text("_commits", f"{batch_id}.json"))
    except Exception as exc:  # noqa: BLE001 - cut short (bad JSON, checksum): not committed
        logger.warning("%s: the commit record of batch %s is unreadable (%s): the batch is written again",
                       root, batch_id, exc)
        return None
    return record if isinstance(record, dict) else None


def begin(spark: "SparkSession", root: str, batch_id: BatchKey, *others: str) -> dict[str, Any] | None:
    """Start writing batch ``batch_id``: its commit record if it is already committed (a
    replay to skip), else None after removing what an interrupted attempt left in ``root``
    and the ``others`` tables it also writes."""
    done = committed(spark, root, batch_id)
    if done is not None:
        logger.info("%s: batch %s already committed, skipped", root, batch_id)
        return done
    for table in (root, *others):
        clean_attempt(spark, table, batch_id)
    return None


def commit(spark: "SparkSession", root: str, batch_id: BatchKey, record: dict[str, Any]) -> None:
    """Mark ``batch_id`` as fully written, with what it held."""
    store = FileStore(spark, root)
    store.replace_text(json.dumps({"batch": batch_id, "time": time.time(), **record}), "_commits", f"{batch_id}.json")
    store.delete("_commits", f"{batch_id}.started")


def compact(spark: "SparkSession", root: str, partition: str, files: int = 1,
            options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Rewrite one partition folder (``night=YYYYMMDD``) of the table into ``files`` files.

    Notes
    -----
    The new files are written to a hidden folder, then the partition folder is swapped
    with two renames, so a reader sees either the old files or the new ones; the old
    folder is deleted only after the swap.

    It refuses (:class:`fink.io.table_use.TableInUse`) while a stage query reads or writes the
    table, while a reader's checkpoint has not read every file of the night, and while a
    writer's checkpoint has a batch to replay; stages that start while it runs are refused
    too. The readers that had read the old files skip the new ones when they start again
    (:mod:`fink.io.table_use`): a compaction is invisible downstream.
    """
    from fink.io import table_use

    store = FileStore(spark, root)
    before = [f for f in store.files(partition) if f.endswith(".parquet")]
    if not before:
        raise FileNotFoundError(f"{root}/{partition}: no Parquet file to compact")
    lock = table_use.compaction(spark, root)
    if lock is not None:
        raise table_use.TableInUse(f"{root}: a compaction of {lock.get('partition')} runs already "
                                   f"(process {lock.get('pid')} on {lock.get('host')})")
    store.replace_text(json.dumps({"partition": partition, **table_use.process_identity(), "time": time.time()}),
                       table_use.LOCK)
    try:
        return _compact(spark, store, partition, before, files, options)
    finally:
        store.delete(table_use.LOCK)


def _compact(spark: "SparkSession", store: FileStore, partition: str, before: list[str], files: int,
             options: Mapping[str, str] | None) -> dict[str, Any]:
    from fink.io import table_use

    readers = table_use.check_compactable(spark, store.root, partition, [f.rpartition("/")[2] for f in before])
    t0 = time.perf_counter()
    df = spark.read.parquet(*(f"{store.root}/{partition}/{f}" for f in before))
    rows = df.count()
    new, old = f".compacting-{partition}", f".compacted-{partition}"
    store.delete(new)
    df.coalesce(files).write.mode("overwrite").options(**(options or {})).parquet(f"{store.root}/{new}")
    written = [f for f in store.files(new) if f.endswith(".parquet")]
    check = spark.read.parquet(f"{store.root}/{new}").count()
    if check != rows:
        store.delete(new)
        raise RuntimeError(f"compaction of {partition} wrote {check} rows instead of {rows}; nothing changed")
    # who must skip the new files is known before they appear
    store.replace_text(json.dumps({"partition": partition, "time": time.time(), "read_by": readers,
                                   "files": [f.rpartition("/")[2] for f in written],
                                   "replaced": [f.rpartition("/")[2] for f in before]}),
                       table_use.COMPACTIONS, f"{partition}.json")
    store.delete(old)
    store.move((partition,), (old,))
    store.move((new,), (partition,))
    store.delete(old)
    report = {"partition": partition, "rows": rows, "files_before": len(before), "files_after": len(written),
              "readers_told": len(readers), "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("compacted %s", report)
    return report
