"""stream2raw: the survey's Kafka stream into a decoded, exactly-once raw archive.

What the survey sends is read from its description (:mod:`fink.survey.description`): how messages
are framed (:data:`PARSERS`), which schemas they may carry, where the alert's identity
and time are. ZTF and Rubin run through the same code.

Notes
-----
Decoding happens in the JVM. A ZTF message is an Avro container file holding one
uncompressed record: the header (magic, metadata with the writer schema, a 16-byte sync
marker), one block (record count, byte size, the record) and the sync marker again.
Spark's ``from_avro`` reads schemaless records, so :func:`parse` locates the record with
SQL functions alone (the sync marker is the message's last 16 bytes and ends the header
too), reads the schema version from the header, and :func:`decode` applies ``from_avro``
with the project's schema of that version. A Rubin message (Confluent wire format) is a
zero byte, a 4-byte schema id and the schemaless record: :func:`parse_confluent` reads the
id with SQL functions and :func:`decode` applies the schema of that id
(:class:`fink.survey.wire.SchemaResolver`). Every version is then laid out in one layout, the
union of all versions the stage knows, newest first (:func:`union_type`), fields a
version lacks being null. No Python runs per row.

A message that is not an alert gets a ``reason`` (:data:`fink.survey.avro.REASONS`) instead, and
:func:`write_batch` sends it to the quarantine table with its raw bytes. Each micro-batch
is written under names derived from its batch id and committed with a marker, so a batch
replayed after a failure rewrites the same files: the archive is exactly once.
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
from fink.survey import avro
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
    from pyspark.sql.types import DataType, StructType

    from fink.io.filestore import BatchKey
    from fink.stages.step import Step
    from fink.survey.wire import SchemaResolver

QUERY_NAME = "stream2raw"
KAFKA_COLUMNS = ["topic", "partition", "offset", "timestamp"]


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


    def paths(self, fink: FinkConfig) -> dict[str, str]:
        """Where the stage writes; a survey with a ``folder`` keeps its archives under it."""
        survey = self.description()
        return {"raw": self.raw_path or survey.data_uri(fink, "raw"),
                "quarantine": self.quarantine_path or survey.data_uri(fink, "quarantine"),
                "checkpoint": self.checkpoint or survey.data_uri(fink, "checkpoints", "stream2raw")}

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

def source(spark: "SparkSession", cfg: Stream2RawConfig, bootstrap: str, batches: bool = True) -> "DataFrame":
    """Spark's Kafka source for the configured topic(s) or pattern; with ``batches`` (micro-batches),
    bounded by ``max_offsets_per_trigger`` and split into ``min_partitions`` tasks."""
    from fink.io import kafka

    reader = spark.readStream.format("kafka").options(**kafka.spark_options(bootstrap))
    reader = reader.option("subscribePattern", cfg.topic_pattern) if cfg.topic_pattern else \
        reader.option("subscribe", cfg.topic)
    reader = reader.option("startingOffsets", cfg.starting_offsets).option("failOnDataLoss", "false")
    if not batches:  # Real-time Mode: one long-running task per partition, nothing to bound
        return reader.load()
    if cfg.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", cfg.max_offsets_per_trigger)
    reader = reader.option("minPartitions", cfg.min_partitions or spark.sparkContext.defaultParallelism)
    return reader.load()


# -- parsing the container in SQL --------------------------------------------------------

def _byte(value: "Column", pos: "Column") -> "Column":
    """The unsigned byte at 1-based ``pos`` of a binary column, as an int."""
    from pyspark.sql import functions as F

    return F.conv(F.hex(F.substring(value, pos, 1)), 16, 10).cast("int")


def parse_container(df: "DataFrame", versions: list[str], max_alert_bytes: int = avro.MAX_ALERT_BYTES) -> "DataFrame":
    """Messages that are Avro container files: add ``version`` (the writer schema's ``version``
    property, one of ``versions``), ``payload`` (the schemaless record) and ``reason`` (null when fine)."""
    from pyspark.sql import functions as F

    v = F.col("value")
    n = F.length(v)
    sync = F.substring(v, n - 15, 16)
    # the header ends with the sync marker: the bytes before its first occurrence are the
    # header. substring_index matches bytes (a binary cast to string is not decoded), and
    # costs a third of a hex-and-instr search
    before = F.call_function("substring_index", v.cast("string"), sync.cast("string"), F.lit(1))
    header_len = F.octet_length(before)
    df = df.withColumn("_n", n).withColumn("_hl", header_len)
    block = F.col("_hl") + 17  # 1-based position of the block's record count
    df = df.withColumn("_block", block)
    # the block's byte size is a zig-zag varint: count its bytes (a byte < 128 ends it)
    size_at = F.col("_block") + 1
    k = (F.when(_byte(v, size_at) < 128, 1).when(_byte(v, size_at + 1) < 128, 2)
         .when(_byte(v, size_at + 2) < 128, 3).when(_byte(v, size_at + 3) < 128, 4).otherwise(5))
    start = size_at + k
    # ZTF tags the alert record and each nested record with the same "version": the first one
    # in the header's first 4 KiB is enough
    header = F.decode(F.substring(v, 1, F.least(F.col("_hl"), F.lit(4096))), "ISO-8859-1")
    version = F.regexp_extract(header, r'"version"\s*:\s*"([0-9.]+)"', 1)
    # found before the last 16 bytes (else the search ran into the trailing marker itself)
    well_formed = (F.col("_hl") > 4) & (F.col("_block") + 16 < F.col("_n"))
    reason = (F.when(v.isNull() | (F.col("_n") == 0), "empty")
              .when(F.substring(v, 1, 4) != F.lit(avro.AVRO_MAGIC), "not_avro")
              .when(F.col("_n") > max_alert_bytes, "oversized")
              .when(~well_formed, "truncated")
              .when(_byte(v, F.col("_block")) != 2, "truncated"))  # a record count of 1 (zig-zag 2)
    df = df.withColumn("_version", version)
    reason = reason.when(~F.col("_version").isin(*versions), "unknown_schema")
    return (df.withColumn("reason", reason)
            .withColumn("version", F.when(F.col("reason").isNull(), F.col("_version")))
            .withColumn("payload", F.when(F.col("reason").isNull(),
                                          F.substring(v, start, F.col("_n") - 16 - start + 1)))
            .drop("_n", "_hl", "_block", "_version"))


def parse_confluent(df: "DataFrame", versions: list[str], max_alert_bytes: int = avro.MAX_ALERT_BYTES) -> "DataFrame":
    """Messages in the Confluent wire format: add ``version`` (``major.minor`` of the schema id,
    one of ``versions``), ``payload`` (the bytes after the 5-byte header) and ``reason``."""
    from pyspark.sql import functions as F

    v = F.col("value")
    n = F.length(v)
    sid = F.conv(F.hex(F.substring(v, 2, 4)), 16, 10).cast("long")
    version = F.concat_ws(".", (sid / 100).cast("long").cast("string"), (sid % 100).cast("string"))
    df = df.withColumn("_n", n).withColumn("_version", version)
    reason = (F.when(v.isNull() | (F.col("_n") == 0), "empty")
              .when(F.substring(v, 1, 1) != F.lit(b"\x00"), "not_avro")
              .when(F.col("_n") > max_alert_bytes, "oversized")
              .when(F.col("_n") <= 5, "truncated")
              .when(~F.col("_version").isin(*versions), "unknown_schema"))
    return (df.withColumn("reason", reason)
            .withColumn("version", F.when(F.col("reason").isNull(), F.col("_version")))
            .withColumn("payload", F.when(F.col("reason").isNull(), F.substring(v, 6, F.col("_n") - 5)))
            .drop("_n", "_version"))


#: the survey description's ``wire`` -> how its messages are split into version and record
PARSERS = {"container": parse_container, "confluent": parse_confluent}
#: the survey description's ``wire`` -> the reason for a record its announced schema cannot
#: read: a wire-format body is cut short or corrupt (as :mod:`fink.survey.wire` says); a container's
#: blocks were checked whole before, so its record is in a foreign layout
UNDECODABLE = {"container": "unknown_schema", "confluent": "truncated"}


# -- decoding every version into one layout ----------------------------------------------

def alert_type(spark: "SparkSession", schema: str) -> "DataType":
    """The Spark type ``from_avro`` gives for a writer schema (JSON text)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    return spark.range(0).select(from_avro(F.lit(b"").cast("binary"), schema).alias("a")).schema["a"].dataType


