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
import uuid
from pathlib import Path

import fastavro
import light_curve as lc
import numpy as np
import pytest

from fink.config import FinkConfig
from fink.runtime import streaming
from fink.sim import faults
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r
from fink.survey import wire

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


BAD = {"unknown_schema": lambda good: [wire.frame(99999, good[0][5:]), wire.frame(602, good[0][5:])],
       "not_avro": lambda good: [b"\x01" + good[1][1:], b"Obj\x01" + good[0][5:105]],
       # no room for an id; a body cut short (the simulator's fault, as checkstream says)
       "truncated": lambda good: [b"\x00\x00\x00\x03", faults.make("truncated", good[2], np.random.default_rng(1))],
       "bad_time": lambda good: [faults.make("bad_time", good[3], np.random.default_rng(2), "rubin")],
       "empty": lambda good: [b""]}


@pytest.fixture(scope="module")
def rubin_night(spark, kafka_bootstrap, tmp_path_factory, shared_datasim):
    """The real Rubin alerts (and broken frames) through stream2raw, then raw2science with
    the survey's cuts and built-in modules: (data dir, stage totals, expected records, catalogue subset)."""
    expected = rubin_messages(shared_datasim)
    good = [d for _, _, d in expected.values()]
    bad = {reason: make(good) for reason, make in BAD.items()}
    messages = good[:10] + [m for ms in bad.values() for m in ms] + good[10:]
    topic = f"lsst_test_{uuid.uuid4().hex[:8]}"
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=messages, progress=False)
    tmp = tmp_path_factory.mktemp("rubin")
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp))
    raw_cfg = s2r.Stream2RawConfig(topic=topic, survey="rubin", max_offsets_per_trigger=100)
    raw_totals = run(spark, raw_cfg, fink)
    records = {k: r for k, (_, r, _) in expected.items()}
    some = list(records)[::7]
    catalogue = tmp / "catalogue.csv"
    catalogue.write_text("ra,dec,id,type\n" + "".join(
        f"{records[k]['diaSource']['ra']},{records[k]['diaSource']['dec']},cat-{k},Star\n" for k in some))
    science_cfg = r2s.Raw2ScienceConfig(survey="rubin", modules=["builtin"],
                                        module_params={"crossmatch": {"catalogue_path": str(catalogue)}})
    query = streaming.start(r2s.build(spark, science_cfg, fink).trigger(availableNow=True), r2s.QUERY_NAME)
    result = streaming.run_until([query], duration=300.0, poll=0.5)
    science_totals = r2s.reconcile(spark, result.progress[r2s.QUERY_NAME], science_cfg.paths(fink)["science"])
    return {"dir": tmp, "fink": fink, "raw": raw_cfg.paths(fink), "science": science_cfg.paths(fink)["science"],
            "raw_totals": raw_totals, "science_totals": science_totals, "expected": expected, "records": records,
            "messages": messages, "bad": bad, "catalogued": set(some)}


def test_every_rubin_version_is_archived_as_fastavro_decodes_it_and_bad_frames_quarantined(spark, rubin_night):
    night = rubin_night
    totals, expected, bad = night["raw_totals"], night["expected"], night["bad"]
    assert totals["balanced"] and totals["messages"] == len(night["messages"]) and totals["archived"] == len(expected)
    assert totals["reasons"] == {reason: len(ms) for reason, ms in bad.items()}
    assert night["raw"]["raw"].startswith(str(night["dir"] / "rubin"))  # the survey's own folder
    quarantine = spark.read.parquet(night["raw"]["quarantine"]).collect()
    assert sorted(bytes(r["raw"]) for r in quarantine) == sorted(m for ms in bad.values() for m in ms)
    rows = s2r.read_raw(spark, night["raw"]["raw"]).collect()
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


