"""Malformed messages of each kind, for the reliability work (quarantine, checkstream).

Each kind maps to the reason :func:`fink.avro.decode_container` (or a duplicate check)
gives for it, so a test can send a known mix and expect exact counts back.
"""

from __future__ import annotations

import io

import fastavro
import numpy as np

from fink.avro import MAX_ALERT_BYTES

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


def make(kind: str, good: bytes, rng: np.random.Generator) -> bytes:
    """A malformed message of ``kind``, built from the good message ``good`` where it helps."""
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