#: types a field may widen to when two versions disagree (int -> long, float -> double)
_WIDER = {frozenset({"int", "bigint"}): "bigint", frozenset({"float", "double"}): "double",
          frozenset({"int", "double"}): "double", frozenset({"bigint", "double"}): "double",
          frozenset({"int", "float"}): "double"}


def union_type(types: list["DataType"], path: str = "alert") -> "DataType":
    """One type that holds every one of ``types`` (newest first): a struct has the newest
    version's fields in its order, then the fields only older versions have; a field two
    versions type differently takes the wider numeric type.

    Raises
    ------
    avro.SchemaError
        Two versions give a field types no single type holds (the field is named).
    """
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StructField, StructType

    first = types[0]
    if all(t == first for t in types):
        return first
    if all(isinstance(t, StructType) for t in types):
        names: list[str] = []
        for t in types:
            names += [f for f in t.fieldNames() if f not in names]
        # a field keeps its nullability when every version has it alike: the newest version is
        # then already in the layout when it has every field, and is written as it was decoded
        return StructType([StructField(
            name, union_type([t[name].dataType for t in types if name in t.fieldNames()], f"{path}.{name}"),
            any(name not in t.fieldNames() or t[name].nullable for t in types)) for name in names])
    if all(isinstance(t, ArrayType) for t in types):
        return ArrayType(union_type([t.elementType for t in types], f"{path}[]"), any(t.containsNull for t in types))
    kinds = frozenset(t.simpleString() for t in types)
    if kinds in _WIDER:
        return {"bigint": LongType(), "double": DoubleType()}[_WIDER[kinds]]
    raise avro.SchemaError(f"field {path}: the schema versions disagree on its type "
                           f"({', '.join(sorted(kinds))}) and no single type holds them all")


def _same(have: "DataType", want: "DataType") -> bool:
    """``have`` is ``want`` but for fields ``want`` allows to be null that ``have`` never leaves null."""
    from pyspark.sql.types import ArrayType, StructType

    if isinstance(have, StructType) and isinstance(want, StructType):
        return have.fieldNames() == want.fieldNames() and all(
            (w.nullable or not h.nullable) and _same(h.dataType, w.dataType)
            for h, w in zip(have.fields, want.fields, strict=True))
    if isinstance(have, ArrayType) and isinstance(want, ArrayType):
        return (want.containsNull or not have.containsNull) and _same(have.elementType, want.elementType)
    return have == want


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ddl(dt: "DataType") -> str:
    """``dt`` as SQL type text, field names quoted."""
    from pyspark.sql.types import ArrayType, MapType, StructType, TimestampType

    if isinstance(dt, StructType):  # (an array's or a map's null elements cannot be said in type text)
        return "struct<" + ",".join(f"{_quote(f.name)}:{_ddl(f.dataType)}{'' if f.nullable else ' NOT NULL'}"
                                    for f in dt.fields) + ">"
    if isinstance(dt, ArrayType):
        return f"array<{_ddl(dt.elementType)}>"
    if isinstance(dt, MapType):
        return f"map<{_ddl(dt.keyType)},{_ddl(dt.valueType)}>"
    if isinstance(dt, TimestampType):  # "timestamp" alone reads as spark.sql.timestampType says
        return "timestamp_ltz"
    return dt.simpleString()


