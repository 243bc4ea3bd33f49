"""The built-in science modules on Rubin's columns: the same science, Rubin's fields.

Rubin measures difference-image fluxes in nJy, in six bands (``u g r i z y``), and
associates sources with known solar-system objects itself (``diaSource.ssObjectId``).
These modules read those fields and give the outputs of their ZTF counterparts, under
the same names, so that filters, the archive and the client read both surveys alike:

- :func:`lightcurve_features`: ``lc_<feature>_<band>`` per band, on AB magnitudes of the
  positive fluxes of the alert and its previous sources (``prvDiaSources``);
- :func:`snia_classifier`: the same model as ZTF's, on the g and r features;
- :func:`solar_system`: ``roid`` 3 when Rubin associated the source with a known object,
  2 for a lone first detection with no object, 0 otherwise;
- :func:`crossmatch`: the catalogue cross-match on ``diaSource.ra/dec``.

The survey description (``fink/data/surveys/rubin.yaml``, ``modules``) lists them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fink.science.modules import classifier, features, xmatch
from fink.science.science_api import module

BANDS = ("u", "g", "r", "i", "z", "y")
NJY_ZP = 31.4  # the AB magnitude of 1 nJy
MJD_TO_JD = 2400000.5
OUTPUTS = {f"lc_{name}_{band}": "double" for band in BANDS for name in features.FEATURES}


def magnitudes(flux, err):
    """AB magnitudes and their errors of fluxes in nJy (NaN where the flux is not positive)."""
    flux = np.asarray(flux, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = flux > 0
        mag = np.where(positive, NJY_ZP - 2.5 * np.log10(np.where(positive, flux, 1.0)), np.nan)
        sigma = np.where(positive, 1.0857362047581294 * err / np.where(positive, flux, 1.0), np.nan)
    return mag, sigma


def band_points(mjd, band, flux, err, prv_mjd, prv_band, prv_flux, prv_err, which: str):
    """The (t, m, sigma) of one alert in band ``which``: sorted, unique times, positive fluxes only."""
    def arr(x, dtype=np.float64):
        return np.asarray([] if x is None else list(x), dtype=dtype)

    t = np.concatenate([arr(prv_mjd), [mjd if mjd is not None else np.nan]])
    b = np.concatenate([arr(prv_band, object), np.asarray([band], dtype=object)])
    m, s = magnitudes(np.concatenate([arr(prv_flux), [np.nan if flux is None else flux]]),
                      np.concatenate([arr(prv_err), [np.nan if err is None else err]]))
    keep = (b == which) & np.isfinite(m) & np.isfinite(s) & (s > 0) & np.isfinite(t)
    t, m, s = t[keep], m[keep], s[keep]
    t, first = np.unique(t, return_index=True)
    return t, m[first], s[first]


HISTORY = ["diaSource.midpointMjdTai", "diaSource.band", "diaSource.psfFlux", "diaSource.psfFluxErr",
           "prvDiaSources.midpointMjdTai", "prvDiaSources.band", "prvDiaSources.psfFlux", "prvDiaSources.psfFluxErr"]


@module(inputs=HISTORY, outputs=OUTPUTS, version=f"1.0+light-curve-{features.lc.__version__}")
def lightcurve_features(mjd, band, flux, err, prv_mjd, prv_band, prv_flux, prv_err) -> pd.DataFrame:
    """Every feature of :data:`fink.science.modules.features.EXTRACTOR` per Rubin band."""
    out = {}
    rows = list(zip(mjd, band, flux, err, prv_mjd, prv_band, prv_flux, prv_err, strict=True))
    for which in BANDS:
        curves = [band_points(*row, which=which) for row in rows]
        values = features.EXTRACTOR.many(curves, fill_value=np.nan, sorted=True, check=False) if curves else \
            np.empty((0, len(features.FEATURES)))
        for k, feature in enumerate(features.FEATURES):
            out[f"lc_{feature}_{which}"] = values[:, k]
    return pd.DataFrame(out)


@module(inputs=[*classifier.FEATURE_COLUMNS, "diaSource.midpointMjdTai", "prvDiaSources.midpointMjdTai"],
        outputs={"snia_prob": "double"}, version=classifier.MODEL_VERSION)
def snia_classifier(*columns: pd.Series) -> pd.Series:
    """Probability that the object is a SN Ia, from its g and r features (ZTF's model)."""
    n = len(classifier.FEATURE_COLUMNS)
    mjd, prv = columns[n], columns[n + 1]
    jd = pd.to_numeric(mjd, errors="coerce").to_numpy(float) + MJD_TO_JD
    first = np.array([min([*(p if p is not None else []), m]) if m is not None and np.isfinite(m) else np.nan
                      for m, p in zip(mjd, prv, strict=True)], dtype=float) + MJD_TO_JD
    count = np.array([len(p) + 1 if p is not None else 1 for p in prv], dtype=float)
    return classifier.snia_classifier(*columns[:n], pd.Series(jd), pd.Series(first), pd.Series(count))


@module(inputs=["diaSource.ssObjectId", "diaSource.diaObjectId", "prvDiaSources.midpointMjdTai"],
        outputs={"roid": "int", "sso_name": "string"}, version="1.0")
def solar_system(ss_object, dia_object, prv_mjd) -> pd.DataFrame:
    """``roid`` 3 (associated by Rubin with a known solar-system object), 2 (a first detection
    with neither a diaObject nor a history) or 0; the known object's id as its name."""
    ss = pd.to_numeric(ss_object, errors="coerce")
    known = (ss.notna() & (ss != 0)).to_numpy(bool)
    obj = pd.to_numeric(dia_object, errors="coerce")
    alone = (obj.isna() | (obj == 0)).to_numpy(bool)
    new = np.array([p is None or len(p) == 0 for p in prv_mjd], dtype=bool)
    roid = np.where(known, 3, np.where(alone & new, 2, 0))
    names = pd.Series([str(int(v)) if k else None for v, k in zip(ss.fillna(0), known, strict=True)], dtype=object)
    return pd.DataFrame({"roid": roid, "sso_name": names})


@module(inputs=["diaSource.ra", "diaSource.dec"],
        outputs={"xm_id": "string", "xm_type": "string", "xm_sep_arcsec": "double"}, version="1.1")
def crossmatch(ra, dec, *, catalogue_path: str = "", radius_arcsec: float = 1.5) -> pd.DataFrame:
    """The nearest catalogue source within ``radius_arcsec`` (:func:`fink.science.modules.xmatch.crossmatch`)."""
    return xmatch.crossmatch(ra, dec, catalogue_path=catalogue_path, radius_arcsec=radius_arcsec)
