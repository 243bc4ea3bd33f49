"""stream2raw: the survey's Kafka stream into a decoded, exactly-once raw archive.

What the survey sends is read from its description (:mod:`fink.survey.description`): how
messages are framed (:data:`fink.stages.decoding.PARSERS`), which schemas they may carry,
where the alert's identity and time are. ZTF and Rubin run through the same code.

Notes
-----
Decoding happens in the JVM (:mod:`fink.stages.decoding`: no Python runs per row). A
message that is not an alert gets a ``reason`` (:data:`fink.survey.avro.REASONS`) instead,
and :func:`fink.stages.raw_archive.write_batch` sends it to the quarantine table with its
raw bytes. Each micro-batch is written under names derived from its batch id and committed
with a marker, so a batch replayed after a failure rewrites the same files: the archive is
exactly once (:mod:`fink.stages.raw_archive`); an alert already archived is a duplicate
(:mod:`fink.stages.duplicates`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated
from fink.log import logger
from fink.runtime import metrics
from fink.runtime.streaming import observed
from fink.stages.decoding import PARSERS, decode
from fink.stages.duplicates import ArchivedCandids, find_duplicates
from fink.stages.raw_archive import (
    KAFKA_COLUMNS,
    QUERY_NAME,
    alert_fields,
    batch_files,
    begin_batch,
    commit_batch,
    planned_offsets,
    raw_columns,
    restage_without,
    stage_batch,
    staged_keys,
)
from fink.survey import avro
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
    from pyspark.sql.types import StructType

    from fink.stages.step import Step
    from fink.survey.wire import SchemaResolver

__all__ = ["KAFKA_COLUMNS", "QUERY_NAME", "Stream2RawConfig", "build", "decoded", "raw_schema", "read_raw",
           "reconcile", "source", "step", "transform", "unread", "write_batch"]


@dataclasses.dataclass(frozen=True)
class Stream2RawConfig(surveys.OfSurvey, Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    topic
        Topic(s) to subscribe to, comma-separated; or use ``topic_pattern``.
    topic_pattern
        A Java regular expression of topics (ZTF: one topic per night, ``ztf_.*_programid1``).
    starting_offsets
        ``earliest``, ``latest`` or Spark's JSON of per-partition offsets (first start only:
        a restart resumes from the checkpoint).
    max_offsets_per_trigger
        Upper bound of messages per micro-batch (0: no bound); with ``trigger`` it sets file sizes.
    files_per_batch
        Parquet files written per night and micro-batch.
    raw_path, quarantine_path, checkpoint
        Where to write; empty means under ``data_dir``: ``raw``, ``quarantine``, ``checkpoints/stream2raw``.
    max_alert_bytes
        Messages above this size are quarantined as ``oversized``.
    min_partitions
        Spark tasks per micro-batch at least (0: Spark's default parallelism). A ZTF night is
        often one Kafka partition; splitting its offsets lets every core decode.
    survey
        A shipped survey (``ztf``, ``rubin``) or the path of a description YAML file.
    schema_registry_url, schema_dir
        Where schema ids come from besides the packaged schemas (wire-format surveys): a
        Confluent-compatible registry, a folder of ``.avsc`` files (:class:`fink.survey.wire.SchemaResolver`).
    """

    topic: str = ""
    topic_pattern: str = ""
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int = 20000
    files_per_batch: int = 2
    raw_path: str = ""
    quarantine_path: str = ""
    checkpoint: str = ""
    max_alert_bytes: int = avro.MAX_ALERT_BYTES
    min_partitions: int = 0
    survey: str = "ztf"
    schema_registry_url: str = ""
    schema_dir: str = ""

    def validate(self, source: str = "configuration") -> None:
        if bool(self.topic) == bool(self.topic_pattern):
            raise ConfigError(f"{source}: give exactly one of 'topic' and 'topic_pattern'")
        if self.max_offsets_per_trigger < 0 or self.files_per_batch < 1 or self.max_alert_bytes < 1:
            raise ConfigError(f"{source}: max_offsets_per_trigger >= 0, files_per_batch >= 1, max_alert_bytes >= 1")
        self.description()  # an unknown survey fails here, by name


    def paths(self, fink_cfg: FinkConfig) -> dict[str, str]:
        """Where the stage writes; a survey with a ``folder`` keeps its archives under it."""
        survey = self.description()
        return {"raw": self.raw_path or survey.data_uri(fink_cfg, "raw"),
                "quarantine": self.quarantine_path or survey.data_uri(fink_cfg, "quarantine"),
                "checkpoint": self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "stream2raw")}

    def schemas(self) -> dict[str, str]:
        """Version label -> writer schema (JSON text): every version this stage decodes."""
        return schema_texts(self.description(), self.resolver())

    def resolver(self) -> "SchemaResolver | None":
        """The schema-id resolver of a wire-format survey (None for container files)."""
        from fink.survey.wire import SchemaResolver

        survey = self.description()
        if survey.wire != "confluent":
            return None
        return SchemaResolver(survey, registry_url=self.schema_registry_url, schema_dir=self.schema_dir)