def _align(expr: str, have: "DataType", want: "DataType", depth: int = 0) -> str:
    """SQL that lays ``expr`` (of type ``have``) out as ``want``: same fields in order, missing
    ones null. One expression text for the whole layout: built as Columns it took one py4j
    call per field and per nesting level (165,000 calls and 24 s for Rubin's versions)."""
    from pyspark.sql.types import ArrayType, StructType

    if _same(have, want):  # the newest version: already in the layout
        return expr
    if isinstance(want, StructType):
        present = {f.name: f.dataType for f in have.fields}
        fields = ", ".join(
            _literal(f.name) + ", "
            + (_align(f"{expr}.{_quote(f.name)}", present[f.name], f.dataType, depth) if f.name in present
               else f"CAST(NULL AS {_ddl(f.dataType)})")
            for f in want.fields)
        # a null record (Rubin's ssSource) stays null
        return f"CASE WHEN {expr} IS NOT NULL THEN named_struct({fields}) END"
    if isinstance(want, ArrayType) and isinstance(have, ArrayType):
        x = f"_e{depth}"
        return f"transform({expr}, {x} -> {_align(x, have.elementType, want.elementType, depth + 1)})"
    return expr if have == want else f"CAST({expr} AS {_ddl(want)})"


def _tmp(version: str) -> str:
    return "_v" + version.replace(".", "_")


def decode(df: "DataFrame", schemas: dict[str, str], survey: surveys.Survey | None = None) -> "DataFrame":
    """Decode ``payload`` by ``version`` (a key of ``schemas``, version -> writer schema text)
    into one ``alert`` column laid out as :func:`union_type` of every version.

    A record the schema of its announced version cannot read is given the reason
    :data:`UNDECODABLE` says for the survey's wire format; one that reads into inconsistent
    identifiers, or without its identity records, ``unknown_schema``; an alert without the
    survey's alert or object identity the reason ``missing_identifiers``; one whose time
    is null, NaN or outside :data:`fink.survey.avro.JD_RANGE` (no night to file it under) ``bad_time``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    survey = survey or surveys.load("ztf")
    spark = df.sparkSession
    types = {v: alert_type(spark, text) for v, text in schemas.items()}
    versions = list(schemas)
    want = union_type([types[v] for v in reversed(versions)])
    # one decode per row (only its version's column is computed), then the layout in a second
    # projection: referencing from_avro once per field in one projection would decode again each time
    for version, text in schemas.items():
        df = df.withColumn(_tmp(version), F.when(F.col("version") == version,
                                                  from_avro(F.col("payload"), text, {"mode": "PERMISSIVE"})))
    # F.struct of null fields is not null: guard each layout so coalesce picks the decoded one
    decoded = F.coalesce(*[F.when(F.col(_tmp(v)).isNotNull(), F.expr(_align(_quote(_tmp(v)), types[v], want)))
                           for v in versions])
    df = df.withColumn("alert", decoded).drop("payload", *[_tmp(v) for v in versions])
    a = F.col("alert")

    def at(path: str) -> "Column":
        col = a
        for part in path.split("."):
            col = col.getField(part)
        return col

    # the records holding the identity and the time must be there (a container's schema says
    # nothing of a record that is null)
    heads = {p.split(".")[0] for p in (survey.alert_id, survey.alert_id_check, survey.time["path"]) if "." in p}
    # from_avro's PERMISSIVE mode gives a record it cannot read as a struct of nulls
    all_null = F.lit(True)
    for name in want.fieldNames():
        all_null = all_null & a.getField(name).isNull()
    undecodable = a.isNull() | all_null
    present = a.isNotNull()
    for head in sorted(heads):
        present = present & a.getField(head).isNotNull()
    key = at(survey.alert_id)
    consistent = key == at(survey.alert_id_check) if survey.alert_id_check else F.lit(True)
    objects = [at(p) for p in survey.object_id]
    has_object = F.lit(False)
    for obj in objects:
        has_object = has_object | (F.coalesce(obj.cast("string"), F.lit("")).isin("", "0") == F.lit(False))
    identified = key.isNotNull() & has_object
    # (a survey without a bound compares nothing: its ids need not be numbers)
    in_range = key >= F.lit(survey.alert_id_min) if survey.alert_id_min > -(2 ** 63) else F.lit(True)
    jd = at(survey.time["path"]).cast("double") + F.lit(float(survey.time.get("to_jd", 0.0)))
    timed = jd.isNotNull() & ~F.isnan(jd) & jd.between(*avro.JD_RANGE)
    df = df.withColumn("reason", F.when(F.col("reason").isNotNull(), F.col("reason"))
                       .when(undecodable, UNDECODABLE[survey.wire])
                       .when(~present, "unknown_schema")
                       .when(~identified, "missing_identifiers")
                       .when(~F.coalesce(consistent, F.lit(False)), "unknown_schema")
                       .when(in_range == F.lit(False), "bad_identifier")
                       .when(~timed, "bad_time"))
    # only a plausible jd is turned into a night (Spark 4's ANSI casts fail the query on overflow)
    seconds = F.when(F.col("reason").isNull(), ((jd - 2440587.5) * 86400).cast("long"))
    night = F.date_format(F.timestamp_seconds(seconds), "yyyyMMdd")
    return df.withColumn("night", night).withColumn("brokerIngestTimestamp", F.current_timestamp())


def raw_columns(df: "DataFrame", fields: list[str] | None = None) -> "DataFrame":
    """The archive's rows: every alert field, the ingest metadata, the night.

    ``fields``: the alert's field names, when known (a batch's schema costs a round trip to
    the JVM and tens of milliseconds for an alert's hundreds of nested fields)."""
    from pyspark.sql import functions as F

    names = fields if fields is not None else df.schema["alert"].dataType.fieldNames()
    return df.select(*[F.col("alert").getField(f).alias(f) for f in names],
                     *[F.col(c).alias(f"kafka_{c}") for c in KAFKA_COLUMNS],
                     "brokerIngestTimestamp", F.col("version").alias("schema_version"), "night")


