"""Decoding a survey's messages in the JVM: the framing parsed with SQL functions, every
schema version decoded with ``from_avro`` and laid out in one layout (the union of them all).

Notes
-----
A ZTF message is an Avro container file holding one uncompressed record: the header
(magic, metadata with the writer schema, a 16-byte sync marker), one block (record count,
byte size, the record) and the sync marker again. Spark's ``from_avro`` reads schemaless
records, so :func:`parse_container` locates the record with SQL functions alone (the sync
marker is the message's last 16 bytes and ends the header too), reads the schema version
from the header, and :func:`decode` applies ``from_avro`` with the project's schema of that
version. A Rubin message (Confluent wire format) is a zero byte, a 4-byte schema id and the
schemaless record: :func:`parse_confluent` reads the id with SQL functions and
:func:`decode` applies the schema of that id (:class:`fink.survey.wire.SchemaResolver`).
Every version is then laid out in one layout, the union of all versions the stage knows,
newest first (:func:`union_type`), fields a version lacks being null. No Python runs per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fink.runtime.metrics import now
from fink.survey import avro
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType


def _byte(value: "Column", pos: "Column") -> "Column":
    """The unsigned byte at 1-based ``pos`` of a binary column, as an int."""
    from pyspark.sql import functions as F

    return F.conv(F.hex(F.substring(value, pos, 1)), 16, 10).cast("int")



def parse_container(df: "DataFrame", versions: list[str], max_alert_bytes: int = avro.MAX_ALERT_BYTES) -> "DataFrame":
    """Messages that are Avro container files: add ``version`` (the writer schema's ``version``
    property, one of ``versions``), ``payload`` (the schemaless record) and ``reason`` (null when fine).

    Notes
    -----
    Spark's interpreted expressions (the sessions' default, :mod:`fink.runtime.session`) copy a
    binary column each time an expression reads it, and each projection copies the columns it
    passes on: copies of whole messages were 18 % of the driver JVM's CPU samples at 150 alerts/s
    (JFR, ``bench_e2e.py``). The message is read by one projection, which hands on small slices of
    it (the header's first 4 KiB, the block's first bytes) and the record's bytes; the positions
    are worked out from the slices. Before, a dozen reads and three projections carried the
    message. ``value`` is still handed on, for the quarantine: a plan that drops it reads it once.
    """
    from pyspark.sql import functions as F

    v = F.col("value")
    n = F.length(v)
    sync = F.substring(v, n - 15, 16)
    # the header ends with the sync marker: the bytes before its first occurrence are the
    # header. substring_index matches bytes (a binary cast to string is not decoded), and
    # costs a third of a hex-and-instr search
    hl = F.octet_length(F.call_function("substring_index", v.cast("string"), sync.cast("string"), F.lit(1)))
    block = hl + 17  # 1-based position of the block's record count
    head = F.col("_head")
    df = df.select(
        *df.columns, n.alias("_n"), hl.alias("_hl"),
        # ZTF tags the alert record and each nested record with the same "version": the first one
        # in the header's first 4 KiB is enough
        F.substring(v, 1, 4096).alias("_head"),
        F.substring(v, block, 6).alias("_blk"),  # the record count (one byte) and the byte size (a varint)
        F.substring(v, block + 1, n - 16 - block).alias("_body"))  # the byte size, the record
    # the block's byte size is a zig-zag varint: count its bytes (a byte < 128 ends it)
    blk = F.col("_blk")
    k = (F.when(_byte(blk, F.lit(2)) < 128, 1).when(_byte(blk, F.lit(3)) < 128, 2)
         .when(_byte(blk, F.lit(4)) < 128, 3).when(_byte(blk, F.lit(5)) < 128, 4).otherwise(5))
    version = F.regexp_extract(F.decode(F.substring(head, F.lit(1), F.least(F.col("_hl"), F.lit(4096))), "ISO-8859-1"),
                               r'"version"\s*:\s*"([0-9.]+)"', 1)
    # found before the last 16 bytes (else the search ran into the trailing marker itself)
    well_formed = (F.col("_hl") > 4) & (F.col("_hl") + 17 + 16 < F.col("_n"))
    reason = (F.when(F.col("_n").isNull() | (F.col("_n") == 0), "empty")
              .when(F.substring(head, F.lit(1), F.lit(4)) != F.lit(avro.AVRO_MAGIC), "not_avro")
              .when(F.col("_n") > max_alert_bytes, "oversized")
              .when(~well_formed, "truncated")
              .when(_byte(blk, F.lit(1)) != 2, "truncated")  # a record count of 1 (zig-zag 2)
              .when(~version.isin(*versions), "unknown_schema"))
    df = df.withColumn("reason", reason).withColumn("_k", k).withColumn("_version", version)
    return (df.withColumn("version", F.when(F.col("reason").isNull(), F.col("_version")))
            .withColumn("payload", F.when(F.col("reason").isNull(), F.substring(
                F.col("_body"), F.col("_k") + 1, F.col("_n") - 16 - F.col("_hl") - 17 - F.col("_k"))))
            .drop("_n", "_hl", "_head", "_blk", "_body", "_k", "_version"))



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
    return df.withColumn("night", night).withColumn("brokerIngestTimestamp", now())
