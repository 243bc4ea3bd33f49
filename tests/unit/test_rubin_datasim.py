"""Simulated Rubin alerts: the generator's night in Rubin's schemas, fresh ids for loops."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fink.config import ConfigError
from fink.sim import NightConfig, faults, generate_night
from fink.sim import rubin_alerts as rubin_sim
from fink.sim.simulator import SimulatorConfig, load_messages
from fink.sim.sources import read_messages
from fink.sim.stamp import PASS_OFFSET, Stamper
from fink.survey import description as survey
from fink.survey import wire
from fink.survey.avro import AlertDecodeError

RUBIN = survey.load("rubin")


@pytest.fixture(scope="module")
def night():
    return generate_night(NightConfig(n_objects=30, seed=7, cutouts=False))


@pytest.fixture(scope="module")
def resolver():
    return wire.SchemaResolver(RUBIN)


@pytest.mark.parametrize("version", RUBIN.simulator["versions"])
def test_the_night_in_every_rubin_version_decodes_to_the_same_photometry(night, resolver, version):
    messages = list(rubin_sim.wire_messages(night, version))
    assert len(messages) == len(night.alerts)
    for ztf, data in zip(night.alerts, messages, strict=True):
        decoded = resolver.decode(data)
        assert decoded.schema_version == version
        alert, c = decoded.alert, ztf["candidate"]
        src = alert["diaSource"]
        assert RUBIN.alert_key(alert) == ztf["candid"]
        assert math.isclose(RUBIN.jd(alert), c["jd"], rel_tol=0, abs_tol=1e-6)
        assert src["band"] == {1: "g", 2: "r"}[c["fid"]]
        # the flux in nJy is the magnitude's, with the sign of the difference
        assert math.isclose(rubin_sim.flux_to_mag(abs(src["psfFlux"])), c["magpsf"], abs_tol=1e-4)
        assert (src["psfFlux"] > 0) == (c["isdiffpos"] == "t")
        detections = [p for p in ztf["prv_candidates"] or [] if p.get("candid")]
        assert len(alert["prvDiaSources"] or []) == len(detections)
        assert len(alert["prvDiaForcedSources"] or []) == len(ztf["fp_hists"] or [])
        moving = c["ssnamenr"] is not None
        assert (src["ssObjectId"] is not None) == moving and (src["diaObjectId"] is None) == moving
        assert RUBIN.object_key(alert) is not None


def test_the_generator_is_deterministic_and_the_simulator_picks_it_by_survey(night):
    cfg = SimulatorConfig(source="generator", survey="rubin", n_objects=12, seed=3)
    first, second = load_messages(cfg), load_messages(cfg)
    assert first == second and all(m[:1] == wire.MAGIC for m in first)
    assert int.from_bytes(first[0][1:5], "big") == 1000
    assert cfg.topic_name == "lsst_20261127"
    assert SimulatorConfig(source="generator").topic_name == "ztf_20261127_programid1"
    with pytest.raises(ConfigError, match="writes rubin schema .* not '4.02'"):
        SimulatorConfig.from_mapping({"survey": "rubin", "schema_version": "4.02"})


def test_a_stamped_rubin_alert_changes_every_copy_of_its_id_and_nothing_else(night, resolver):
    data = next(rubin_sim.messages(night, 900))
    stamper = Stamper(data)
    assert stamper.copy(stamper.candid) == data
    alert = resolver.decode(data).alert
    fresh = resolver.decode(stamper.copy(stamper.candid + PASS_OFFSET)).alert
    assert fresh["diaSourceId"] == fresh["diaSource"]["diaSourceId"] == alert["diaSourceId"] + PASS_OFFSET
    assert {**fresh, "diaSourceId": 0, "diaSource": {**fresh["diaSource"], "diaSourceId": 0}, "ssSource": None} == \
        {**alert, "diaSourceId": 0, "diaSource": {**alert["diaSource"], "diaSourceId": 0}, "ssSource": None}


@pytest.mark.shared
def test_real_rubin_files_replay_byte_for_byte(shared_datasim):
    folders = sorted({p.parent for p in (shared_datasim / "rubin").rglob("*.avro")})
    if not folders:
        pytest.skip("no Rubin alerts in ../shared/datasim/rubin")
    for folder in folders:
        files = sorted(folder.glob("*.avro"))
        assert list(read_messages(folder)) == [f.read_bytes() for f in files]


def test_a_file_that_is_neither_format_is_named(tmp_path: Path):
    path = tmp_path / "x.avro"
    path.write_bytes(b"\x07garbage")
    with pytest.raises(Exception, match="neither an Avro container file nor a wire-format message"):
        list(read_messages(path))


def test_a_rubin_alert_is_plotted_in_flux_with_its_cutouts(resolver):
    import matplotlib

    matplotlib.use("Agg")
    from fink.client import plots

    night = generate_night(NightConfig(n_objects=12, seed=7))  # with cutouts
    alerts = [resolver.decode(m).alert for m in rubin_sim.messages(night)]
    alert = next(a for a in alerts if a["prvDiaForcedSources"] and a["cutoutScience"])
    assert survey.detect(alert).name == "rubin"
    lc = plots.flux_curve(alert)
    sources = {(s["midpointMjdTai"], s["band"]) for s in [*(alert["prvDiaSources"] or []), alert["diaSource"]]}
    forced = {(s["midpointMjdTai"], s["band"]) for s in alert["prvDiaForcedSources"]}
    assert len(lc[lc["kind"] == "source"]) == len(sources) and len(lc[lc["kind"] == "forced"]) == len(forced)
    assert lc["mjd"].is_monotonic_increasing
    fig = plots.plot_alert(alert)
    curve, *stamps = fig.axes
    assert curve.get_ylabel() == "difference flux (nJy)"
    assert all(ax.images for ax in stamps)  # the three stamps drawn, none "no stamp"


def test_checkstream_counts_rubin_alerts_and_names_what_is_not_one(night):
    from fink.ops.checkstream import StreamStats

    stats = StreamStats("lsst_test", survey="rubin")
    messages = list(rubin_sim.messages(night))
    for i, m in enumerate([*messages, messages[0], wire.frame(99999, messages[1][5:]), b"\x00\x00"]):
        stats.add(m, 0, i)
    assert stats.alerts == len(messages)
    assert dict(stats.rejected) == {"duplicate": 1, "unknown_schema": 1, "truncated": 1}
    row = stats.latest[-1]
    last = night.alerts[-1]
    assert row["candid"] == last["candid"] and row["band"] in "gr" and row["time"].startswith("2026-11-2")
    assert row["schema"] == "10.0" and row["brightness"] != 0


@pytest.mark.parametrize("kind", sorted(faults.KINDS))
def test_each_fault_kind_is_made_in_the_wire_format_and_reported_as_such(night, resolver, kind):
    """The simulator's malformed messages of a Rubin stream are wire-format frames (a checkstream
    or quarantine reason per kind, as for ZTF's containers)."""
    good = next(iter(rubin_sim.messages(night)))
    bad = faults.make(kind, good, np.random.default_rng(3), "rubin")
    if kind == "duplicate":
        assert bad == good
        return
    with pytest.raises(AlertDecodeError) as info:
        resolver.decode(bad)
    assert info.value.reason == faults.KINDS[kind]
    if kind in ("truncated", "foreign_schema", "bad_time"):
        assert bad[:1] == wire.MAGIC  # still a frame: its reason comes from what follows


def test_the_simulator_mixes_rubin_faults_and_checkstream_counts_them(night):
    from fink.ops.checkstream import StreamStats
    from fink.sim.simulator import _plan

    cfg = SimulatorConfig(source="generator", survey="rubin", faults={k: 0.2 for k in faults.KINDS})
    plan = _plan(list(rubin_sim.messages(night)), cfg, fault_seed=5)
    stats = StreamStats("lsst_test", survey="rubin")
    for i, (_, data) in enumerate(plan):
        stats.add(data, 0, i)
    made = Counter(kind for kind, _ in plan if kind != "alert")
    assert stats.alerts == len(night.alerts) and set(made) == set(faults.KINDS)
    assert dict(stats.rejected) == {faults.KINDS[k]: n for k, n in made.items()}
