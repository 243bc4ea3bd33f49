"""archive on the real HBase: every query equals a direct computation over the science
Parquet, a replayed batch doubles nothing, and the stage waits out HBase being down."""

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from conftest import home_of_its_own
from test_distribution import same, sample_science, science_rows  # noqa: F401  (a fixture)

from fink.client.explorer import Archive
from fink.config import FinkConfig
from fink.io.hbase import connect, delete_tables
from fink.runtime import streaming
from fink.stages import archive

pytestmark = [pytest.mark.integration, pytest.mark.spark]

#: what the default tags select, computed directly on a science row
TAGS = {"early_snia": lambda r: (r["snia_prob"] or 0) > 0.5 and (r["candidate"]["ndethist"] or 0) <= 20,
        "sso": lambda r: r["roid"] == 3,
        "catalogued": lambda r: r["xm_type"] is not None}


def run_archive(spark, data_dir, table, checkpoint=None, stop_after=None, on_batch=None, thrift=None, **options):
    """Run the stage (availableNow) and return (reconciled totals, sink); ``thrift``: another HBase's gateway."""
    fink = FinkConfig(data_dir=str(data_dir), **({"hbase_thrift": thrift} if thrift else {}))
    cfg = archive.ArchiveConfig(table=table, checkpoint=checkpoint or str(data_dir / f"ck_{uuid.uuid4().hex}"),
                                **options)
    writer = archive.build(spark, cfg, fink)
    query = streaming.start(writer.trigger(availableNow=True), archive.QUERY_NAME)

    def poll(queries):
        if on_batch is not None:
            on_batch(writer.fink_sink)
        if stop_after is not None and len(writer.fink_sink.written) >= stop_after:
            for q in queries:
                q.stop()

    result = streaming.run_until([query], duration=600, poll=0.2, on_poll=poll)
    return archive.reconcile(result.progress[archive.QUERY_NAME], writer.fink_sink.written), writer.fink_sink