def schema_texts(survey: surveys.Survey, resolver: "SchemaResolver | None" = None) -> dict[str, str]:
    """Version label -> writer schema text, oldest first, for every version of ``survey``
    the stage can decode: the shipped files, or every id ``resolver`` knows (``major.minor``)."""
    if resolver is None:
        return {v: json.dumps(avro.load_schema(v, survey.name)) for v in avro.schema_versions(survey.name)}
    return {"{}.{}".format(*divmod(i, 100)): resolver.schema_json(i) for i in resolver.known_ids()}


# -- source ------------------------------------------------------------------------------

def source(spark: "SparkSession", stage_cfg: Stream2RawConfig, bootstrap: str, batches: bool = True) -> "DataFrame":
    """Spark's Kafka source for the configured topic(s) or pattern; with ``batches`` (micro-batches),
    bounded by ``max_offsets_per_trigger`` and split into ``min_partitions`` tasks."""
    from fink.io import kafka

    reader = spark.readStream.format("kafka").options(**kafka.spark_options(bootstrap))
    reader = reader.option("subscribePattern", stage_cfg.topic_pattern) if stage_cfg.topic_pattern else \
        reader.option("subscribe", stage_cfg.topic)
    reader = reader.option("startingOffsets", stage_cfg.starting_offsets).option("failOnDataLoss", "false")
    if not batches:  # Real-time Mode: one long-running task per partition, nothing to bound
        return reader.load()
    if stage_cfg.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", stage_cfg.max_offsets_per_trigger)
    reader = reader.option("minPartitions", stage_cfg.min_partitions or spark.sparkContext.defaultParallelism)
    return reader.load()


# -- parsing the container in SQL --------------------------------------------------------


# -- decoding every version into one layout ----------------------------------------------


#: raw schemas already worked out, per session and survey (each costs the JVM an analysis of
#: every schema version's decode: a second or more, asked by every stage as it is built)
_RAW_SCHEMAS: dict[tuple, "StructType"] = {}


def raw_schema(spark: "SparkSession", stage_cfg: Stream2RawConfig | None = None) -> "StructType":
    """The raw archive's schema for ``stage_cfg``'s survey (ZTF by default), without reading anything."""
    stage_cfg = stage_cfg or Stream2RawConfig(topic="-")
    key = (spark.sparkContext.applicationId, stage_cfg.survey, stage_cfg.schema_registry_url, stage_cfg.schema_dir)
    if key not in _RAW_SCHEMAS:
        kafka = spark.createDataFrame([], "key binary, value binary, topic string, partition int, offset long, "
                                          "timestamp timestamp, timestampType int")
        _RAW_SCHEMAS[key] = raw_columns(transform(kafka, stage_cfg)).schema
    return _RAW_SCHEMAS[key]


def transform(df: "DataFrame", stage_cfg: Stream2RawConfig, schemas: dict[str, str] | None = None) -> "DataFrame":
    """Kafka rows to decoded rows with ``reason``; observed counts land in the query's metrics.

    ``schemas`` (version -> writer schema text) defaults to :meth:`Stream2RawConfig.schemas`.
    """
    out = decoded(df, stage_cfg, schemas)
    # latency: Kafka timestamp -> this batch's ingest time
    return metrics.observe_latency(out.observe(QUERY_NAME, *counts()), until="brokerIngestTimestamp",
                                   since="timestamp")