#: raw schemas already worked out, per session and survey (each costs the JVM an analysis of
#: every schema version's decode: a second or more, asked by every stage as it is built)
_RAW_SCHEMAS: dict[tuple, "StructType"] = {}


def raw_schema(spark: "SparkSession", cfg: Stream2RawConfig | None = None) -> "StructType":
    """The raw archive's schema for ``cfg``'s survey (ZTF by default), without reading anything."""
    cfg = cfg or Stream2RawConfig(topic="-")
    key = (spark.sparkContext.applicationId, cfg.survey, cfg.schema_registry_url, cfg.schema_dir)
    if key not in _RAW_SCHEMAS:
        kafka = spark.createDataFrame([], "key binary, value binary, topic string, partition int, offset long, "
                                          "timestamp timestamp, timestampType int")
        _RAW_SCHEMAS[key] = raw_columns(transform(kafka, cfg)).schema
    return _RAW_SCHEMAS[key]


def quarantine_columns(df: "DataFrame") -> "DataFrame":
    """The quarantine's rows: where the message was, why it was set aside, its bytes."""
    from pyspark.sql import functions as F

    return df.select(*KAFKA_COLUMNS, "reason", "brokerIngestTimestamp", F.col("value").alias("raw"),
                     F.date_format("brokerIngestTimestamp", "yyyyMMdd").alias("ingest_night"))


def transform(df: "DataFrame", cfg: Stream2RawConfig, schemas: dict[str, str] | None = None) -> "DataFrame":
    """Kafka rows to decoded rows with ``reason``; observed counts land in the query's metrics.

    ``schemas`` (version -> writer schema text) defaults to :meth:`Stream2RawConfig.schemas`.
    """
    out = decoded(df, cfg, schemas)
    # latency: Kafka timestamp -> this batch's ingest time
    return metrics.observe_latency(out.observe(QUERY_NAME, *counts()), until="brokerIngestTimestamp",
                                   since="timestamp")


def decoded(df: "DataFrame", cfg: Stream2RawConfig, schemas: dict[str, str] | None = None) -> "DataFrame":
    """Kafka rows to decoded rows with ``reason`` (:func:`transform` without its observed metrics)."""
    survey = cfg.description()
    schemas = cfg.schemas() if schemas is None else schemas
    return decode(PARSERS[survey.wire](df, list(schemas), cfg.max_alert_bytes), schemas, survey)


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

#: prefix of the staging partitions that hold the messages set aside (``night=q_<reason>``)
SET_ASIDE = "q_"