@pytest.fixture(scope="module")
def tables(hbase_thrift):
    """Names for archive tables; each is deleted with its indexes at the end."""
    made = []

    def new():
        made.append(f"test_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    conn = connect(*hbase_thrift)
    for table in made:
        delete_tables(conn, table)
    conn.close()


@pytest.fixture(scope="module")
def archived(spark, sample_science, tables):  # noqa: F811
    table = tables()
    totals, _ = run_archive(spark, sample_science, table)
    rows, ts = science_rows(spark, sample_science)
    return table, totals, rows, ts


def plain(value, timestamps=False):
    """A pandas cell as the plain Python of ``science_rows`` (timestamps in microseconds)."""
    import numpy as np

    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, np.ndarray)):
        return [plain(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return int(value.value // 1000)
    return value.item() if isinstance(value, np.generic) else value


def missing_as_none(value):
    """pandas holds a missing float of a top-level column as NaN: compare those as missing."""
    return None if isinstance(value, float) and math.isnan(value) else value


def records(frame):
    return [{k: missing_as_none(plain(v)) for k, v in row.items()} for row in frame.to_dict("records")]


def test_the_archive_holds_every_alert_as_the_science_parquet_does(archived, hbase_thrift):
    table, totals, rows, ts = archived
    assert totals["balanced"] and totals["alerts"] == totals["archived"] == len(rows) == 207
    assert totals["rows"][f"{table}_pixel"] == totals["rows"][f"{table}_night"] == 207
    direct_tags = {tag: sum(1 for r in rows.values() if pick(r)) for tag, pick in TAGS.items()}
    assert totals["tags"] == direct_tags
    assert totals["rows"][f"{table}_class"] == sum(direct_tags.values())
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        assert a.count() == 207
        assert a.tags() == {t: n for t, n in direct_tags.items() if n}
        nights = a.nights()
        assert sum(nights.values()) == 207
        got = [r for night in nights for r in records(a.night(night))]
    assert sorted(r["candid"] for r in got) == sorted(rows)  # each alert once
    for r in got:  # every field, nested history and timestamps included
        want = {k: missing_as_none(v) for k, v in rows[r["candid"]].items()}
        assert same(r, want), [(k, r.get(k), want.get(k)) for k in {*r, *want} if not same(r.get(k), want.get(k))]


def direct_light_curve(rows, object_id):
    points = {}
    for alert in sorted((r for r in rows.values() if r["objectId"] == object_id), key=lambda r: r["candidate"]["jd"]):
        for p in [*(alert["prv_candidates"] or []), alert["candidate"]]:
            points[(p["jd"], p["fid"])] = (p["jd"], p["fid"], p["magpsf"], p["sigmapsf"], p["diffmaglim"], p["candid"])
    return [points[k] for k in sorted(points)]


def test_light_curves_merge_every_alert_and_keep_each_point_once(archived, hbase_thrift):
    table, _, rows, _ = archived
    objects = sorted({r["objectId"] for r in rows.values()})
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        multi = 0
        for oid in objects:
            lc = a.light_curve(oid)
            cols = lc[["jd", "fid", "magpsf", "sigmapsf", "diffmaglim", "candid"]].astype(object)
            got = [tuple(None if pd.isna(v) else v for v in row) for row in cols.itertuples(index=False)]
            assert got == direct_light_curve(rows, oid), oid
            assert lc["detected"].tolist() == [m is not None for _, _, m, *_ in got]
            multi += sum(1 for r in rows.values() if r["objectId"] == oid) > 1
    assert multi > 0  # some objects have several alerts: their histories were merged


def test_latest_alerts_of_a_class_in_a_time_range(archived, hbase_thrift):
    table, _, rows, _ = archived
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        for tag, pick in TAGS.items():
            tagged = sorted(((r["candidate"]["jd"], r["objectId"], r["candid"]) for r in rows.values() if pick(r)),
                            reverse=True)
            assert a.latest(tag, limit=10)["candid"].tolist() == [c for *_, c in tagged[:10]], tag
            if len(tagged) < 4:
                continue
            start, stop = tagged[-2][0], tagged[1][0]  # an inner range, bounds taken from alert times
            window = [c for jd, _, c in tagged if start <= jd < stop]
            assert a.latest(tag, start=start, stop=stop, limit=1000)["candid"].tolist() == window, tag
        assert a.latest("no_such_tag").empty


def test_scans_of_an_object_and_of_a_tag_are_exact(archived, hbase_thrift):
    """An object named <object>_... and a tag named <tag>_... are not found by the shorter name
    (before the fix, alerts("X") was a prefix scan of "X_", latest("early") the range "early_".."early_~")."""
    table, _, rows, _ = archived
    obj = sorted(r["objectId"] for r in rows.values())[0]
    mine = sorted(r["candid"] for r in rows.values() if r["objectId"] == obj)
    conn = connect(*hbase_thrift)
    main, classes = conn.table(table), conn.table(f"{table}_class")
    (key, cells), *_ = main.scan(row_prefix=f"{obj}_".encode())
    twin = f"{obj}_twin_".encode() + key[len(obj) + 1:]  # an object named <obj>_twin
    tagged = [k for k, _ in classes.scan(row_prefix=b"early_snia_")]
    try:
        main.put(twin, cells)
        with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
            assert sorted(a.alerts(obj)["candid"].tolist()) == mine
            assert tagged and a.latest("early").empty  # the index holds early_snia rows, no "early" tag
            assert len(a.latest("early_snia", limit=1000)) == len(tagged)
    finally:
        main.delete(twin)
        conn.close()


def test_an_alert_the_archive_cannot_key_is_set_aside_and_its_batch_goes_on(spark, sample_science, tables,  # noqa: F811
                                                                              hbase_thrift):
    """Before the fix a row without a key failed its whole batch, at every restart."""
    from pyspark.sql import functions as F

    from fink.stages import raw2science as r2s
    from fink.stages.science_stream import science_schema

    table, fink = tables(), FinkConfig(data_dir=str(sample_science))
    cfg = archive.ArchiveConfig(table=table)
    rows = r2s.read_science(spark, str(sample_science / "science")).orderBy("candid").limit(21).cache()
    bad = rows.first()["candid"]
    batch = rows.withColumn("objectId", F.when(F.col("candid") == bad, F.lit(None)).otherwise(F.col("objectId")))
    sink = archive.prepare(spark, cfg, fink, str(sample_science / "science"), batch.schema, from_files=False)
    # the layout's Arrow schema, worked out without a job, is the one Spark hands such rows over in
    stored = science_schema(spark, str(sample_science / "science"), None, "ztf", from_files=False)
    assert sink.layout.schema == spark.createDataFrame([], stored).drop("night").toArrow().schema
    sink(batch, 0)
    assert (sink.written[0]["alerts"], sink.written[0]["archived"], sink.written[0]["quarantined"]) == (21, 20, 1)
    listed = json.loads((Path(cfg.paths(fink)["quarantine"]) / f"{table}-0000000000.json").read_text())
    assert listed["alerts"] == [{"alert_id": bad, "object_id": None, "reason": "missing_key"}]
    progress = [{"batchId": 0, "observedMetrics": {archive.QUERY_NAME: {"alerts": 21}}}]
    totals = archive.reconcile(progress, sink.written)
    assert totals["balanced"] and (totals["archived"], totals["quarantined"]) == (20, 1)
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        assert a.count() == 20
    rows.unpersist()


def test_cone_search_through_the_pixel_index_equals_a_brute_force_match(archived, hbase_thrift):
    table, _, rows, _ = archived
    alerts = sorted(rows.values(), key=lambda r: r["candid"])
    ra = [r["candidate"]["ra"] for r in alerts]
    dec = [r["candidate"]["dec"] for r in alerts]
    everything = SkyCoord(ra * u.deg, dec * u.deg)
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        for centre, radius in ((alerts[0], 5.0), (alerts[50], 1800.0), (alerts[100], 6 * 3600.0)):
            c = SkyCoord(centre["candidate"]["ra"] * u.deg, centre["candidate"]["dec"] * u.deg)
            seps = c.separation(everything).arcsec
            direct = sorted((s, r["candid"]) for s, r in zip(seps, alerts, strict=True) if s <= radius)
            got = a.cone(centre["candidate"]["ra"], centre["candidate"]["dec"], radius)
            assert sorted(got["candid"]) == sorted(cand for _, cand in direct)
            assert got["separation_arcsec"].tolist() == pytest.approx([s for s, _ in direct], abs=1e-6)
            assert got["separation_arcsec"].is_monotonic_increasing
        with pytest.raises(Exception, match="radius must be positive"):
            a.cone(10.0, 10.0, 0)


def test_cutouts_and_plots_of_an_archived_object(archived, hbase_thrift):
    import matplotlib

    matplotlib.use("Agg")
    table, _, rows, _ = archived
    alert = max(rows.values(), key=lambda r: len(r["prv_candidates"] or []))
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        stamps = a.cutouts(alert["objectId"], alert["candid"])
        for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            assert stamps[name] == alert[name]["stampData"] and stamps[name][:2] == b"\x1f\x8b"
        ax = a.plot_lightcurve(alert["objectId"])
        assert ax.get_title().startswith(alert["objectId"]) and ax.yaxis_inverted()
        axes = a.plot_cutouts(alert["objectId"], alert["candid"])
        assert len(axes) == 3 and all(ax.images for ax in axes)
        with pytest.raises(Exception, match="no alert"):
            a.cutouts("ZTF00nothere")
    with pytest.raises(Exception, match="no archive table"):
        Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", "no_such_archive")


def main_cells(hbase_thrift, table):
    conn = connect(*hbase_thrift)
    try:
        return dict(conn.table(table).scan())
    finally:
        conn.close()


def test_a_batch_replayed_after_a_crash_writes_the_same_cells_and_no_row_twice(
        spark, sample_science, tables, hbase_thrift):  # noqa: F811
    table = tables()
    checkpoint = str(sample_science / f"ck_replay_{uuid.uuid4().hex[:6]}")
    _, first = run_archive(spark, sample_science, table, checkpoint, stop_after=1, max_files_per_trigger=1)
    done = sorted(first.written)
    before = main_cells(hbase_thrift, table)
    assert 0 < len(before) - 1 < 207  # the layout row, and part of the night
    # a crash after HBase took batch `last` but before Spark committed it: the batch runs again
    last = done[-1]
    for name, first_gone in (("offsets", last + 1), ("commits", last)):
        for path in Path(checkpoint, name).iterdir():
            number = path.name.removeprefix(".").removesuffix(".crc")  # the log file and its checksum
            if number.isdigit() and int(number) >= first_gone:
                path.unlink()
    totals, second = run_archive(spark, sample_science, table, checkpoint, max_files_per_trigger=1)
    assert min(second.written) == last  # the replayed batch
    after = main_cells(hbase_thrift, table)
    assert {k: after[k] for k in before} == before  # the replay wrote the same cells
    rows, _ = science_rows(spark, sample_science)
    keys = [k for k in after if k != b"~schema"]
    assert len(keys) == len(rows) == 207  # nothing lost, no row twice
    assert sorted(int(after[k][b"i:candid"]) for k in keys) == sorted(rows)
    with Archive(f"{hbase_thrift[0]}:{hbase_thrift[1]}", table) as a:
        assert sum(a.nights().values()) == 207


def fink_cli(env, *args):
    done = subprocess.run([sys.executable, "-m", "fink.ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def own_hbase(tmp_path):
    """An HBase and its Thrift gateway of the test's own (its FINK_HOME, its ports, a 512 MiB heap), so that
    stopping it leaves the suite's other tests, on the shared one, running beside it. Yields (environment
    of the `fink` commands, (host, thrift port)); stopped at the end (its files stay in the test's folder)."""
    home = tmp_path / "hbase-home"
    thrift = home_of_its_own(home, "hbase", hbase_heap="512m")["thrift_port"]
    env = {**os.environ, "FINK_HOME": str(home)}
    try:
        fink_cli(env, "services", "start", "hbase", "thrift")
        yield env, ("127.0.0.1", thrift)
    finally:
        subprocess.run([sys.executable, "-m", "fink.ops.cli", "services", "stop", "thrift", "hbase"], env=env,
                       capture_output=True, timeout=300)


def test_hbase_down_for_60_s_holds_the_stage_which_then_completes(spark, sample_science, own_hbase):  # noqa: F811
    env, hbase_thrift = own_hbase
    table = "test_outage"
    outage = {}

    def stop_hbase_after_first_batch(sink):
        if sink.written and "stopped" not in outage:
            outage["stopped"] = time.monotonic()
            fink_cli(env, "services", "stop", "hbase")  # as the operator would, from another process

            def back():
                time.sleep(60)
                fink_cli(env, "services", "start", "hbase")
                outage["restarted"] = time.monotonic()

            outage["thread"] = threading.Thread(target=back)
            outage["thread"].start()

    try:
        totals, sink = run_archive(spark, sample_science, table, max_files_per_trigger=1,
                                   on_batch=stop_hbase_after_first_batch, retry_for_s=300,
                                   thrift="{}:{}".format(*hbase_thrift))
    finally:
        if "thread" in outage:
            outage["thread"].join()
    assert "restarted" in outage
    assert totals["retries"] > 0  # the writes waited for HBase
    assert totals["balanced"] and totals["archived"] == 207
    rows, _ = science_rows(spark, sample_science)
    after = main_cells(hbase_thrift, table)
    assert sorted(int(c[b"i:candid"]) for k, c in after.items() if k != b"~schema") == sorted(rows)
