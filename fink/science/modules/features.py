"""Light-curve features per band from an alert's own history, with the ``light-curve`` package.

Notes
-----
The points are the alert's detection plus its previous detections (``prv_candidates``
entries with a magnitude; upper limits have none), per ZTF band (``fid`` 1 = g, 2 = r),
sorted by time, one point per time. Features a band has too few points for are NaN
(``light-curve``'s ``fill_value``), never an error.
"""

from __future__ import annotations

import light_curve as lc
import numpy as np
import pandas as pd

from fink.science.science_api import module

BANDS = {1: "g", 2: "r"}

#: the standard features of ``light-curve`` computed per band (magnitudes, with errors)
EXTRACTOR = lc.Extractor(
    lc.Amplitude(), lc.AndersonDarlingNormal(), lc.BeyondNStd(1.0), lc.Cusum(), lc.Eta(), lc.EtaE(),
    lc.ExcessVariance(), lc.InterPercentileRange(0.25), lc.Kurtosis(), lc.LinearFit(), lc.LinearTrend(),
    lc.MagnitudePercentageRatio(0.4, 0.05), lc.MaximumSlope(), lc.Mean(), lc.Median(),
    lc.MedianAbsoluteDeviation(), lc.MedianBufferRangePercentage(0.1), lc.PercentAmplitude(),
    lc.ReducedChi2(), lc.Skew(), lc.StandardDeviation(), lc.StetsonK(), lc.WeightedMean(), lc.ObservationCount(),
)
FEATURES = [n.lower() for n in EXTRACTOR.names]
OUTPUTS = {f"lc_{name}_{band}": "double" for band in BANDS.values() for name in FEATURES}


def band_points(jd, fid, mag, err, prv_jd, prv_fid, prv_mag, prv_err, band: int):
    """The (t, m, sigma) of one alert in one band: sorted by time, unique times, detections only."""
    def arr(x):
        return np.asarray([] if x is None else x, dtype=np.float64)

    t = np.concatenate([arr(prv_jd), [jd]])
    f = np.concatenate([arr(prv_fid), [fid]])
    m = np.concatenate([arr(prv_mag), [mag]])
    s = np.concatenate([arr(prv_err), [err]])
    keep = (f == band) & np.isfinite(m) & np.isfinite(s) & np.isfinite(t)
    t, m, s = t[keep], m[keep], s[keep]
    t, first = np.unique(t, return_index=True)  # sorted; one point per time
    return t, m[first], s[first]


@module(inputs=["candidate.jd", "candidate.fid", "candidate.magpsf", "candidate.sigmapsf",
                "prv_candidates.jd", "prv_candidates.fid", "prv_candidates.magpsf", "prv_candidates.sigmapsf"],
        outputs=OUTPUTS, version=f"1.0+light-curve-{lc.__version__}")
def lightcurve_features(jd, fid, mag, err, prv_jd, prv_fid, prv_mag, prv_err) -> pd.DataFrame:
    """Every feature of :data:`EXTRACTOR` in g and r, as ``lc_<feature>_<band>``."""
    out = {}
    rows = list(zip(jd, fid, mag, err, prv_jd, prv_fid, prv_mag, prv_err, strict=True))
    for band, name in BANDS.items():
        curves = [band_points(*row, band=band) for row in rows]
        values = EXTRACTOR.many(curves, fill_value=np.nan, sorted=True, check=False) if curves else \
            np.empty((0, len(FEATURES)))
        for k, feature in enumerate(FEATURES):
            out[f"lc_{feature}_{name}"] = values[:, k]
    return pd.DataFrame(out)
