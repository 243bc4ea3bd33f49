"""The science archive's layout: what raw2science adds to an alert, and its join to the raw alert.

The science archive holds, per kept alert, only what raw2science adds: the alert's key
(the survey's alert id), ``processingStart``, each module's outputs, ``fink_modules`` (the
modules' versions), ``processingEnd`` and ``night``. The alert itself (cutouts included) is
in the raw archive, written once, by stream2raw. :func:`read_science` joins the two on
``(key, night)`` and gives the rows the science archive held whole before: every raw
column, the added columns, ``night`` last.

A marker at the table's root (:data:`LAYOUT`, JSON) records the layout: the raw archive's
location, the survey, the key and the schema of the added columns. A science archive
without it was written whole (before this layout): :func:`read_science` reads it as it is.
An archive holding both (written whole, then by this layout) reads through the join: the
whole files are read with the added columns' schema, their key from the alert's own field.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fink.errors import FinkError
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

class LayoutChanged(FinkError):
    """The science archive's layout gained columns since a reader of it started."""


#: the layout marker at the science archive's root (ignored by Parquet readers: ``_``)
LAYOUT = "_fink_science.json"
#: the layout's version (the whole rows, before it, had no marker)
VERSION = 2


def key_of(survey: "surveys.Survey") -> tuple[str, str]:
    """``(column, path)``: the key's column in the science archive and its field in the raw
    alert (``candid``; Rubin's ``diaSource.diaSourceId`` is stored as ``alert_id``)."""
    path = survey.alert_id
    return (path if "." not in path else "alert_id"), path


def added(columns: list[str], raw: list[str]) -> list[str]:
    """The columns of a science row (``columns``, in order) that are not raw columns, ``night`` last."""
    return [c for c in columns if c not in raw and c != "night"] + ["night"]


def slim_columns(survey: "surveys.Survey", extra: list[str]) -> list:
    """The science archive's columns of a science row: its key, then ``extra`` (:func:`added`)."""
    from pyspark.sql import functions as F

    name, path = key_of(survey)
    return [F.col(path).alias(name), *[F.col(f"`{c}`") for c in extra]]


def slim_schema(spark: "SparkSession", survey: "surveys.Survey", full: "StructType",
                raw: "StructType") -> "StructType":
    """The schema of the science archive's files, for science rows of schema ``full``."""
    return spark.createDataFrame([], full).select(*slim_columns(survey, added(full.fieldNames(),
                                                                                raw.fieldNames()))).schema


def stored_schema(slim: "StructType", survey: "surveys.Survey") -> "StructType":
    """What to read the archive's files with: ``slim``, and for a nested key the alert field it
    comes from (files written whole before this layout have it, not the key's column)."""
    from pyspark.sql.types import LongType, StructField, StructType

    name, path = key_of(survey)
    if "." not in path or path.split(".")[0] in slim.fieldNames():
        return slim
    head, *rest = path.split(".")
    typ = slim[name].dataType if name in slim.fieldNames() else LongType()
    for part in reversed(rest):
        typ = StructType([StructField(part, typ)])
    return StructType(list(slim.fields) + [StructField(head, typ)])


def full_schema(raw: "StructType", stored: "StructType", survey: "surveys.Survey") -> "StructType":
    """The schema of the joined rows: every raw column (``night`` apart), the added ones, ``night``."""
    from pyspark.sql.types import StringType, StructField, StructType

    name, path = key_of(survey)
    skip = {"night", name, path.split(".")[0]} | set(raw.fieldNames())
    return StructType([f for f in raw.fields if f.name != "night"] + [f for f in stored.fields if f.name not in skip]
                      + [StructField("night", StringType())])


