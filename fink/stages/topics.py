"""What each distribution topic receives: the alert's columns, one Avro encoding per choice
of fields, the topics and their ``_schema`` topics created before any write.

Notes
-----
The wire format is the Fink community client's: the message value is the alert with its
added values as schemaless Avro (Spark's ``to_avro``), the key the JSON of that Avro
schema; the schema is also published on ``<topic>_schema``. A topic may drop the cutouts
or keep only chosen fields; topics with the same choice share one encoding per alert.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError
from fink.filters.filter_api import SELECTED
from fink.io import kafka
from fink.survey.avro import avro_schema
from fink.survey.description import FINK_NAMES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
#: columns of the science archive that are not part of a distributed alert
INTERNAL = ("night", SELECTED)


@dataclasses.dataclass(frozen=True)
class Encoding:
    """One Avro layout shared by the topics (by index) that chose the same fields."""

    fields: tuple[str, ...]
    schema: str  # the Avro schema as JSON: the message key, and the _schema topic's content
    topics: tuple[int, ...]



def fink_named(names: list[str], fink_names: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fink's columns to add to alerts with columns ``names``: name -> expression (the column it
    stands for, its ``missing`` value where null), from ``fink_names`` (a survey's
    :meth:`~fink.survey.description.Survey.fink_columns`; by default those of every survey)."""
    from pyspark.sql import functions as F

    out = {}
    for name, ours in (FINK_NAMES if fink_names is None else fink_names).items():
        if ours["column"] in names and name not in names:
            column = F.col(ours["column"])
            out[name] = column if ours.get("missing") is None else F.coalesce(column, F.lit(ours["missing"]))
    return out


def alert_columns(df: "DataFrame", fink_names: dict[str, dict[str, Any]] | None = None) -> "DataFrame":
    """A distributed alert's columns: the science row without internal columns, plus the columns
    this broker computes under Fink's names (:func:`fink_named`)."""
    out = df.drop(*[c for c in INTERNAL if c in df.columns])
    for name, column in fink_named(out.columns, fink_names).items():
        out = out.withColumn(name, column)
    return out


def encodings(schema: "StructType", topic_options: dict, topics: list[str]) -> list[Encoding]:
    """Group the topics by the fields they send (``topic_options``: topic -> ``cutouts``,
    ``fields``, as the stage's configuration says); each group gets its Avro schema."""
    from pyspark.sql.types import StructType

    available = [f.name for f in schema.fields]
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, topic in enumerate(topics):
        opts = topic_options.get(topic, {})
        fields = list(opts.get("fields") or available)
        unknown = [f for f in fields if f not in available]
        if unknown:
            raise ConfigError(f"topic_options['{topic}']: field '{unknown[0]}' is not a column of the "
                              f"science alerts (columns: {', '.join(available)})")
        if opts.get("cutouts", True) is False:
            fields = [f for f in fields if f not in CUTOUTS]
        groups.setdefault(tuple(fields), []).append(k)
    out = []
    for fields, members in groups.items():
        struct = StructType([schema[f] for f in fields])
        out.append(Encoding(fields, json.dumps(avro_schema(struct)), tuple(members)))
    return out


def derived(schema: "StructType", fink_names: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The columns :func:`alert_columns` adds to science rows of ``schema``: name -> expression."""
    return fink_named(schema.fieldNames(), fink_names)


def messages(batch: "DataFrame", encs: list[Encoding], added: dict[str, Any] | None = None) -> "DataFrame":
    """One row per (alert, topic that selected it): ``_k`` (the topic's index) and ``value``.

    ``added``: what :func:`derived` gives for the batch's schema, when known (then the batch's
    schema is not asked of the JVM: tens of milliseconds per batch for an alert's fields)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    picked = batch.where(F.size(F.col(SELECTED)) > 0)
    if added is None:
        rows = alert_columns(picked.withColumn("_k", F.explode(SELECTED)).drop(SELECTED))
    else:
        fields = list(dict.fromkeys(f for enc in encs for f in enc.fields))
        rows = picked.select(F.explode(SELECTED).alias("_k"), *[added.get(f, F.col(f)).alias(f) for f in fields])
    value = None
    for enc in encs:
        encoded = to_avro(F.struct(*[F.col(f) for f in enc.fields]), enc.schema)
        hit = F.col("_k").isin(*enc.topics)
        value = F.when(hit, encoded) if value is None else value.when(hit, encoded)
    return rows.select("_k", value.alias("value"))



def prepare_topics(bootstrap: str, encs: list[Encoding], topics: list[str], partitions: int = 1,
                   retention_ms: int = 7 * 24 * 3600 * 1000, ride_out_s: float = 300.0) -> None:
    """Create every topic (``partitions``, ``retention_ms``) and its ``_schema`` topic (waiting for
    their leaders) and publish the schemas. A broker that goes away meanwhile (a restart) is
    waited for up to ``ride_out_s`` seconds: the producer sends the schemas once it is back."""
    conf = {"retention.ms": str(retention_ms)}
    for topic in topics:
        kafka.ensure_topic(bootstrap, topic, partitions, config=conf)
        kafka.ensure_topic(bootstrap, f"{topic}_schema", 1, config={"cleanup.policy": "compact"})
    kafka.produce_messages(bootstrap, [(f"{topics[k]}_schema", enc.schema.encode(), b"") for enc in encs
                                       for k in enc.topics],
                           timeout=ride_out_s + 5, **{"message.timeout.ms": int(ride_out_s * 1000)})
