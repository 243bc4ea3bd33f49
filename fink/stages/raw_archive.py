"""The raw archive and the quarantine, written exactly once per micro-batch (stream2raw's sink).

Notes
-----
Every message is decoded once, in a single Parquet write to the batch's staging folder:
alerts under ``night=YYYYMMDD``, messages set aside under ``night=q_<reason>`` (their
alert columns null). Duplicates are then found on the staged ids alone. The quarantine
wants the raw bytes of the few messages set aside: they are read again from Kafka by offset,
not carried through the decode. Only then do the alert files move into the table, and a
commit marker names the batch: a batch replayed after a failure rewrites the same files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fink.log import logger
from fink.runtime import metrics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from fink.io.filestore import BatchKey
    from fink.stages.duplicates import ArchivedCandids

#: the stage these tables belong to (its metrics and log lines)
QUERY_NAME = "stream2raw"
KAFKA_COLUMNS = ["topic", "partition", "offset", "timestamp"]
#: the raw archive's columns after the alert's own fields (see :func:`raw_columns`)
INGEST_COLUMNS = [*(f"kafka_{c}" for c in KAFKA_COLUMNS), "brokerIngestTimestamp", "schema_version", "night"]


def raw_columns(df: "DataFrame", fields: list[str] | None = None) -> "DataFrame":
    """The archive's rows: every alert field, the ingest metadata, the night.

    ``fields``: the alert's field names, when known (a batch's schema costs a round trip to
    the JVM and tens of milliseconds for an alert's hundreds of nested fields)."""
    from pyspark.sql import functions as F

    names = fields if fields is not None else df.schema["alert"].dataType.fieldNames()
    ingest = [*[F.col(c) for c in KAFKA_COLUMNS], F.col("brokerIngestTimestamp"), F.col("version"), F.col("night")]
    return df.select(*[F.col("alert").getField(f).alias(f) for f in names],
                     *[c.alias(name) for c, name in zip(ingest, INGEST_COLUMNS, strict=True)])


def alert_fields(layout: "StructType") -> list[str]:
    """The alert's own fields in a raw archive's ``layout`` (what :func:`raw_columns` gives), in order."""
    return [f for f in layout.fieldNames() if f not in INGEST_COLUMNS]


def quarantine_columns(df: "DataFrame") -> "DataFrame":
    """The quarantine's rows: where the message was, why it was set aside, its bytes."""
    from pyspark.sql import functions as F

    return df.select(*KAFKA_COLUMNS, "reason", "brokerIngestTimestamp", F.col("value").alias("raw"),
                     F.date_format("brokerIngestTimestamp", "yyyyMMdd").alias("ingest_night"))


#: prefix of the staging partitions that hold the messages set aside (``night=q_<reason>``)
SET_ASIDE = "q_"


def begin_batch(spark: "SparkSession", batch_id: "BatchKey", paths: dict[str, str]) -> dict[str, Any] | None:
    """The batch's commit record if it was committed (a replay), else None, the remains of an
    interrupted attempt removed from the raw table and the quarantine."""
    from fink.io import filestore

    return filestore.begin(spark, paths["raw"], batch_id, paths["quarantine"])


def stage_batch(batch: "DataFrame", batch_id: "BatchKey", files_per_batch: int, paths: dict[str, str],
           fields: list[str] | None = None):
    """Write the batch's rows to its staging folder: alerts by night, messages set aside under
    ``night=q_<reason>``; return the staged files by folder (``fields``: see :func:`raw_columns`)."""
    from pyspark.sql import functions as F

    from fink.io import filestore

    reason = F.col("reason")
    rows = raw_columns(batch.withColumn("night", F.when(reason.isNull(), F.col("night"))
                                        .otherwise(F.concat(F.lit(SET_ASIDE), reason))), fields)
    return filestore.stage(rows, paths["raw"], batch_id, "night", files_per_batch, ARCHIVE_OPTIONS)


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


def commit_batch(spark: "SparkSession", batch_id: int, name: "BatchKey", paths: dict[str, str],
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
    # noted before the commit: a kill between the two then leaves a note and a batch Spark runs again
    # (its new note, under the same batch id, is the latest), never a committed batch without its note
    # (replayed, it writes nothing: the fault suite lost a batch's note so once)
    metrics.note(QUERY_NAME, batch_id, record)
    filestore.commit(spark, paths["raw"], name, record)
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
    if files and filestore.row_count(spark, files) == len(set_aside):  # the usual case: Parquet's footers tell
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


def staged_keys(spark: "SparkSession", root: str, batch_id: "BatchKey", folders: dict[str, list[str]],
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


def restage_without(spark: "SparkSession", root: str, batch_id: "BatchKey", folders: dict[str, list[str]], dups,
                     files_per_batch: int) -> dict[str, list[str]]:
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
        kept.coalesce(files_per_batch).write.mode("overwrite").options(**ARCHIVE_OPTIONS).parquet(
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