def join_raw(science: "DataFrame", raw: "DataFrame", survey: "surveys.Survey",
             full: "StructType", broadcast: bool = False) -> "DataFrame":
    """Science rows (the archive's columns) joined to their raw alerts: rows of ``full``."""
    from pyspark.sql import functions as F

    name, path = key_of(survey)
    key = F.col(name)
    if "." in path and path.split(".")[0] in science.columns:  # a whole row's own field (written before)
        key = F.coalesce(key, F.col(path)) if name in science.columns else F.col(path)
    left = science.select(key.alias("_key"), *[F.col(f"`{c}`") for c in science.columns
                                                 if c in full.fieldNames() and c not in raw.columns or c == "night"])
    right = raw.withColumn("_key", F.col(path))
    if broadcast:
        left = F.broadcast(left)
    joined = right.join(left, ["_key", "night"], "inner")
    return joined.select(*[F.col(f"`{f.name}`") for f in full.fields])


def write_layout(spark: "SparkSession", science_path: str, raw_path: str, survey: str, slim: "StructType") -> None:
    """Record the layout at the archive's root (atomically; again only when it changed):
    ``survey`` is the stage's (a shipped name or a description file)."""
    from fink.io.filestore import FileStore

    name, path = key_of(surveys.load(survey))
    text = json.dumps({"version": VERSION, "raw": raw_path, "survey": survey,
                       "key": name, "key_path": path, "schema": json.loads(slim.json())}, indent=1)
    store = FileStore(spark, science_path)
    if store.exists(LAYOUT) and store.read_text(LAYOUT) == text:
        return
    store.fs.mkdirs(store.path())
    store.replace_text(text, LAYOUT)


def read_layout(spark: "SparkSession", science_path: str) -> dict[str, Any] | None:
    """The layout recorded at the archive's root, or None (an archive written whole, or empty)."""
    from pyspark.sql.types import StructType

    from fink.io.filestore import FileStore

    store = FileStore(spark, science_path)
    if not store.exists(LAYOUT):
        return None
    out = json.loads(store.read_text(LAYOUT))
    out["schema"] = StructType.fromJson(out["schema"])
    return out


def read_science(spark: "SparkSession", path: str, raw_path: str = "") -> "DataFrame":
    """The science archive as a table: one row per kept alert, every raw column, the columns
    raw2science added, ``night`` last (partitioned by it).

    Parameters
    ----------
    path
        The science archive.
    raw_path
        The raw archive it joins; empty: the one its layout records.

    Notes
    -----
    Select the columns you need first: Parquet reads only those, and the raw archive's
    cutouts are read only if selected. An archive written whole (before this layout) is read
    as it is.
    """
    from fink.stages import stream2raw as s2r

    layout = read_layout(spark, path)
    if layout is None:
        return spark.read.parquet(path)
    survey = surveys.load(layout["survey"])
    raw_schema = s2r.raw_schema(spark, s2r.Stream2RawConfig(topic="-", survey=layout["survey"]))
    stored = stored_schema(layout["schema"], survey)
    science = spark.read.schema(stored).option("basePath", path).parquet(path)
    raw = spark.read.schema(raw_schema).option("basePath", raw_path or layout["raw"]).parquet(raw_path or layout["raw"])
    return join_raw(science, raw, survey, full_schema(raw_schema, stored, survey))


def expand(batch: "DataFrame", raw_path: str, raw_schema: "StructType", survey: "surveys.Survey",
           full: "StructType") -> "DataFrame":
    """One micro-batch of the science archive's rows joined to their raw alerts: only the raw
    files of the batch's nights are read, their rows pruned by the batch's key range."""
    from pyspark.sql import functions as F

    name, path = key_of(survey)
    key = F.col(name)
    if "." in path and path.split(".")[0] in batch.columns:
        key = F.coalesce(key, F.col(path))
    bounds = batch.groupBy("night").agg(F.min(key).alias("lo"), F.max(key).alias("hi")).collect()
    spark = batch.sparkSession
    if not bounds:
        return spark.createDataFrame([], full)
    root = raw_path.rstrip("/")
    raw = spark.read.schema(raw_schema).option("basePath", root).parquet(*[f"{root}/night={b['night']}"
                                                                           for b in bounds])
    wanted = None
    for b in bounds:  # the key's range per night: Parquet skips the row groups outside it
        cond = (F.col("night") == b["night"]) & F.col(path).between(b["lo"], b["hi"])
        wanted = cond if wanted is None else wanted | cond
    return join_raw(batch, raw.where(wanted), survey, full, broadcast=True)