def write_batch(batch: "DataFrame", batch_id: int, cfg: Stream2RawConfig, paths: dict[str, str],
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
    done = _begin(spark, name, paths)
    if done is not None:
        return done
    clock = metrics.Clock()
    folders = _stage(batch, name, cfg, paths)
    clock.lap("decode_write")
    key = cfg.description().alert_id
    keys = _staged_keys(spark, paths["raw"], name, folders, key)
    alerts = keys[keys["reason"].isna()]
    index = index or ArchivedCandids(spark, paths["raw"], key)
    dups = find_duplicates(alerts, index)
    if len(dups):
        folders = _restage_without(spark, paths["raw"], name, folders, dups, cfg)
        keys.loc[dups.index, "reason"] = "duplicate"
    clock.lap("duplicates")
    return _commit(spark, batch_id, name, paths, folders, keys, bootstrap, index, clock, paths["checkpoint"])


def _begin(spark: "SparkSession", batch_id: "BatchKey", paths: dict[str, str]) -> dict[str, Any] | None:
    """The batch's commit record if it was committed (a replay), else None, the remains of an
    interrupted attempt removed from the raw table and the quarantine."""
    from fink.io import filestore

    return filestore.begin(spark, paths["raw"], batch_id, paths["quarantine"])


def _stage(batch: "DataFrame", batch_id: "BatchKey", cfg: Stream2RawConfig, paths: dict[str, str],
           fields: list[str] | None = None):
    """Write the batch's rows to its staging folder: alerts by night, messages set aside under
    ``night=q_<reason>``; return the staged files by folder (``fields``: see :func:`raw_columns`)."""
    from pyspark.sql import functions as F

    from fink.io import filestore

    reason = F.col("reason")
    rows = raw_columns(batch.withColumn("night", F.when(reason.isNull(), F.col("night"))
                                        .otherwise(F.concat(F.lit(SET_ASIDE), reason))), fields)
    return filestore.stage(rows, paths["raw"], batch_id, "night", cfg.files_per_batch, ARCHIVE_OPTIONS)


def planned_offsets(spark: "SparkSession", checkpoint: str, batch_id: int) -> dict[tuple[str, int], tuple[int, int]]:
    """``{(topic, partition): (start, end)}``: the offsets the query's batch ``batch_id`` was to
    read, from its checkpoint (``offsets/<n>``, the batch before's or the source's first ones);
    empty when they are not known."""
    import json

    from fink.io.filestore import FileStore

    store = FileStore(spark, checkpoint)

    def offsets(*parts: str) -> dict | None:
        if not store.exists(*parts):
            return None
        lines = [line for line in store.read_text(*parts).splitlines() if line.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None  # the (one) Kafka source's offsets come last

    end = offsets("offsets", str(batch_id))
    start = offsets("offsets", str(batch_id - 1)) if batch_id > 0 else offsets("sources", "0", "0")
    out = {}
    for topic, parts in (end or {}).items():
        for part, e in parts.items():
            b = ((start or {}).get(topic) or {}).get(part)
            if b is not None and 0 <= int(b) <= int(e):
                out[(topic, int(part))] = (int(b), int(e))
    return out


def lost_offsets(spark: "SparkSession", checkpoint: str, batch_id: int, keys, bootstrap: str) -> list[dict[str, Any]]:
    """The offset ranges batch ``batch_id`` planned to read but Kafka no longer held (retention,
    deleted records): Spark skips them (``failOnDataLoss`` false), they are counted here.

    A range is lost where the batch read fewer messages of a partition than it planned and
    the partition's log now starts after the planned start (transaction markers, which take
    offsets too, are not counted as lost: the log still holds them).
    """
    from fink.io import kafka

    planned = planned_offsets(spark, checkpoint, batch_id)
    read = keys.groupby(["topic", "partition"]).size().to_dict() if len(keys) else {}
    short = {tp: r for tp, r in planned.items() if r[1] - r[0] > read.get(tp, 0)}
    if not short:
        return []
    first = kafka.start_offsets(bootstrap, short)
    out = []
    for (topic, part), (b, e) in sorted(short.items()):
        gone = min(first.get((topic, part), b), e) - b
        n = min(gone, e - b - read.get((topic, part), 0))
        if n > 0:
            out.append({"topic": topic, "partition": part, "from": b, "to": b + gone, "messages": n})
    return out


def _commit(spark: "SparkSession", batch_id: int, name: "BatchKey", paths: dict[str, str],
            folders: dict[str, list[str]], keys, bootstrap: str | None, index: "ArchivedCandids",
            clock: "metrics.Clock", checkpoint: str = "") -> dict[str, Any]:
    """The end of batch ``batch_id`` (``name``: its key in the tables): the messages set aside
    (``keys`` with a reason) to the quarantine with their bytes, the staged alerts into the
    table, the commit record (with the offsets the batch planned but Kafka no longer had:
    :func:`lost_offsets`, from the query's ``checkpoint``)."""
    from fink.io import filestore

    set_aside = keys[keys["reason"].notna()]
    if len(set_aside):
        if bootstrap is None:
            raise ValueError("stream2raw.write_batch: messages to quarantine but no Kafka bootstrap to read them from")
        staged = filestore.stage(quarantine_columns(set_aside_messages(spark, bootstrap, set_aside)),
                                 paths["quarantine"], name, "ingest_night", 1, options=QUARANTINE_OPTIONS)
        staged = _stage_missing(spark, paths["quarantine"], name, staged, set_aside)
        filestore.publish(spark, paths["quarantine"], name, staged)
    clock.lap("quarantine")
    filestore.publish(spark, paths["raw"], name,
                      {f: rels for f, rels in folders.items() if not _is_set_aside(f)})
    clock.lap("publish")
    counts = keys["reason"].fillna("").value_counts().to_dict()
    archived = int(counts.pop("", 0))
    counts = {str(r): int(n) for r, n in sorted(counts.items())}
    record = {"messages": len(keys), "archived": archived, "quarantined": len(set_aside), "reasons": counts,
              "seconds": clock.laps}
    lost = lost_offsets(spark, checkpoint, batch_id, keys, bootstrap) if checkpoint and bootstrap else []
    if lost:
        record |= {"lost": sum(r["messages"] for r in lost), "lost_ranges": lost}
        logger.warning("stream2raw: batch %d: %d messages were gone from Kafka before they were read (retention, "
                       "or deleted): %s", batch_id, record["lost"], lost)
    logger.info("stream2raw: batch %d: %s", batch_id, record)
    filestore.commit(spark, paths["raw"], name, record)
    metrics.note(QUERY_NAME, batch_id, record)
    index.add(keys[keys["reason"].isna()])
    return record


def _stage_missing(spark: "SparkSession", root: str, name: "BatchKey", staged: dict[str, list[str]],
                   set_aside) -> dict[str, list[str]]:
    """Stage, without bytes, the set-aside messages Kafka no longer held when they were read
    again (retention); return the staged files. Nothing is lost from the quarantine's count."""
    import pandas as pd

    from fink.io import filestore

    base = f"{root.rstrip('/')}/{filestore.staging_folder(name)}"
    files = [f"{base}/{rel}" for rels in staged.values() for rel in rels]
    if files and spark.read.parquet(*files).count() == len(set_aside):  # the usual case: Parquet's footers tell
        return staged
    found = spark.read.parquet(*files).select(*KAFKA_COLUMNS[:3]).toPandas() if files else \
        pd.DataFrame(columns=KAFKA_COLUMNS[:3])
    missing = set_aside.astype({"partition": "int64", "offset": "int64"}).merge(
        found.astype({"partition": "int64", "offset": "int64"}), how="left",
                              on=KAFKA_COLUMNS[:3], indicator=True)
    missing = missing[missing["_merge"] == "left_only"].drop(columns="_merge")
    if not len(missing):
        return staged
    logger.warning("stream2raw: %d set-aside messages no longer in Kafka; quarantined without bytes", len(missing))
    rows = spark.createDataFrame(missing[["topic", "partition", "offset", "timestamp", "reason",
                                          "brokerIngestTimestamp"]],
                                 "topic string, partition int, offset long, timestamp timestamp, reason string, "
                                 "brokerIngestTimestamp timestamp")
    from pyspark.sql import functions as F

    return filestore.stage(quarantine_columns(rows.withColumn("value", F.lit(None).cast("binary"))), root, name,
                           "ingest_night", 1, append=True)


#: Parquet writer options of the quarantine: the writer holds a row group in memory, and a row
#: group of the default 128 MB of messages that do not compress (junk of 900 KB each) is more
#: than a task should hold; its size is checked every few rows, not after the first 100
QUARANTINE_OPTIONS = {"parquet.block.size": str(16 << 20), "parquet.page.size.row.check.min": "2",
                      "parquet.page.size.row.check.max": "16"}

#: Parquet writer options of the raw archive, measured on real ZTF alerts: zstd writes these
#: rows as fast as snappy and smaller (the gzipped cutouts do not compress, the rest does);
#: dictionaries do not pay on them (few repeated values) and cost 10-20 % of the write
ARCHIVE_OPTIONS = {"compression": "zstd", "parquet.enable.dictionary": "false"}


def _is_set_aside(folder: str) -> bool:
    return folder.startswith(f"night={SET_ASIDE}")


def _staged_keys(spark: "SparkSession", root: str, batch_id: "BatchKey", folders: dict[str, list[str]],
                 key: str = "candid"):
    """Every staged message as a pandas frame: topic, partition, offset, Kafka timestamp, the
    alert's id (column ``candid``, from the field path ``key``), night, reason, ingest time."""
    import pandas as pd
    from pyspark.sql import functions as F

    from fink.io import filestore

    base = f"{root.rstrip('/')}/{filestore.staging_folder(batch_id)}"
    files = [f"{base}/{rel}" for rels in folders.values() for rel in rels]
    if not files:
        return pd.DataFrame(columns=["topic", "partition", "offset", "candid", "timestamp", "brokerIngestTimestamp",
                                     "night", "reason"])
    keys = spark.read.parquet(*files).select(
        F.col("kafka_topic").alias("topic"), F.col("kafka_partition").alias("partition"),
        F.col("kafka_offset").alias("offset"), F.coalesce(F.col(key), F.lit(-1)).alias("candid"),
        F.col("kafka_timestamp").alias("timestamp"), "brokerIngestTimestamp",
        F.regexp_extract(F.col("_metadata.file_path"), r"night=([^/]*)/", 1).alias("night")).toPandas()
    keys = keys.sort_values(["topic", "partition", "offset"]).reset_index(drop=True)
    aside = keys["night"].str.startswith(SET_ASIDE)
    keys["reason"] = keys["night"].where(aside).str.slice(len(SET_ASIDE))
    keys.loc[aside, "night"] = None
    return keys


class NightIds:
    """The alert ids of one night, for membership tests of a batch: a sorted int64 array (8
    bytes an id: a Rubin night of 10 million ids in 80 MB, where a Python set takes 600)
    and the ids added since, merged in once they are many."""

    MERGE = 200_000

    def __init__(self, ids=()):
        import numpy as np

        values = np.asarray(ids, dtype=np.int64) if hasattr(ids, "__len__") and not isinstance(ids, (set, frozenset)) \
            else np.fromiter(ids, dtype=np.int64)
        self.sorted = np.unique(values)
        self.recent: set[int] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def __iter__(self):
        yield from (int(i) for i in self.sorted)
        yield from self.recent

    def update(self, ids) -> None:
        import numpy as np

        self.recent.update(int(i) for i in ids)
        if len(self.recent) >= self.MERGE:
            self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, dtype=np.int64))
            self.recent.clear()

    def contains(self, ids) -> "list[bool]":
        """Per id of ``ids`` (a batch), whether the night has it: O(batch log night)."""
        import numpy as np

        values = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(self.sorted, values)
        found = (at < len(self.sorted)) & (self.sorted[np.minimum(at, max(len(self.sorted) - 1, 0))] == values) \
            if len(self.sorted) else np.zeros(len(values), dtype=bool)
        return [bool(f) or int(v) in self.recent for f, v in zip(found, values, strict=True)]


