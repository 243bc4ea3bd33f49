"""Malformed messages of each kind, for the reliability work (quarantine, checkstream).

Each kind maps to the reason :func:`fink.survey.avro.decode_container` or
:func:`fink.survey.wire.decode` (or a duplicate check) gives for it, so a test can send a known
mix and expect exact counts back. A kind is built in the good message's own format: an
Avro container (ZTF) or the Confluent wire format (Rubin).
"""

from __future__ import annotations

import functools
import io

import fastavro
import numpy as np

from fink.survey.avro import MAX_ALERT_BYTES

#: fault kind -> the reason a reader reports
KINDS = {
    "truncated": "truncated",
    "random": "not_avro",
    "empty": "empty",
    "foreign_schema": "unknown_schema",
    "oversized": "oversized",
    "bad_time": "bad_time",
    "duplicate": "duplicate",
}

FOREIGN_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "weather", "namespace": "not.an.alert",
    "fields": [{"name": "station", "type": "string"}, {"name": "temperature", "type": "double"}]})


#: a schema id no survey publishes (major 999): unknown locally and to any registry
FOREIGN_SCHEMA_ID = 99_999


def make(kind: str, good: bytes, rng: np.random.Generator, survey: str = "ztf") -> bytes:
    """A malformed message of ``kind``, built from the good message ``good`` where it helps
    (``survey``: whose schemas a wire-format message's id refers to)."""
    if good[:1] == b"\x00" and kind not in ("random", "empty", "duplicate"):
        return _make_framed(kind, good, rng, survey)
    if kind == "truncated":
        return good[: int(rng.integers(16, len(good) - 1))]
    if kind == "random":
        data = bytearray(rng.bytes(int(rng.integers(100, 60_000))))
        data[0] = 0x5A  # never the 'O' of the Avro magic
        return bytes(data)
    if kind == "empty":
        return b""
    if kind == "foreign_schema":
        buf = io.BytesIO()
        fastavro.writer(buf, FOREIGN_SCHEMA, [{"station": "Palomar", "temperature": float(rng.normal(12, 3))}])
        return buf.getvalue()
    if kind == "oversized":
        # a valid alert in a container whose header carries 1 MiB of padding metadata
        reader = fastavro.reader(io.BytesIO(good))
        records = list(reader)
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(reader.writer_schema), records,
                        metadata={"padding": "x" * (MAX_ALERT_BYTES + 1024)})
        return buf.getvalue()
    if kind == "bad_time":
        # a well-formed alert whose observation time is NaN or absurd: no night to file it under
        reader = fastavro.reader(io.BytesIO(good))
        records = list(reader)
        for r in records:
            r["candidate"]["jd"] = [float("nan"), 1e20, -1e20, 0.0][int(rng.integers(0, 4))]
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(reader.writer_schema), records, codec=reader.codec)
        return buf.getvalue()
    if kind == "duplicate":
        return good
    raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(KINDS)})")


@functools.cache
def _resolver(survey: str):
    """One schema resolver per survey for every fault made (ids resolved once)."""
    from fink.survey import description as surveys
    from fink.survey import wire

    return wire.SchemaResolver(surveys.load(survey))


def _make_framed(kind: str, good: bytes, rng: np.random.Generator, survey: str) -> bytes:
    """:func:`make` for a message in the Confluent wire format (zero byte, schema id, body)."""
    from fink.survey import description as surveys
    from fink.survey import wire

    if kind == "truncated":  # the body cut short: its schema cannot read it to the end
        return good[: int(rng.integers(6, len(good) - 1))]
    if kind == "foreign_schema":
        return wire.frame(FOREIGN_SCHEMA_ID, good[5:])
    if kind == "oversized":  # a valid alert followed by padding beyond the limit
        return good + bytes(MAX_ALERT_BYTES + 1024 - len(good))
    if kind == "bad_time":
        resolver = _resolver(survey)
        schema_id, _ = wire.unframe(good)
        record = resolver.decode(good).alert
        *parents, leaf = resolver.survey.time["path"].split(".")
        holder = surveys.get_path(record, ".".join(parents)) if parents else record
        holder[leaf] = [float("nan"), 1e20, -1e20, -2e6][int(rng.integers(0, 4))]
        return wire.encode(record, schema_id, resolver.schema(schema_id))
    raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