def decoded(df: "DataFrame", stage_cfg: Stream2RawConfig, schemas: dict[str, str] | None = None) -> "DataFrame":
    """Kafka rows to decoded rows with ``reason`` (:func:`transform` without its observed metrics)."""
    survey = stage_cfg.description()
    schemas = stage_cfg.schemas() if schemas is None else schemas
    return decode(PARSERS[survey.wire](df, list(schemas), stage_cfg.max_alert_bytes), schemas, survey)


def counts() -> list["Column"]:
    """The stage's counts of a batch of decoded rows: messages, decoded, quarantined (per reason)."""
    from pyspark.sql import functions as F

    is_bad = F.col("reason").isNotNull()
    out = [F.count(F.lit(1)).alias("messages"),
           F.sum(F.when(~is_bad, 1).otherwise(0)).alias("decoded"),
           F.sum(F.when(is_bad, 1).otherwise(0)).alias("quarantined")]
    return out + [F.sum(F.when(F.col("reason") == r, 1).otherwise(0)).alias(f"quarantined_{r}")
                  for r in avro.REASONS if r != "duplicate"]


# -- writing -----------------------------------------------------------------------------


def build(spark: "SparkSession", stage_cfg: Stream2RawConfig, fink_cfg: FinkConfig) -> "DataStreamWriter":
    """The stage's unstarted writer: Kafka -> decode -> raw archive + quarantine.

    Start it with :func:`fink.runtime.streaming.start`; pick a trigger first, e.g.
    ``.trigger(availableNow=True)`` to catch up and stop, or ``processingTime="10 seconds"``.
    """
    from fink.io import filestore, table_use

    paths = stage_cfg.paths(fink_cfg)
    table_use.attach(spark, paths["raw"], "write", paths["checkpoint"], QUERY_NAME)
    rows = transform(source(spark, stage_cfg, fink_cfg.kafka_bootstrap), stage_cfg)

    index = ArchivedCandids(spark, paths["raw"], stage_cfg.description().alert_id)
    writer: list[str] = []  # the query's id, once it has started

    def sink(batch, batch_id):
        writer[:] = writer or [filestore.writer_id(spark, paths["checkpoint"])]
        write_batch(batch, batch_id, stage_cfg, paths, fink_cfg.kafka_bootstrap, index, writer[0])

    return (rows.writeStream.foreachBatch(sink).option("checkpointLocation", paths["checkpoint"])
            .queryName(QUERY_NAME))


def _cached_keys(df: "DataFrame", key: str):
    """:func:`staged_keys` of a batch of decoded rows (the cached batch of the one-pass step)."""
    from pyspark.sql import functions as F

    keys = df.select("topic", "partition", "offset", F.coalesce(F.col(f"alert.{key}"), F.lit(-1)).alias("candid"),
                     "timestamp", "brokerIngestTimestamp", "night", "reason").toPandas()
    return keys.sort_values(["topic", "partition", "offset"]).reset_index(drop=True)


