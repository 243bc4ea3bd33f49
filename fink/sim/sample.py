"""A minimal deterministic alert stream for smoke runs of the platform.

Each message is an Avro Object Container File holding one record, the way ZTF ships
alerts, but with only a handful of candidate fields. The full survey-like generator
(schemas 3.1-4.02, histories, cutouts) is :mod:`fink.sim`'s job; this module only
gives the platform's smoke test and ``make demo`` something real to move through Kafka
and Spark before that lands.
"""

from __future__ import annotations

import io

import fastavro
import numpy as np

SMOKE_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "smoke_alert", "namespace": "fink.sim.sample",
    "fields": [
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {"name": "jd", "type": "double"},
        {"name": "fid", "type": "int"},
        {"name": "ra", "type": "double"},
        {"name": "dec", "type": "double"},
        {"name": "magpsf", "type": "float"},
        {"name": "sigmapsf", "type": "float"},
    ],
})


def smoke_records(n: int, seed: int = 42, jd0: float = 2461371.5) -> list[dict]:
    """Return ``n`` alert records from ``seed`` (same seed, same records)."""
    rng = np.random.default_rng(seed)
    n_objects = max(1, n // 4)
    ra = rng.uniform(0, 360, n_objects)
    dec = np.degrees(np.arcsin(rng.uniform(-0.5, 1.0, n_objects)))
    base = rng.uniform(16.5, 20.5, n_objects)
    records = []
    for i in range(n):
        k = int(rng.integers(n_objects))
        records.append({
            "objectId": f"ZTF26smk{k:05d}",
            "candid": 3_000_000_000_000_000_000 + seed * 1_000_000 + i,
            "jd": jd0 + 0.15 + i * 0.0005,
            "fid": int(rng.integers(1, 3)),
            "ra": float(ra[k]), "dec": float(dec[k]),
            # float fields are Avro floats: round-trip exactly through 32 bits
            "magpsf": float(np.float32(base[k] + rng.normal(0, 0.3))),
            "sigmapsf": float(np.float32(rng.uniform(0.03, 0.2))),
        })
    return records


def to_container(record: dict) -> bytes:
    """Encode one record as an Avro Object Container File (schema in the header)."""
    buf = io.BytesIO()
    # a fixed sync marker keeps the bytes identical from run to run
    fastavro.writer(buf, SMOKE_SCHEMA, [record], sync_marker=b"fink-smoke-sync!")
    return buf.getvalue()


def from_container(data: bytes) -> dict:
    """Decode one container-file message (the first record)."""
    return next(iter(fastavro.reader(io.BytesIO(data))))
