"""The built-in science modules against known answers (no Spark: the functions themselves)."""

import io

import fastavro
import light_curve as lc
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from fink.science.modules import features, sso, xmatch
from fink.science.science_api import load_module, run_module
from fink.sim.sources import read_messages


def columns(records, paths):
    """pandas Series per dotted path, as the stage hands them to a module."""
    out = []
    for path in paths:
        head, _, leaf = path.partition(".")
        if head == "prv_candidates":
            out.append(pd.Series([None if r["prv_candidates"] is None else
                                  np.array([p[leaf] if p[leaf] is not None else np.nan for p in r["prv_candidates"]],
                                           dtype=float) for r in records]))
        elif head == "candidate":
            out.append(pd.Series([r["candidate"].get(leaf) for r in records]))
        else:
            out.append(pd.Series([r[head] for r in records]))
    return out


def test_features_equal_direct_light_curve_calls_on_real_alerts(shared_datasim):
    folders = ["native-4.02_kowalski-2023-10-12", "native-4.02_fink-broker-2023-10"]
    records = [next(fastavro.reader(io.BytesIO(m)))
               for f in folders for m in list(read_messages(shared_datasim / "ztf" / f))[:100]]
    mod = load_module("fink.science.modules.features:lightcurve_features")
    out = run_module(mod, columns(records, mod.inputs))
    assert out["_error"].isna().all()
    checked = 0
    for i, r in enumerate(records):
        for fid, band in features.BANDS.items():
            pts = [(p["jd"], p["magpsf"], p["sigmapsf"]) for p in (r["prv_candidates"] or [])
                   if p["fid"] == fid and p["magpsf"] is not None]
            c = r["candidate"]
            if c["fid"] == fid:
                pts.append((c["jd"], c["magpsf"], c["sigmapsf"]))
            pts = sorted(dict((t, (m, s)) for t, m, s in reversed(pts)).items())  # first point per time
            t = np.array([p[0] for p in pts])
            m = np.array([p[1][0] for p in pts], dtype=float)
            s = np.array([p[1][1] for p in pts], dtype=float)
            amp = out[f"lc_amplitude_{band}"][i]
            stetson = out[f"lc_stetson_k_{band}"][i]
            if len(t) >= 2:
                assert amp == pytest.approx(lc.Amplitude()(t, m, s)[0], rel=1e-9)
                assert stetson == pytest.approx(lc.StetsonK()(t, m, s)[0], rel=1e-9)
                assert out[f"lc_observation_count_{band}"][i] == len(t)
                checked += 1
            if len(t) >= 3:  # a trend needs three points
                assert out[f"lc_linear_trend_{band}"][i] == pytest.approx(lc.LinearTrend()(t, m, s)[0], rel=1e-9)
            elif len(t):
                assert np.isnan(out[f"lc_linear_trend_{band}"][i])
    assert checked >= 40


def test_crossmatch_equals_an_astropy_brute_force_match(tmp_path):
    rng = np.random.default_rng(3)
    n = 20000
    cat = pd.DataFrame({"ra": rng.uniform(10, 12, n), "dec": rng.uniform(-1, 1, n),
                        "id": [f"S{i}" for i in range(n)], "type": rng.choice(["Star", "QSO", "G"], n)})
    path = tmp_path / "cat.parquet"
    cat.to_parquet(path)
    # half the alerts sit near a source, half anywhere
    near = cat.sample(100, random_state=1)
    ra = np.concatenate([near["ra"] + rng.normal(0, 0.5 / 3600, 100), rng.uniform(10, 12, 100)])
    dec = np.concatenate([near["dec"] + rng.normal(0, 0.5 / 3600, 100), rng.uniform(-1, 1, 100)])
    mod = load_module("fink.science.modules.xmatch:crossmatch", {"catalogue_path": str(path), "radius_arcsec": 2.0})
    out = run_module(mod, [pd.Series(ra), pd.Series(dec)])
    coords = SkyCoord(cat["ra"].to_numpy() * u.deg, cat["dec"].to_numpy() * u.deg)
    hits = 0
    for i in range(len(ra)):
        sep = SkyCoord(ra[i] * u.deg, dec[i] * u.deg).separation(coords).to_value(u.arcsec)
        j = int(np.argmin(sep))
        if sep[j] <= 2.0:
            hits += 1
            assert out["xm_id"][i] == cat["id"][j] and out["xm_type"][i] == cat["type"][j]
            assert out["xm_sep_arcsec"][i] == pytest.approx(sep[j], abs=1e-6)
        else:
            assert out["xm_id"][i] is None and np.isnan(out["xm_sep_arcsec"][i])
    assert hits >= 100


def test_crossmatch_without_a_catalogue_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        xmatch.catalogue(str(tmp_path / "none.parquet"))


def test_solar_system_flag_known_answers():
    cases = pd.DataFrame([
        # ssdistnr, ssmagnr, ssnamenr, ndethist, jd, jdstarthist, distpsnr1, sgscore1, expected roid
        (1.2, 18.5, "12345", 1, 100.5, 100.5, 10.0, 0.1, 3),    # known asteroid, matched within 5"
        (12.0, 18.5, "12345", 1, 100.5, 100.5, 10.0, 0.1, 2),   # too far for the ephemeris: a candidate
        (-999.0, -999.0, None, 1, 100.5, 100.49, 10.0, 0.1, 2),  # new tonight, no star: a candidate
        (-999.0, -999.0, "null", 1, 100.5, 100.49, 0.5, 0.99, 0),  # new but on a star
        (-999.0, -999.0, None, 25, 100.5, 40.0, 10.0, 0.1, 0),  # a long history: not a mover
    ], columns=["ssdistnr", "ssmagnr", "ssnamenr", "ndethist", "jd", "jdstarthist", "distpsnr1", "sgscore1", "want"])
    mod = load_module("fink.science.modules.sso:solar_system")
    out = run_module(mod, [cases[c] for c in cases.columns[:-1]])
    assert out["roid"].tolist() == cases["want"].tolist()
    assert out["sso_name"].tolist() == ["12345", None, None, None, None]
    assert sso.solar_system.__fink_module__.version == "1.0"


def test_the_snia_classifier_separates_held_out_simulated_objects():
    """The committed model ranks SN Ia above the rest on a night it was not trained on."""
    import csv

    from sklearn.metrics import roc_auc_score

    from fink.science.modules import classifier
    from fink.sim.generator import NightConfig, generate_night

    night = generate_night(NightConfig(seed=7, n_objects=300, cutouts=False,
                                       mix={"snia": 0.3, "sncc": 0.2, "varstar": 0.2, "agn": 0.2, "bogus": 0.1}))
    truth = {r["objectId"]: r["class"] for r in csv.DictReader(io.StringIO(night.truth_csv()))}
    feats = load_module("fink.science.modules.features:lightcurve_features")
    out = run_module(feats, columns(night.alerts, feats.inputs), fail=True)
    mod = load_module("fink.science.modules.classifier:snia_classifier")
    cols = [out[c] if c in out else columns(night.alerts, [c])[0] for c in mod.inputs]
    prob = run_module(mod, cols, fail=True)["snia_prob"].to_numpy()
    label = np.array([truth[r["objectId"]] == "snia" for r in night.alerts])
    assert 0 < label.sum() < len(label) and np.isfinite(prob).all()
    assert roc_auc_score(label, prob) > 0.9
    card = classifier.load_model()[1]
    assert card["held_out"]["roc_auc"] > 0.9 and card["features"] == classifier.FEATURE_NAMES