def test_raw2science_applies_the_rubin_cuts_and_modules(spark, rubin_night):
    records, totals = rubin_night["records"], rubin_night["science_totals"]
    assert totals["balanced"] and totals["alerts"] == len(records)
    assert all(m["errors"] == 0 for m in totals["modules"].values()) and len(totals["modules"]) == 4
    out = {r["diaSource"]["diaSourceId"]: r.asDict(recursive=True)
           for r in r2s.read_science(spark, rubin_night["science"])
           .select("diaSource", "roid", "sso_name", "xm_id", "snia_prob", "lc_amplitude_g", "lc_amplitude_r",
                   "lc_stetson_k_i", "lc_linear_trend_r", "lc_observation_count_g").collect()}
    assert set(out) == {k for k, r in records.items() if rubin_cuts_keep(r["diaSource"])}
    assert 0 < len(out) < len(records)
    for key, row in out.items():
        record = records[key]
        ss = record["diaSource"]["ssObjectId"]
        assert (row["roid"] == 3) == bool(ss) and row["sso_name"] == (str(ss) if ss else None)
        assert row["xm_id"] == (f"cat-{key}" if key in rubin_night["catalogued"] else None)
        for band, feature, column in (("g", lc.Amplitude(), "lc_amplitude_g"),
                                      ("r", lc.Amplitude(), "lc_amplitude_r"),
                                      ("i", lc.StetsonK(), "lc_stetson_k_i"),
                                      ("r", lc.LinearTrend(), "lc_linear_trend_r")):
            got = float("nan") if row[column] is None else row[column]  # a missing feature: null or NaN
            assert got == pytest.approx(direct(feature, *points(record, band)), rel=1e-9, nan_ok=True), (key, column)
        assert row["lc_observation_count_g"] == len(points(record, "g")[0])
    assert any(row["snia_prob"] == row["snia_prob"] for row in out.values())  # the classifier ran on some


def test_distribution_sends_what_the_rubin_filters_select_in_the_client_format(spark, rubin_night):
    from fink.stages import distribution as dist

    science = {r["diaSource"]["diaSourceId"]: r.asDict(recursive=True)
               for r in r2s.read_science(spark, rubin_night["science"]).collect()}
    sfx = uuid.uuid4().hex[:6]
    filters = {f"lsst_sso_{sfx}": "fink.filters.builtin:solar_system",
               f"lsst_catalogued_{sfx}": "fink.filters.builtin:catalogued",
               f"lsst_early_{sfx}": "fink.filters.builtin:early_snia_rubin"}
    cfg = dist.DistributionConfig(survey="rubin", filters=filters, filter_params={
        f"lsst_early_{sfx}": {"threshold": 0.0}}, checkpoint=str(rubin_night["dir"] / f"ck_{sfx}"))
    writer = dist.build(spark, cfg, rubin_night["fink"])
    result = streaming.run_until([streaming.start(writer.trigger(availableNow=True), dist.QUERY_NAME)], duration=300)
    totals = dist.reconcile(result.progress[dist.QUERY_NAME], writer.fink_sink)
    assert totals["balanced"] and totals["alerts"] == len(science)
    direct = {f"lsst_sso_{sfx}": {k for k, r in science.items() if r["roid"] == 3},
              f"lsst_catalogued_{sfx}": {k for k, r in science.items() if r["xm_type"] is not None},
              f"lsst_early_{sfx}": {k for k, r in science.items() if (r["snia_prob"] or 0) > 0.0
                                    and 1 + len(r["prvDiaSources"] or []) <= 20}}
    assert all(direct.values())
    got = consume_decoded(list(filters))
    for topic, keys in direct.items():
        assert sorted(a["diaSource"]["diaSourceId"] for a in got[topic]) == sorted(keys), topic
    for alert in got[f"lsst_sso_{sfx}"]:  # the values as the science archive holds them
        want = science[alert["diaSource"]["diaSourceId"]]
        assert alert["diaSource"] == want["diaSource"] and alert["roid"] == 3


def consume_decoded(topics):
    """Every committed alert of ``topics``, decoded as the community client does (the schema in the key)."""
    from test_distribution import consume

    from fink.client import decode

    return {t: [decode(k, v) for k, v in messages]
            for t, messages in consume(topics, **{"isolation.level": "read_committed"}).items()}


