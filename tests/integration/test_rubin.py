"""Rubin through the same stages as ZTF: its description, not branches, makes the difference.

The real Rubin alerts of ``../shared/datasim/rubin`` (schemas 7.4, 9.0 and 10.0, mixed in
one topic) go through stream2raw and come out equal to fastavro's decode of the same body,
field for field; unknown schema ids and broken frames are quarantined with their reason;
ZTF and Rubin run side by side in one Spark session.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import fastavro
import pytest

from fink import streaming, wire
from fink.config import FinkConfig
from fink.simulator import SimulatorConfig, load_messages, replay
from fink.stages import stream2raw as s2r

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.shared]
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "datasim" / "sample_night")


def rubin_messages(shared_datasim: Path) -> dict[int, tuple[str, dict, bytes]]:
    """diaSourceId -> (schema version, fastavro's decode with the file's own schema, bytes)."""
    out = {}
    for schema_file in sorted((shared_datasim / "rubin").rglob("*.avsc")):
        schema = fastavro.parse_schema(json.loads(schema_file.read_text()))
        version = schema_file.parent.parent.name[1:].replace("_", ".")
        for path in sorted(schema_file.parent.glob("*.avro")):
            data = path.read_bytes()
            record = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, None)
            out[record["diaSource"]["diaSourceId"]] = (version, record, data)
    if not out:
        pytest.skip(f"no Rubin alerts under {shared_datasim / 'rubin'}")
    return out


def run(spark, cfg, fink, name=s2r.QUERY_NAME):
    query = streaming.start(s2r.build(spark, cfg, fink).trigger(availableNow=True), name)
    result = streaming.run_until([query], duration=300.0, poll=0.5)
    return s2r.reconcile(spark, result.progress[name], cfg.paths(fink)["raw"])


def same(got, want, path):
    """``got`` (a Spark row as a dict, in the union layout) holds every value of ``want``."""
    if isinstance(want, float):
        assert got == want or (got != got and want != want), path  # exact; NaN equals NaN
    elif isinstance(want, dict):
        for key, value in want.items():
            same(got[key], value, f"{path}.{key}")
    elif isinstance(want, list):
        assert got is not None and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, bytes):
        assert bytes(got) == want, path
    elif isinstance(want, datetime.datetime):  # Spark gives the session's zone (UTC) without tzinfo
        assert got.replace(tzinfo=datetime.UTC) == want, path
    else:
        assert got == want, path


def test_every_rubin_schema_version_is_archived_as_fastavro_decodes_it(fresh_spark, kafka_bootstrap, topic, tmp_path,
                                                                      shared_datasim):
    expected = rubin_messages(shared_datasim)
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=[d for _, _, d in expected.values()],
           progress=False)
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp_path))
    cfg = s2r.Stream2RawConfig(topic=topic, survey="rubin")
    totals = run(fresh_spark, cfg, fink)
    assert totals["balanced"] and totals["quarantined"] == 0 and totals["archived"] == len(expected)
    assert cfg.paths(fink)["raw"].startswith(str(tmp_path / "rubin"))  # the survey's own folder
    rows = s2r.read_raw(fresh_spark, cfg.paths(fink)["raw"]).collect()
    assert len(rows) == len(expected)
    versions = set()
    for row in rows:
        got = row.asDict(recursive=True)
        version, record, _ = expected[got["diaSource"]["diaSourceId"]]
        assert got["schema_version"] == version
        versions.add(version)
        same(got, record, str(got["diaSource"]["diaSourceId"]))
        # a field of another major is null: 7.x has alertId and ssObject, 9.0 MPCORB, 10.0 mpc_orbits
        absent = {"7.4": ["diaSourceId", "ssSource", "mpc_orbits"], "9.0": ["alertId", "mpc_orbits"],
                  "10.0": ["alertId", "ssObject", "MPCORB"]}[version]
        assert all(got[f] is None for f in absent), absent
    assert versions == {"7.4", "9.0", "10.0"}


def test_unknown_ids_and_broken_frames_are_quarantined_and_the_rest_archived(fresh_spark, kafka_bootstrap, topic,
                                                                           tmp_path, shared_datasim):
    good = [d for _, _, d in rubin_messages(shared_datasim).values()][:30]
    body = good[0][5:]
    bad = {"unknown_schema": [wire.frame(99999, body), wire.frame(602, body)],
           "not_avro": [b"\x01" + good[1][1:], b"Obj\x01" + body[:100]],
           "truncated": [b"\x00\x00\x00\x03"],
           "empty": [b""]}
    messages = good[:10] + [m for ms in bad.values() for m in ms] + good[10:]
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=messages, progress=False)
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp_path))
    cfg = s2r.Stream2RawConfig(topic=topic, survey="rubin", max_offsets_per_trigger=15)
    totals = run(fresh_spark, cfg, fink)
    assert totals["balanced"] and totals["messages"] == len(messages)
    assert totals["archived"] == 30
    assert totals["reasons"] == {reason: len(ms) for reason, ms in bad.items()}
    quarantine = fresh_spark.read.parquet(cfg.paths(fink)["quarantine"]).collect()
    assert sorted(bytes(r["raw"]) for r in quarantine) == sorted(m for ms in bad.values() for m in ms)


def test_ztf_and_rubin_run_side_by_side_in_one_session(fresh_spark, kafka_bootstrap, topic, tmp_path, shared_datasim):
    expected = rubin_messages(shared_datasim)
    ztf_topic, rubin_topic = f"{topic}_ztf", f"{topic}_lsst"
    replay(SimulatorConfig(topic=ztf_topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    replay(SimulatorConfig(topic=rubin_topic), kafka_bootstrap, messages=[d for _, _, d in expected.values()],
           progress=False)
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp_path))
    ztf = s2r.Stream2RawConfig(topic=ztf_topic)
    rubin = s2r.Stream2RawConfig(topic=rubin_topic, survey="rubin")
    raw = {"ztf": ztf.paths(fink)["raw"], "rubin": rubin.paths(fink)["raw"]}
    assert raw["ztf"] != raw["rubin"]
    queries = [streaming.start(s2r.build(fresh_spark, c, fink).trigger(processingTime="1 second"), name)
               for c, name in ((ztf, "stream2raw_ztf"), (rubin, "stream2raw_rubin"))]
    done = {}

    def both_done(qs):
        for name, q in zip(("ztf", "rubin"), qs, strict=True):
            done[name] = sum(p["numInputRows"] for p in map(json.loads, (r.json for r in q.recentProgress)))
        if done == {"ztf": 229, "rubin": len(expected)} and all(not q.status["isDataAvailable"] for q in qs):
            for q in qs:
                q.stop()

    streaming.run_until(queries, duration=240.0, poll=2.0, on_poll=both_done)
    assert done == {"ztf": 229, "rubin": len(expected)}
    ztf_rows = s2r.read_raw(fresh_spark, raw["ztf"])
    rubin_rows = s2r.read_raw(fresh_spark, raw["rubin"])
    assert ztf_rows.count() == ztf_rows.select("candid").distinct().count() == 229
    assert rubin_rows.count() == rubin_rows.select("diaSource.diaSourceId").distinct().count() == len(expected)
    assert "candid" not in rubin_rows.columns and "diaSource" not in ztf_rows.columns
