"""Alert schemas and the survey wire formats, with every failure named.

ZTF sends each alert as one Avro Object Container File: a header holding the writer
schema, then one data block with one record. :func:`decode_container` turns a Kafka
message back into the alert, or raises :class:`AlertDecodeError` whose ``reason`` is one
of :data:`REASONS`, so that checkstream and the quarantine table can say what was wrong.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro

from fink.errors import FinkError
from fink.survey.description import Survey, get_path
from fink.survey.description import load as load_survey

#: the Kafka header of a distributed message that holds its alert's id (what a consumer of an
#: at-least-once topic drops repeats by)
ALERT_ID_HEADER = "alert_id"
AVRO_MAGIC = b"Obj\x01"

#: why a message is not an alert (stable strings: they are stored in quarantine tables)
REASONS = {
    "empty": "the message has no bytes",
    "not_avro": "the message is not in the survey's Avro framing (a container file's 'Obj\\x01' magic, "
                "or the wire format's zero byte)",
    "truncated": "the Avro record ends early or is corrupt",
    "unknown_schema": "the writer schema (or schema id) is not a known alert schema of the survey",
    "missing_identifiers": "the alert lacks its object's or its own identifier (ZTF objectId, candid)",
    "bad_identifier": "the alert's own identifier is outside the range the survey issues (ZTF: a candid below 1)",
    "bad_time": "the alert's observation time (ZTF candidate.jd) is missing or not a plausible date",
    "oversized": "the message is larger than the size limit",
    "duplicate": "an alert with this candid was already seen",
}

#: the Julian date of the Unix epoch (1970-01-01T00:00:00 UTC)
JD_UNIX_EPOCH = 2440587.5
#: the Julian dates an observation may have (years 1858 to 2132): beyond them a night cannot be named
JD_RANGE = (2400000.5, 2500000.5)

#: ZTF alerts are 50-80 KB; a message above this is suspicious even if the broker accepts it
MAX_ALERT_BYTES = 1 << 20


class AlertDecodeError(FinkError, ValueError):
    """A message that is not a usable alert; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {REASONS[reason]}" + (f" ({detail})" if detail else ""))


class SchemaError(FinkError, ValueError):
    """A table cannot be written as Avro (a type with no Avro counterpart)."""


@functools.cache
def schema_versions(survey: str = "ztf") -> tuple[str, ...]:
    """Return the schema versions shipped for ``survey``, oldest first."""
    root = resources.files("fink") / "data" / "schemas"
    surveys = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if survey not in surveys:
        raise FinkError(f"no schemas for survey {survey!r} (shipped: {', '.join(surveys)})")
    return tuple(sorted((p.name[:-5] for p in (root / survey).iterdir() if p.name.endswith(".avsc")),
                        key=lambda v: tuple(int(x) for x in v.split("."))))


@functools.cache
def _schema_json(survey: str, version: str) -> str:
    # only a shipped version names a file: "../x", "4.02/" or a NUL byte never reach the file system
    if version not in schema_versions(survey):
        raise FinkError(f"no {survey} schema {version!r} (shipped: {', '.join(schema_versions(survey))})")
    return (resources.files("fink") / "data" / "schemas" / survey / f"{version}.avsc").read_text()


def load_schema(version: str = "4.02", survey: str = "ztf") -> dict[str, Any]:
    """Return the alert schema of ``survey`` ``version`` as a JSON-like dict (a fresh copy)."""
    return json.loads(_schema_json(survey, version))


@functools.cache
def parsed_schema(version: str = "4.02", survey: str = "ztf") -> dict[str, Any]:
    """Return the schema parsed by fastavro (cached: parse once, encode many)."""
    return fastavro.parse_schema(load_schema(version, survey))


def sync_marker(candid: int) -> bytes:
    """A 16-byte sync marker derived from the alert id: reproducible bytes, distinct per alert."""
    return hashlib.md5(str(candid).encode(), usedforsecurity=False).digest()


def encode_container(record: dict[str, Any], version: str = "4.02", survey: str = "ztf") -> bytes:
    """Encode one alert as ZTF does on the wire: an uncompressed container file with one record."""
    buf = io.BytesIO()
    fastavro.writer(buf, parsed_schema(version, survey), [record], codec="null",
                    sync_marker=sync_marker(record.get("candid", 0)))
    return buf.getvalue()


@dataclass(frozen=True)
class Decoded:
    """A decoded alert and what its container said about it."""

    alert: dict[str, Any]
    schema_version: str | None  # the writer schema's "version" property, when it has one
    size: int


def decode_container(data: bytes | None, max_bytes: int = MAX_ALERT_BYTES, survey: Survey | None = None) -> Decoded:
    """Decode one container-file message into its alert (of ``survey``, by default ZTF).

    Raises
    ------
    AlertDecodeError
        With ``reason`` ``empty``, ``not_avro``, ``truncated``, ``unknown_schema``,
        ``missing_identifiers``, ``bad_time`` or ``oversized``.
    """
    survey = survey or load_survey("ztf")
    if not data:
        raise AlertDecodeError("empty")
    if not data.startswith(AVRO_MAGIC):
        raise AlertDecodeError("not_avro", f"starts with {bytes(data[:4])!r}")
    if len(data) > max_bytes:
        raise AlertDecodeError("oversized", f"{len(data)} bytes > {max_bytes}")
    try:
        reader = fastavro.reader(io.BytesIO(data))
        records = list(reader)
    except Exception as exc:  # noqa: BLE001 - fastavro raises ValueError, EOFError, struct.error...
        raise AlertDecodeError("truncated", f"{type(exc).__name__}: {exc}") from exc
    if not records:
        raise AlertDecodeError("truncated", "the container holds no record")
    schema = reader.writer_schema
    if not isinstance(schema, dict):  # a primitive ("string") or a union (a list): not a record
        raise AlertDecodeError("unknown_schema", f"writer schema {schema!r}"[:200])
    fields = {f.get("name") for f in schema.get("fields", []) if isinstance(f, dict)}
    if schema.get("name") not in survey.record_names or not survey.required_fields() <= fields:
        raise AlertDecodeError("unknown_schema", f"writer schema {schema.get('name')!r}")
    check_alert(records[0], survey)
    alert = records[0]
    return Decoded(alert, schema.get("version"), len(data))