class ArchivedCandids:
    """The id of every archived alert (ZTF ``candid``; the field path ``key``), by night: what
    a new alert must not repeat.

    A night is read from the archive (its ``candid`` column alone) the first time a batch
    holds it, then kept up to date with what each committed batch adds, so the query does
    not re-read its own output every batch. A fresh instance (a restart) reads again. Only the
    ``keep`` nights used last are kept (:class:`NightIds`); an older one is read again if a
    late alert needs it.
    """

    def __init__(self, spark: "SparkSession", raw_path: str, key: str = "candid", keep: int = 3):
        from collections import OrderedDict

        self.spark, self.raw_path, self.key, self.keep = spark, raw_path, key, keep
        self.nights: "OrderedDict[str, NightIds | set[int]]" = OrderedDict()

    def night(self, night: str) -> "NightIds | set[int]":
        from pyspark.sql import functions as F

        from fink.io.filestore import FileStore

        if night not in self.nights:
            store = FileStore(self.spark, self.raw_path)
            seen = NightIds()
            if store.files(f"night={night}"):
                table = self.spark.read.option("basePath", store.root).parquet(f"{store.root}/night={night}")
                seen = NightIds(table.select(F.col(self.key).alias("id")).toPandas()["id"].to_numpy())
            self.loaded(night, seen)
        else:
            self.nights.move_to_end(night)
        return self.nights[night]

    def loaded(self, night: str, ids: "NightIds") -> None:
        """Keep the ids of ``night``, read from the archive; forget the night used longest ago
        beyond ``keep``."""
        self.nights[night] = ids
        while len(self.nights) > self.keep:
            self.nights.popitem(last=False)

    def add(self, alerts) -> None:
        """Record the alerts (pandas: candid, night) a batch has just committed."""
        for night, candids in alerts.groupby("night")["candid"]:
            if night in self.nights:
                self.nights[night].update(candids.tolist())