def test_the_archive_keys_rubin_alerts_by_object_and_time(spark, rubin_night, hbase_thrift):
    from fink.client.explorer import Archive
    from fink.io.hbase import connect, delete_tables
    from fink.stages import archive

    science = {r["diaSource"]["diaSourceId"]: r.asDict(recursive=True)
               for r in r2s.read_science(spark, rubin_night["science"]).collect()}
    table = f"test_rubin_{uuid.uuid4().hex[:8]}"
    cfg = archive.ArchiveConfig(survey="rubin", table=table, checkpoint=str(rubin_night["dir"] / f"ck_{table}"))
    try:
        writer = archive.build(spark, cfg, rubin_night["fink"])
        result = streaming.run_until([streaming.start(writer.trigger(availableNow=True), archive.QUERY_NAME)],
                                     duration=300)
        totals = archive.reconcile(result.progress[archive.QUERY_NAME], writer.fink_sink.written)
        assert totals["balanced"] and totals["archived"] == len(science)
        assert totals["tags"]["sso"] == sum(r["roid"] == 3 for r in science.values())
        with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
            assert a.count() == len(science)
            for key, r in list(science.items())[:20]:
                obj = r["diaSource"]["diaObjectId"] or r["diaSource"]["ssObjectId"]
                alerts = a.alerts(str(obj), columns=["diaSource"])
                assert key in {d["diaSourceId"] for d in alerts["diaSource"]}, (obj, key)
            pixel = a.cone(r["diaSource"]["ra"], r["diaSource"]["dec"], 1.0, columns=["diaSource"])
            assert key in {d["diaSourceId"] for d in pixel["diaSource"]}
            # the client reads Rubin's fields: ids, light curves in flux, cutouts
            assert a.survey.name == "rubin" and a.key_columns == ["diaSource"]
            ids = a.identify(pixel)
            assert key in set(ids["alert_id"]) and ids["jd"].between(2.45e6, 2.47e6).all()
            by_object: dict = {}
            for rec in sorted(science.values(), key=lambda r: r["diaSource"]["midpointMjdTai"]):
                by_object.setdefault(rec["diaSource"]["diaObjectId"] or rec["diaSource"]["ssObjectId"], []).append(rec)
            # a solar-system source (diaObjectId 0 in the real alerts) is found by its ssObjectId
            movers = [r for r in science.values() if not r["diaSource"]["diaObjectId"]]
            assert movers
            for r in movers:
                found = a.alerts(str(r["diaSource"]["ssObjectId"]), columns=["diaSource"])
                assert r["diaSource"]["diaSourceId"] in {d["diaSourceId"] for d in found["diaSource"]}
            obj, recs = max(by_object.items(), key=lambda kv: len(kv[1]))
            want = {}  # (mjd, band, kind) -> flux, the latest alert's copy, computed here from the records
            for rec in recs:
                for kind, pts in (("source", [*(rec["prvDiaSources"] or []), rec["diaSource"]]),
                                  ("forced", rec["prvDiaForcedSources"] or [])):
                    for p in pts:
                        want[(round(p["midpointMjdTai"], 6), p["band"], kind)] = p["psfFlux"]
            lc = a.light_curve(str(obj))
            got = {(round(m, 6), b, k): f for m, b, k, f in zip(lc["mjd"], lc["band"], lc["kind"], lc["flux"],
                                                                 strict=True)}
            assert got.keys() == want.keys() and all(
                (f == want[k]) or (f != f and want[k] is None) for k, f in got.items())
            assert list(lc["mjd"]) == sorted(lc["mjd"]) and int(lc["detected"].sum()) == sum(
                k[2] == "source" for k in want)
            latest = recs[-1]
            stamps = a.cutouts(str(obj))
            assert stamps == {n: latest[n] for n in ("cutoutDifference", "cutoutScience", "cutoutTemplate")}
            first = recs[0]["diaSource"]["diaSourceId"]
            assert a.cutouts(str(obj), first)["cutoutScience"] == recs[0]["cutoutScience"]
        # the explorer notebook on this Rubin table, headless
        import papermill

        out = rubin_night["dir"] / f"explorer_{table}.ipynb"
        papermill.execute_notebook(str(ROOT / "notebooks" / "archive_explorer.ipynb"), str(out),
                                   parameters={"hbase_thrift": f"{hbase_thrift[0]}:{hbase_thrift[1]}", "table": table,
                                               "tag": "sso", "object_id": str(obj)},
                                   progress_bar=False, cwd=str(ROOT / "notebooks"))
        text = out.read_text()
        assert f"{table} (rubin): {len(science)} alerts" in text and f"{obj}: {len(recs)} alerts" in text
    finally:
        conn = connect(*hbase_thrift)
        delete_tables(conn, table)
        conn.close()


def direct(feature, t, m, e) -> float:
    """``light-curve``'s value of ``feature`` on these points, NaN where it needs more."""
    try:
        return float(feature(t, m, e, sorted=True)[0])
    except ValueError:
        return float("nan")


def rubin_cuts_keep(src: dict) -> bool:
    """The Rubin description's cuts, evaluated directly on a fastavro record."""
    reliability = src.get("reliability")
    return (1.0 if reliability is None else reliability) >= 0.5 and not src.get("isDipole") \
        and not src.get("pixelFlags_bad")


def points(record: dict, band: str):
    """(t, mag, err) of one band: the alert's and its previous sources' positive fluxes, as AB
    magnitudes, one point per time, sorted (independent of the module's code)."""
    seen = {}
    for src in [*(record.get("prvDiaSources") or []), record["diaSource"]]:
        flux, err = src["psfFlux"], src["psfFluxErr"]
        if src["band"] == band and flux is not None and err is not None and flux > 0 and err > 0:
            seen.setdefault(src["midpointMjdTai"], (31.4 - 2.5 * np.log10(flux), 2.5 / np.log(10) * err / flux))
    t = np.array(sorted(seen))
    return t, np.array([seen[x][0] for x in t]), np.array([seen[x][1] for x in t])


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