def check_alert(alert: dict[str, Any], survey: Survey) -> None:
    """Raise :class:`AlertDecodeError` if a decoded record is not a usable alert of ``survey``.

    The same rules, in the same order, as stream2raw's decoder in the JVM, so that
    checkstream and the quarantine give a message the same reason: the survey's main
    records present (``unknown_schema``), its identities set (``missing_identifiers``),
    the identity's copy equal to it (``unknown_schema``), within the survey's range
    (``bad_identifier``), a plausible time (``bad_time``).
    """
    for path in (survey.alert_id, survey.alert_id_check, survey.time["path"]):
        head, _, rest = path.partition(".")
        if rest and not isinstance(alert.get(head), dict):
            raise AlertDecodeError("unknown_schema", f"{head} is {type(alert.get(head)).__name__}, not a record")
    key, obj = survey.alert_key(alert), survey.object_key(alert)
    if not key or not obj:
        shown = " ".join(f"{p}={get_path(alert, p)!r}" for p in (*survey.object_id, survey.alert_id))
        raise AlertDecodeError("missing_identifiers", shown)
    if survey.alert_id_check and get_path(alert, survey.alert_id_check) != key:
        raise AlertDecodeError("unknown_schema", f"{survey.alert_id}={key!r} but "
                                                 f"{survey.alert_id_check}={get_path(alert, survey.alert_id_check)!r}")
    if isinstance(key, int) and key < survey.alert_id_min:
        raise AlertDecodeError("bad_identifier", f"{survey.alert_id}={key!r} (at least {survey.alert_id_min})")
    jd = survey.jd(alert)
    if jd is None or not JD_RANGE[0] <= jd <= JD_RANGE[1]:
        raise AlertDecodeError("bad_time", f"{survey.time['path']}={get_path(alert, survey.time['path'])!r}")


# -- the schema of distributed alerts, from their Spark type ------------------------------

#: Avro's rule for the names of records and fields (Java's parser, which Spark's to_avro uses, enforces it)
_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AVRO_PRIMITIVES = {"string": "string", "binary": "bytes", "boolean": "boolean", "int": "int", "bigint": "long",
                    "smallint": "int", "tinyint": "int", "float": "float", "double": "double"}


def avro_schema(struct: Any, name: str = "alert", namespace: str = "fink") -> dict[str, Any]:
    """The Avro schema (a dict) of rows of the Spark ``struct``: what ``to_avro`` writes and
    what a reader needs to decode the schemaless bytes.

    Every field is a union with ``null`` first (default null), so that a reader may see a
    missing value anywhere; nested records are named after their path (with a number added
    where two paths meet, as ``a.b_c`` and ``a_b.c`` do), so names never clash; timestamps
    are ``long`` with the ``timestamp-micros`` logical type. A field name Avro does not
    allow, or two fields of one name, raise :class:`SchemaError`.
    """
    from pyspark.sql.types import ArrayType, MapType, StructType, TimestampType

    used: set[str] = set()

    def record_name(path: str) -> str:
        name, k = path, 1
        while name in used:
            k += 1
            name = f"{path}_{k}"
        used.add(name)
        return name

    def convert(dtype: Any, path: str) -> Any:
        if isinstance(dtype, StructType):
            counts = Counter(dtype.fieldNames())
            for f, n in counts.items():
                if not _AVRO_NAME.fullmatch(f):
                    raise SchemaError(f"column '{path}_{f}': {f!r} is not a valid Avro name (letters, digits "
                                      "and '_', not starting with a digit): rename or drop the column")
                if n > 1:
                    raise SchemaError(f"column '{path}_{f}': {n} fields named {f!r} in one record")
            return {"type": "record", "name": record_name(path),
                    "fields": [{"name": f.name, "type": ["null", convert(f.dataType, f"{path}_{f.name}")],
                                "default": None} for f in dtype.fields]}
        if isinstance(dtype, ArrayType):
            return {"type": "array", "items": ["null", convert(dtype.elementType, f"{path}_item")]}
        if isinstance(dtype, MapType):
            if dtype.keyType.simpleString() != "string":
                raise SchemaError(f"column '{path}': Avro maps need string keys, not {dtype.keyType.simpleString()}")
            return {"type": "map", "values": ["null", convert(dtype.valueType, f"{path}_value")]}
        if isinstance(dtype, TimestampType):
            return {"type": "long", "logicalType": "timestamp-micros"}
        avro = _AVRO_PRIMITIVES.get(dtype.simpleString())
        if avro is None:
            raise SchemaError(f"column '{path}': no Avro type for Spark type {dtype.simpleString()}")
        return avro

    schema = convert(struct, name)
    schema["namespace"] = namespace
    return schema