def find_duplicates(alerts, archived: ArchivedCandids):
    """The rows of ``alerts`` (pandas: topic, partition, offset, candid, night) whose candid is
    already archived, or appeared earlier in the batch (by topic, partition, offset): the
    archive's ids are looked up per alert of the batch, not read whole."""
    import pandas as pd

    dup = alerts["candid"].duplicated(keep="first")  # alerts are sorted by topic, partition, offset
    for night, candids in alerts.groupby("night")["candid"]:
        seen = archived.night(night)
        if len(seen):
            found = seen.contains(candids.tolist()) if isinstance(seen, NightIds) else \
                [c in seen for c in candids.tolist()]
            dup |= pd.Series(found, index=candids.index).reindex(alerts.index, fill_value=False)
    return alerts[dup]


def _restage_without(spark: "SparkSession", root: str, batch_id: "BatchKey", folders: dict[str, list[str]], dups,
                     cfg: Stream2RawConfig) -> dict[str, list[str]]:
    """Rewrite the staged nights holding ``dups`` without them (rare: only duplicates pay for this)."""
    from pyspark.sql import functions as F

    from fink.io import filestore

    staging = filestore.staging_folder(batch_id)
    store = filestore.FileStore(spark, root)
    base = f"{store.root}/{staging}"
    nights = set(dups["night"])
    drop = spark.createDataFrame(dups[["topic", "partition", "offset"]].rename(
        columns={c: f"kafka_{c}" for c in ("topic", "partition", "offset")}))
    out = {}
    for folder, rels in folders.items():
        night = folder.partition("=")[2]
        if _is_set_aside(folder) or night not in nights:
            out[folder] = rels
            continue
        kept = (spark.read.parquet(*[f"{base}/{r}" for r in rels])
                .join(F.broadcast(drop), ["kafka_topic", "kafka_partition", "kafka_offset"], "left_anti"))
        kept.coalesce(cfg.files_per_batch).write.mode("overwrite").options(**ARCHIVE_OPTIONS).parquet(
            f"{base}/_{night}")
        for rel in rels:
            store.delete(staging, rel)
        out[folder] = []
        for name in (f for f in store.files(staging, f"_{night}") if f.endswith(".parquet")):
            store.move((staging, f"_{night}", name), (staging, folder, name))
            out[folder].append(f"{folder}/{name}")
    return out


def set_aside_messages(spark: "SparkSession", bootstrap: str, keys) -> "DataFrame":
    """The set-aside messages of ``keys`` (pandas: topic, partition, offset, timestamp, reason,
    brokerIngestTimestamp) with their bytes as ``value``, read again from Kafka by the
    executors: one batch read of each partition's offset range, kept to the keys' offsets
    (an inner join with the broadcast offsets: the messages stream through it, a row at a
    time). A message gone from Kafka meanwhile (retention) is not in it.

    Notes
    -----
    The bytes never go through the driver: a night replayed 40 times (gigabytes of
    duplicates) or thousands of 900 KB junk messages are written to the quarantine by the
    tasks that read them, a row at a time. The driver holds the offsets alone.
    """
    import json

    from pyspark.sql import functions as F

    from fink.io import kafka

    wanted = keys[["topic", "partition", "offset", "timestamp", "reason", "brokerIngestTimestamp"]]
    ranges = wanted.groupby(["topic", "partition"])["offset"].agg(["min", "max"])
    assign: dict[str, list[int]] = {}
    start: dict[str, dict[str, int]] = {}
    end: dict[str, dict[str, int]] = {}
    for (topic, part), (lo, hi) in ranges.iterrows():
        assign.setdefault(topic, []).append(int(part))
        start.setdefault(topic, {})[str(int(part))] = int(lo)
        end.setdefault(topic, {})[str(int(part))] = int(hi) + 1
    messages = (spark.read.format("kafka").options(**kafka.spark_options(bootstrap))
                .option("assign", json.dumps(assign)).option("startingOffsets", json.dumps(start))
                .option("endingOffsets", json.dumps(end)).option("failOnDataLoss", "false").load()
                .select("topic", "partition", "offset", "value"))
    offsets = spark.createDataFrame(wanted, "topic string, partition int, offset long, timestamp timestamp, "
                                            "reason string, brokerIngestTimestamp timestamp")
    return messages.join(F.broadcast(offsets), ["topic", "partition", "offset"], "inner")


def build(spark: "SparkSession", cfg: Stream2RawConfig, fink: FinkConfig) -> "DataStreamWriter":
    """The stage's unstarted writer: Kafka -> decode -> raw archive + quarantine.

    Start it with :func:`fink.runtime.streaming.start`; pick a trigger first, e.g.
    ``.trigger(availableNow=True)`` to catch up and stop, or ``processingTime="10 seconds"``.
    """
    from fink.io import filestore, table_use

    paths = cfg.paths(fink)
    table_use.attach(spark, paths["raw"], "write", paths["checkpoint"], QUERY_NAME)
    rows = transform(source(spark, cfg, fink.kafka_bootstrap), cfg)

    index = ArchivedCandids(spark, paths["raw"], cfg.description().alert_id)
    writer: list[str] = []  # the query's id, once it has started

    def sink(batch, batch_id):
        writer[:] = writer or [filestore.writer_id(spark, paths["checkpoint"])]
        write_batch(batch, batch_id, cfg, paths, fink.kafka_bootstrap, index, writer[0])

    return (rows.writeStream.foreachBatch(sink).option("checkpointLocation", paths["checkpoint"])
            .queryName(QUERY_NAME))