def step(spark: "SparkSession", stage_cfg: Stream2RawConfig, fink_cfg: FinkConfig, **context: Any) -> "Step":
    """The stage as a step of the one-pass pipeline: decoded Kafka rows in (its source decodes),
    the alerts it archives out.

    Each message is decoded once, into the batch's cache: the alerts handed on (not set
    aside, not duplicates) are read from it, and once every step has handed on, the raw
    archive and the quarantine are written from it (:attr:`~fink.stages.step.Output.finish`),
    so that the archives do not delay the alerts on their way to the users. A batch already
    committed (a replay) hands on the files it archived.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from fink.io import filestore
    from fink.stages.step import Output, Step, Tally, report

    paths = stage_cfg.paths(fink_cfg)
    key = stage_cfg.description().alert_id
    index = ArchivedCandids(spark, paths["raw"], key)
    layout = raw_schema(spark, stage_cfg)
    fields = alert_fields(layout)  # the alert's own fields
    writer: list[str] = []  # the pipeline query's id, once it has started

    def run(batch: "DataFrame", batch_id: int, rows: int | None) -> Output:
        started = time.time()
        clock = metrics.Clock()
        writer[:] = writer or [filestore.writer_id(spark, context["checkpoint"])]
        name = filestore.batch_key(writer[0], batch_id)
        done = begin_batch(spark, name, paths)
        if done is not None:  # committed before a crash: what it archived, from the archive
            archived = int(done.get("archived", 0))
            out = batch_files(spark, paths["raw"], name, layout) if archived else None
            return Output(out, archived, report(QUERY_NAME, batch_id, 0, {}, None, started, replayed=True,
                                                id=writer[0]))
        cached = batch.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        # counted by Spark over the batch's rows as the keys are collected, apart from the record
        # (which counts the keys): reconcile compares the two
        tally = Tally(QUERY_NAME, *counts())
        try:
            keys = _cached_keys(tally.on(cached), key)  # the decode runs here, once, into the cache
            clock.lap("decode")
            dups = find_duplicates(keys[keys["reason"].isna()], index)
            keys.loc[dups.index, "reason"] = "duplicate"
            kept = cached
            if len(dups):
                drop = spark.createDataFrame(dups[["topic", "partition", "offset"]].astype(
                    {"partition": "int32", "offset": "int64"}), "topic string, partition int, offset long")
                kept = cached.join(F.broadcast(drop), ["topic", "partition", "offset"], "left_anti")
            clock.lap("duplicates")
        except BaseException:
            cached.unpersist()  # not handed to the pipeline yet: released here
            raise
        archived = int(keys["reason"].isna().sum())

        def finish() -> dict[str, Any]:
            folders = stage_batch(kept, name, stage_cfg.files_per_batch, paths, fields)
            clock.lap("write")
            record = commit_batch(spark, batch_id, name, paths, folders, keys, fink_cfg.kafka_bootstrap, index, clock,
                             context["checkpoint"])
            observed = {k: int(v or 0) for k, v in tally.values().items()}
            if record.get("lost"):  # offsets the batch planned that Kafka no longer had
                observed["lost"] = record["lost"]
            waited = (keys["brokerIngestTimestamp"] - keys["timestamp"]).dt.total_seconds()
            latency = [float(waited.quantile(q)) for q in metrics.QUANTILES] if len(keys) else None
            return report(QUERY_NAME, batch_id, len(keys), observed, latency, started, laps=clock.laps, id=writer[0])

        alerts = raw_columns(kept.where(F.col("reason").isNull()), fields) if archived else None
        return Output(alerts, archived, None, [cached], finish)

    return Step(QUERY_NAME, reads="kafka", writes="raw", run=run, tables=[paths["raw"]],
                source=lambda: decoded(source(spark, stage_cfg, fink_cfg.kafka_bootstrap),
                                       stage_cfg).drop("key", "value"))


def unread(spark: "SparkSession", stage_cfg: Stream2RawConfig, bootstrap: str, checkpoint: str) -> int | None:
    """How many messages the source holds beyond what the query of ``checkpoint`` has
    planned to read (its latest offsets), or None when that cannot be told (a topic pattern
    never read, a source starting at its latest offsets)."""
    from fink.io import kafka
    from fink.io.filestore import FileStore
    from fink.io.table_use import batches

    latest = max(batches(FileStore(spark, checkpoint), "offsets"), default=None)
    planned = planned_offsets(spark, checkpoint, latest) if latest is not None else {}
    asked = {stage_cfg.topic} if stage_cfg.topic and not stage_cfg.topic_pattern else set()
    topics = {t for t, _ in planned} or asked
    if not topics or (not planned and stage_cfg.starting_offsets != "earliest"):
        return None
    ends = {(t, p): e for t in topics for p, e in kafka.end_offsets(bootstrap, t).items()}
    starts = kafka.start_offsets(bootstrap, [tp for tp in ends if tp not in planned])
    return sum(max(0, e - (planned[tp][1] if tp in planned else starts.get(tp, 0))) for tp, e in ends.items())


def reconcile(spark: "SparkSession", progress: list[dict], raw_path: str, unread: int | None = None) -> dict[str, Any]:
    """Account for every message of a run, from two independent counts.

    ``messages`` and ``decoded`` come from the query's observed metrics (counted as Spark
    read the batch); ``archived``, ``quarantined`` and the reasons (duplicates included)
    from the commit records the batches wrote, with ``lost``: messages the batches planned to
    read but Kafka no longer held (:func:`fink.stages.raw_archive.lost_offsets`; never read, so not in ``messages``).
    ``balanced`` says whether messages = archived + quarantined; with ``unread`` (what the
    source still held after the run, :func:`unread`), a run that read nothing while its
    source held messages is not balanced, and ``problem`` says so.
    """
    from fink.io import filestore

    totals: dict[str, Any] = {"batches": 0, "messages": 0, "decoded": 0, "archived": 0, "quarantined": 0,
                              "reasons": {}, "lost": 0, "lost_ranges": []}
    for p in progress:
        values = observed(p, QUERY_NAME)
        if values is None:
            continue
        totals["messages"] += int(values.get("messages") or 0)
        totals["decoded"] += int(values.get("decoded") or 0)
        name = filestore.batch_key(p.get("id") or "", int(p["batchId"]))
        record = filestore.committed(spark, raw_path, name)  # a batch that read nothing may have lost some
        if record is not None:
            totals["batches"] += 1 if record["messages"] else 0
            totals["archived"] += record["archived"]
            totals["quarantined"] += record["quarantined"]
            totals["lost"] += record.get("lost", 0)
            totals["lost_ranges"] += record.get("lost_ranges", [])
            for reason, n in record["reasons"].items():
                totals["reasons"][reason] = totals["reasons"].get(reason, 0) + n
    totals["balanced"] = totals["messages"] == totals["archived"] + totals["quarantined"]
    if unread is not None:
        totals["unread"] = unread
        if unread and not totals["messages"]:
            totals["balanced"] = False
            totals["problem"] = f"read nothing while its source holds {unread} unread messages"
            logger.warning("stream2raw: %s", totals["problem"])
    return totals


def read_raw(spark: "SparkSession", path: str) -> "DataFrame":
    """The raw archive as a table (one row per alert, partitioned by ``night``)."""
    return spark.read.parquet(path)


def write_batch(batch: "DataFrame", batch_id: int, stage_cfg: Stream2RawConfig, paths: dict[str, str],
                bootstrap: str | None = None, index: "ArchivedCandids | None" = None,
                writer: str = "") -> dict[str, Any]:
    """Archive one micro-batch: alerts to the raw table, the rest to quarantine; exactly once.

    Returns what the batch held (also written in the raw table's commit marker). A batch
    already committed (replayed after a restart) is skipped. ``writer`` is the query's id
    (:func:`fink.io.filestore.batch_key`: its files and commit marker are named after both).

    Notes
    -----
    Every message is decoded once, in a single Parquet write to the batch's staging folder:
    alerts under ``night=YYYYMMDD``, messages set aside under ``night=q_<reason>`` (their
    alert columns null). Duplicates are then found on the staged ``candid`` column alone.
    The quarantine wants the raw bytes of the few messages set aside: they are read again
    from Kafka by offset (``bootstrap``), not carried through the decode. Only then do the
    alert files move into the table.
    """
    from fink.io import filestore

    spark = batch.sparkSession
    name = filestore.batch_key(writer, batch_id)
    done = begin_batch(spark, name, paths)
    if done is not None:
        return done
    clock = metrics.Clock()
    folders = stage_batch(batch, name, stage_cfg.files_per_batch, paths)
    clock.lap("decode_write")
    key = stage_cfg.description().alert_id
    keys = staged_keys(spark, paths["raw"], name, folders, key)
    alerts = keys[keys["reason"].isna()]
    index = index or ArchivedCandids(spark, paths["raw"], key)
    dups = find_duplicates(alerts, index)
    if len(dups):
        folders = restage_without(spark, paths["raw"], name, folders, dups, stage_cfg.files_per_batch)
        keys.loc[dups.index, "reason"] = "duplicate"
    clock.lap("duplicates")
    return commit_batch(spark, batch_id, name, paths, folders, keys, bootstrap, index, clock, paths["checkpoint"])
