"""The alert generator, the schemas, the replay sources and the malformed messages."""

import io
import json
import math
import tarfile
from collections import defaultdict
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from fink.sim import NightConfig, conform, cutouts, faults, generate_night
from fink.sim.sources import SourceError, read_messages
from fink.survey import avro

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasim" / "sample_night"


@pytest.fixture(scope="module")
def night():
    return generate_night(NightConfig(n_objects=40, seed=7))


def same(a, b, path="alert"):
    """Field-for-field equality; Avro floats are 32-bit, so floats compare to float32 precision."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_schemas_are_package_data():
    assert avro.schema_versions("ztf") == ("3.1", "3.2", "3.3", "4.02")
    for version in avro.schema_versions("ztf"):
        schema = avro.parsed_schema(version)
        assert schema["name"] == "ztf.alert"
        names = [f["name"] for f in schema["fields"]]
        assert names[:5] == ["schemavsn", "publisher", "objectId", "candid", "candidate"]
        assert ("fp_hists" in names) == version.startswith("4")


def test_schema_402_has_ztfs_fields_and_types(shared_datasim):
    official = json.loads((shared_datasim / "schemas" / "ztf.alert.v4_02.selfcontained.avsc").read_text())

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("doc", "version")}
        return [strip(v) for v in node] if isinstance(node, list) else node

    assert strip(avro.load_schema("4.02")) == strip(official)


@pytest.mark.parametrize("version", ["4.02", "3.3"])
def test_alerts_validate_and_decode_field_for_field(night, version):
    schema = avro.parsed_schema(version)
    for record, data in zip(night.alerts, night.messages(version), strict=True):
        expected = conform(record, version)
        assert validate(expected, schema, raise_errors=True)
        decoded = avro.decode_container(data)
        assert decoded.schema_version == version
        same(decoded.alert, expected)


def test_same_seed_same_bytes_other_seed_other_bytes(night):
    again = generate_night(NightConfig(n_objects=40, seed=7))
    assert list(again.messages()) == list(night.messages())
    assert again.truth_csv() == night.truth_csv()
    other = generate_night(NightConfig(n_objects=40, seed=8))
    assert [r["candid"] for r in other.alerts] != [r["candid"] for r in night.alerts]


def test_population_covers_every_class_and_truth_covers_every_alert(night):
    truth = {t["objectId"]: t for t in night.truth}
    assert {r["objectId"] for r in night.alerts} == set(truth)
    assert {t["class"] for t in night.truth} == {"snia", "sncc", "varstar", "agn", "sso", "bogus"}
    assert len({r["candid"] for r in night.alerts}) == len(night.alerts)
    jds = [r["candidate"]["jd"] for r in night.alerts]
    assert jds == sorted(jds)


def test_successive_alerts_of_an_object_share_their_history(night):
    by_object = defaultdict(list)
    for r in night.alerts:
        by_object[r["objectId"]].append(r)
    checked = 0
    for alerts in by_object.values():
        for earlier, later in zip(alerts, alerts[1:], strict=False):
            prv = {p["candid"]: p for p in later["prv_candidates"] if p["candid"]}
            assert earlier["candid"] in prv
            assert prv[earlier["candid"]]["magpsf"] == earlier["candidate"]["magpsf"]
            # what the earlier alert listed is listed again, identically, while inside the 30-day window
            again = {p["jd"]: p for p in later["prv_candidates"]}
            window = later["candidate"]["jd"] - 30
            for p in earlier["prv_candidates"] or []:
                if p["jd"] >= window:
                    assert again[p["jd"]] == p
            assert later["candidate"]["ndethist"] > earlier["candidate"]["ndethist"]
            checked += 1
    assert checked > 5


def test_history_has_detections_upper_limits_and_forced_photometry(night):
    persistent = [r for r in night.alerts if r["prv_candidates"]]
    uls = [p for r in persistent for p in r["prv_candidates"] if p["candid"] is None]
    dets = [p for r in persistent for p in r["prv_candidates"] if p["candid"] is not None]
    assert uls and dets
    assert all(p["magpsf"] is None and p["diffmaglim"] > 18 for p in uls)
    for r in persistent:
        assert len(r["fp_hists"]) == len(r["prv_candidates"])
        assert max(p["jd"] for p in r["prv_candidates"]) < r["candidate"]["jd"]
        assert min(p["jd"] for p in r["prv_candidates"]) >= r["candidate"]["jd"] - 30


def test_solar_system_objects_move_and_bogus_look_bogus(night):
    truth = {t["objectId"]: t["class"] for t in night.truth}
    sso = defaultdict(list)
    for r in night.alerts:
        c = r["candidate"]
        if truth[r["objectId"]] == "sso":
            assert c["ssnamenr"] and 0 < c["ssdistnr"] < 5 and c["ssmagnr"] > 10
            assert r["prv_candidates"] is None
            sso[c["ssnamenr"]].append((c["jd"], c["ra"], c["dec"]))
        else:
            assert c["ssnamenr"] is None and c["ssdistnr"] == -999.0
        if truth[r["objectId"]] == "bogus":
            assert c["rb"] < 0.55
        else:
            assert c["rb"] >= 0.55 and c["nbad"] == 0
    moved = [obs for obs in sso.values() if len(obs) > 1]
    assert moved
    for obs in moved:
        assert len({(ra, dec) for _, ra, dec in obs}) == len(obs)


def test_cutouts_are_gzipped_fits_stamps_with_the_source(night):
    r = next(a for a in night.alerts if a["candidate"]["isdiffpos"] == "t" and a["candidate"]["rb"] > 0.55)
    for which in ("Science", "Template", "Difference"):
        stamp = r[f"cutout{which}"]["stampData"]
        assert stamp[:2] == b"\x1f\x8b"
        assert cutouts.from_fits_gz(stamp).shape == (63, 63)
    diff = cutouts.from_fits_gz(r["cutoutDifference"]["stampData"])
    y, x = np.unravel_index(np.argmax(diff), diff.shape)
    assert abs(y - 31) <= 2 and abs(x - 31) <= 2


@pytest.mark.parametrize("kind", sorted(faults.KINDS))
def test_each_fault_kind_is_reported_as_such(night, kind):
    good = next(night.messages())
    bad = faults.make(kind, good, np.random.default_rng(1))
    if kind == "duplicate":
        assert bad == good
        return
    with pytest.raises(avro.AlertDecodeError) as info:
        avro.decode_container(bad)
    assert info.value.reason == faults.KINDS[kind]


def test_missing_identifiers_are_named(night):
    record = conform(night.alerts[0])
    record["objectId"] = ""
    with pytest.raises(avro.AlertDecodeError, match="missing_identifiers"):
        avro.decode_container(avro.encode_container(record))


def test_sources_replay_files_folders_and_tarballs(night, tmp_path):
    messages = list(night.messages())
    night.write(tmp_path / "files")
    assert list(read_messages(tmp_path / "files")) == messages  # one file per alert: replayed as is
    night.write_archive(tmp_path / "archive")
    assert list(read_messages(tmp_path / "archive" / "alerts.avro")) == messages
    with tarfile.open(tmp_path / "night.tar.gz", "w:gz") as tar:
        for path in sorted((tmp_path / "files").glob("*.avro")):
            tar.add(path, arcname=f"night/{path.name}")
    assert list(read_messages(tmp_path / "night.tar.gz")) == messages
    with pytest.raises(SourceError, match="no such file"):
        list(read_messages(tmp_path / "nope"))


def test_committed_sample_night_is_what_the_generator_writes():
    """Regenerating with the defaults gives the committed alerts (cutouts compared as pixels)."""
    assert (SAMPLE / "alerts.avro").stat().st_size < 5_000_000
    with open(SAMPLE / "alerts.avro", "rb") as f:
        committed = list(fastavro.reader(f))
    fresh = generate_night(NightConfig())
    assert len(committed) == len(fresh.alerts) >= 200
    for old, new in zip(committed, (conform(r) for r in fresh.alerts), strict=True):
        for which in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            assert np.array_equal(cutouts.from_fits_gz(old.pop(which)["stampData"]),
                                  cutouts.from_fits_gz(new.pop(which)["stampData"]))
        same(old, new)
    assert (SAMPLE / "truth.csv").read_text() == fresh.truth_csv()


def test_real_ztf_alerts_decode(shared_datasim):
    files = sorted((shared_datasim / "ztf").glob("native-4.02_*/*.avro"))
    files += sorted((shared_datasim / "ztf" / "ztf-avro-alert_data").glob("*.avro"))
    assert len(files) > 500
    versions = set()
    for path in files:
        decoded = avro.decode_container(path.read_bytes())
        assert decoded.alert["candid"] == int(path.stem) or path.parent.name == "ztf-avro-alert_data"
        versions.add(decoded.schema_version)
    assert {"4.02", "3.3"} <= versions


def test_generator_rejects_an_unknown_class():
    with pytest.raises(ValueError, match="unknown class 'kilonova'"):
        from fink.sim.lightcurves import draw

        draw("kilonova", np.random.default_rng(0), 2461000.5, 30)


def test_avro_container_of_real_size_is_not_oversized(night):
    data = next(night.messages())
    assert len(data) < avro.MAX_ALERT_BYTES
    assert io.BytesIO(data).read(4) == avro.AVRO_MAGIC


def _decoded(message: bytes) -> dict:
    return next(fastavro.reader(io.BytesIO(message)))


def test_fresh_copies_change_only_the_candids(shared_datasim):
    from fink.sim.stamp import PASS_OFFSET, fresh_copies, zigzag_varint

    real = list(read_messages(next(shared_datasim.glob("ztf/native-4.02_*"))))[:5]
    sample = list(read_messages(Path(__file__).resolve().parents[2] / "datasim" / "sample_night"))[:5]
    for messages in (real, sample):
        copies = list(fresh_copies(messages, 3 * len(messages)))
        assert copies[: len(messages)] == messages  # the first pass is the source itself
        for i, copy in enumerate(copies):
            original, got = _decoded(messages[i % len(messages)]), _decoded(copy)
            shift = (i // len(messages)) * PASS_OFFSET
            assert got["candid"] == got["candidate"]["candid"] == original["candid"] + shift
            got["candid"], got["candidate"]["candid"] = original["candid"], original["candidate"]["candid"]
            same(got, original)  # every other field, history and cutouts included
        assert len({_decoded(c)["candid"] for c in copies}) == len(copies)
    assert [zigzag_varint(n) for n in (0, -1, 1, 64, 2**62)] == [
        b"\x00", b"\x01", b"\x02", b"\x80\x01", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