def batch_files(spark: "SparkSession", root: str, batch_id: "BatchKey", schema: "StructType") -> "DataFrame":
    """The rows batch ``batch_id`` published into the table at ``root`` (a replayed batch's
    output, read back for the stages after it).

    Raises
    ------
    FileNotFoundError
        The batch's files are gone (a compaction renamed them): its alerts cannot be handed on.
    """
    from fink.io import filestore

    files = filestore.batch_files(spark, root, batch_id)
    if not files:
        raise FileNotFoundError(f"{root}: batch {batch_id} was committed but its files are gone (compacted?): "
                                "the stages after it cannot be given its alerts again")
    return spark.read.schema(schema).option("basePath", root).parquet(*files)


def _cached_keys(df: "DataFrame", key: str):
    """:func:`_staged_keys` of a batch of decoded rows (the cached batch of the one-pass step)."""
    from pyspark.sql import functions as F

    keys = df.select("topic", "partition", "offset", F.coalesce(F.col(f"alert.{key}"), F.lit(-1)).alias("candid"),
                     "timestamp", "brokerIngestTimestamp", "night", "reason").toPandas()
    return keys.sort_values(["topic", "partition", "offset"]).reset_index(drop=True)


def step(spark: "SparkSession", cfg: Stream2RawConfig, fink: FinkConfig, **context: Any) -> "Step":
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
    from fink.stages.step import Output, Step, report

    paths = cfg.paths(fink)
    key = cfg.description().alert_id
    index = ArchivedCandids(spark, paths["raw"], key)
    layout = raw_schema(spark, cfg)
    kafka_rows = spark.createDataFrame([], "key binary, value binary, topic string, partition int, offset long, "
                                           "timestamp timestamp, timestampType int")
    fields = decoded(kafka_rows, cfg).schema["alert"].dataType.fieldNames()  # the alert's own fields
    writer: list[str] = []  # the pipeline query's id, once it has started

    def run(batch: "DataFrame", batch_id: int, rows: int | None) -> Output:
        started = time.time()
        clock = metrics.Clock()
        writer[:] = writer or [filestore.writer_id(spark, context["checkpoint"])]
        name = filestore.batch_key(writer[0], batch_id)
        done = _begin(spark, name, paths)
        if done is not None:  # committed before a crash: what it archived, from the archive
            archived = int(done.get("archived", 0))
            out = batch_files(spark, paths["raw"], name, layout) if archived else None
            return Output(out, archived, report(QUERY_NAME, batch_id, 0, {}, None, started, replayed=True,
                                                id=writer[0]))
        cached = batch.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        try:
            keys = _cached_keys(cached, key)  # the decode runs here, once, into the cache
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
            folders = _stage(kept, name, cfg, paths, fields)
            clock.lap("write")
            record = _commit(spark, batch_id, name, paths, folders, keys, fink.kafka_bootstrap, index, clock,
                             context["checkpoint"])
            # counted by Spark over the batch itself, apart from the record (which counts the keys
            # collected): reconcile compares the two
            observed = {k: int(v or 0) for k, v in cached.agg(*counts()).first().asDict().items()}
            if record.get("lost"):  # offsets the batch planned that Kafka no longer had
                observed["lost"] = record["lost"]
            waited = (keys["brokerIngestTimestamp"] - keys["timestamp"]).dt.total_seconds()
            latency = [float(waited.quantile(q)) for q in metrics.QUANTILES] if len(keys) else None
            return report(QUERY_NAME, batch_id, len(keys), observed, latency, started, laps=clock.laps, id=writer[0])

        alerts = raw_columns(kept.where(F.col("reason").isNull()), fields) if archived else None
        return Output(alerts, archived, None, [cached], finish)

    return Step(QUERY_NAME, reads="kafka", writes="raw", run=run, tables=[paths["raw"]],
                source=lambda: decoded(source(spark, cfg, fink.kafka_bootstrap), cfg).drop("key", "value"))


def unread(spark: "SparkSession", cfg: Stream2RawConfig, bootstrap: str, checkpoint: str) -> int | None:
    """How many messages the source holds beyond what the query of ``checkpoint`` has
    planned to read (its latest offsets), or None when that cannot be told (a topic pattern
    never read, a source starting at its latest offsets)."""
    from fink.io import kafka
    from fink.io.filestore import FileStore
    from fink.io.table_use import batches

    latest = max(batches(FileStore(spark, checkpoint), "offsets"), default=None)
    planned = planned_offsets(spark, checkpoint, latest) if latest is not None else {}
    topics = {t for t, _ in planned} or ({cfg.topic} if cfg.topic and not cfg.topic_pattern else set())
    if not topics or (not planned and cfg.starting_offsets != "earliest"):
        return None
    ends = {(t, p): e for t in topics for p, e in kafka.end_offsets(bootstrap, t).items()}
    starts = kafka.start_offsets(bootstrap, [tp for tp in ends if tp not in planned])
    return sum(max(0, e - (planned[tp][1] if tp in planned else starts.get(tp, 0))) for tp, e in ends.items())


def reconcile(spark: "SparkSession", progress: list[dict], raw_path: str, unread: int | None = None) -> dict[str, Any]:
    """Account for every message of a run, from two independent counts.

    ``messages`` and ``decoded`` come from the query's observed metrics (counted as Spark
    read the batch); ``archived``, ``quarantined`` and the reasons (duplicates included)
    from the commit records the batches wrote, with ``lost``: messages the batches planned to
    read but Kafka no longer held (:func:`lost_offsets`; never read, so not in ``messages``).
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
