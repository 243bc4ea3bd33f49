"""The real-time lane: filters that are SQL conditions, from the survey's topic to theirs in
under a second, in Spark's Real-time Mode.

A filter of distribution configured as ``{"condition": "<Spark SQL over the alert's fields>",
"lane": "realtime"}`` runs here, not in the micro-batch pass. One query reads the survey's
topic, decodes each message once (:func:`fink.stages.stream2raw.decoded`), keeps the alerts
that pass the survey's quality cuts and the filter's condition, and writes each to the
filter's topic as it comes (``trigger(realTime=...)``): no micro-batch to wait for.

Notes
-----
What the lane guarantees, and what it does not:

* **At least once.** Real-time Mode's Kafka sink is not transactional: after a crash the
  query resumes from its last checkpointed offsets and sends again what it had sent since.
  Each message carries the alert's id in its ``alert_id`` header, and :mod:`fink.client`
  drops an alert id it has already given (``AlertStream(..., dedup=True)``, the default).
* **No science modules.** Real-time Mode runs no Python: a filter that needs a module's
  value (a classifier's score) belongs to the micro-batch lane. Only SQL conditions over the
  alert's own fields (and the survey's cuts) run here.
* **Same wire format.** The message value is the alert (its raw archive columns: the survey's
  fields, the Kafka coordinates of the input message, the schema version, the night) as
  schemaless Avro, the key the JSON of that schema, as distribution sends them: the Fink
  community client reads a real-time topic as it reads any other.
* **Task slots.** The query keeps one task per input partition running for as long as each
  real-time batch lasts: the driver needs that many slots besides the micro-batch pass's
  (:func:`slots`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter

    from fink.stages.distribution import DistributionConfig
    from fink.stages.stream2raw import Stream2RawConfig

QUERY_NAME = "realtime"
#: how long one real-time batch lasts (its offsets are checkpointed at its end)
BATCH = "30 seconds"


def conditions(stage_cfg: "DistributionConfig") -> dict[str, str]:
    """Topic -> SQL condition of every filter of the real-time lane (empty: the lane is off)."""
    return stage_cfg.realtime_filters()


def selection(df: "DataFrame", cuts: dict[str, str], lane: dict[str, str]) -> "DataFrame":
    """Decoded alerts (stream2raw's layout, with ``reason``) -> one row per (alert, topic of a
    condition it meets): the alert's raw archive columns and ``topic``. Alerts set aside or
    failing a cut go nowhere.
    """
    from pyspark.sql import functions as F

    from fink.stages.raw2science import cut_reason
    from fink.stages.raw_archive import raw_columns

    try:
        kept = raw_columns(df.where(F.col("reason").isNull()))
        kept = kept.where(cut_reason(cuts).isNull())
        hits = [F.when(F.coalesce(F.expr(cond).cast("boolean"), F.lit(False)), F.lit(topic))
                for topic, cond in lane.items()]
        # each condition is evaluated on the alert's columns, before the explode
        rows = kept.withColumn("_topics", F.filter(F.array(*hits), lambda t: t.isNotNull()))
    except Exception as exc:  # an unparsable condition or an unknown column: name it
        raise ConfigError(f"real-time filters {lane}: {str(exc).splitlines()[0]}") from exc
    return rows.where(F.size("_topics") > 0).withColumn("topic", F.explode("_topics")).drop("_topics")


def alert_layout(rows: "DataFrame") -> Any:
    """The Spark struct type of a real-time message's value (the columns of :func:`selection`
    but ``topic``)."""
    from pyspark.sql.types import StructType

    return StructType([f for f in rows.schema.fields if f.name != "topic"])


def messages(rows: "DataFrame", alert_id: str) -> "tuple[DataFrame, str]":
    """Kafka rows (``topic``, ``key``, ``value``, ``headers``) of the selected alerts, and the
    Avro schema (JSON) of their values; ``alert_id`` is the survey's id field path."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    from fink.survey.avro import ALERT_ID_HEADER, avro_schema

    layout = alert_layout(rows)
    schema = json.dumps(avro_schema(layout))
    value = to_avro(F.struct(*[F.col(f.name) for f in layout.fields]), schema)
    ident: "Column" = F.expr(alert_id).cast("string").cast("binary")
    header = F.array(F.struct(F.lit(ALERT_ID_HEADER).alias("key"), ident.alias("value")))
    return rows.select("topic", F.lit(schema).cast("binary").alias("key"), value.alias("value"),
                       header.alias("headers")), schema


def build(spark: "SparkSession", stage_cfg: "DistributionConfig", source_cfg: "Stream2RawConfig", fink_cfg: FinkConfig,
          checkpoint: str, cuts: dict[str, str] | None = None) -> "DataStreamWriter | None":
    """The lane's unstarted writer (Real-time Mode, Kafka sink), or None when no filter asks for it.

    ``source_cfg`` says what to read (stream2raw's topic, survey and schemas), ``cuts`` which
    alerts are good enough to send (default: the survey's quality cuts). The topics and their
    ``_schema`` topics are created here, the schema published.
    """
    from fink.io import kafka
    from fink.stages import stream2raw as s2r
    from fink.stages.topics import Encoding, prepare_topics

    lane = conditions(stage_cfg)
    if not lane:
        return None
    survey = source_cfg.description()
    cuts = dict(survey.cuts) if cuts is None else cuts
    stream = s2r.source(spark, source_cfg, fink_cfg.kafka_bootstrap, batches=False)
    rows = selection(s2r.decoded(stream, source_cfg), cuts, lane)
    out, schema = messages(rows, survey.alert_id)
    topics = list(lane)
    prepare_topics(fink_cfg.kafka_bootstrap, [Encoding((), schema, tuple(range(len(topics))))], topics,
                   stage_cfg.partitions, stage_cfg.retention_ms)
    return (out.writeStream.format("kafka").options(**kafka.spark_options(fink_cfg.kafka_bootstrap))
            .option("checkpointLocation", checkpoint).outputMode("update").trigger(realTime=BATCH)
            .queryName(QUERY_NAME))


def slots(master: str, partitions: int, cores_max: str | int | None = None) -> str:
    """``master`` with room for the lane's long-running tasks: ``local[N]`` becomes
    ``local[N + partitions]`` (one slot per input partition); other masters are left as they
    are (size the executors for it), but an application capped at ``cores_max`` cores
    (``spark.cores.max``) that the lane would fill is refused: its micro-batches would wait
    for a slot forever."""
    import re

    found = re.fullmatch(r"local\[(\d+)\]", master)
    if not found:
        if master.startswith("local"):
            raise ConfigError(f"the real-time lane needs a master local[N], got {master!r}")
        if cores_max is not None and int(cores_max) <= max(1, partitions):
            raise ConfigError(
                f"the real-time lane holds one core per partition of the survey's topic ({max(1, partitions)}) for "
                f"as long as it runs: spark.cores.max = {cores_max} leaves none for the micro-batches; give the "
                f"application at least {max(1, partitions) + 1} cores, or run without a real-time filter")
        return master
    return f"local[{int(found.group(1)) + max(1, partitions)}]"
