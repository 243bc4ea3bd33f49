"""An early SN Ia classifier: probability that an alert's object is a type Ia supernova.

Notes
-----
A gradient-boosted tree model (scikit-learn's ``HistGradientBoostingClassifier``, which
takes missing features as they are: a young light curve has few) over the light-curve
features of :mod:`fink.science.modules.features` plus the colour and the age of the
detection history. It is trained by ``tools/train_classifier.py`` on the generator's
labelled light curves and saved as ``fink/data/models/snia-<version>.joblib`` with a JSON
card beside it (training set, held-out ROC AUC, library versions). The model is loaded
once per Python worker.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from fink.science.science_api import ScienceModuleError, module

MODEL_VERSION = "1.0"
PER_BAND = ["amplitude", "linear_trend", "linear_trend_sigma", "stetson_k", "mean", "standard_deviation", "skew",
            "maximum_slope", "observation_count", "chi2", "beyond_1_std", "linear_fit_slope"]
FEATURE_COLUMNS = [f"lc_{name}_{band}" for band in ("g", "r") for name in PER_BAND]
INPUTS = [*FEATURE_COLUMNS, "candidate.jd", "candidate.jdstarthist", "candidate.ndethist"]
FEATURE_NAMES = [*FEATURE_COLUMNS, "color_g_r", "age_days", "ndethist"]


def feature_matrix(columns: list[pd.Series]) -> np.ndarray:
    """The model's inputs from the module's input columns (in :data:`INPUTS` order)."""
    x = np.column_stack([pd.to_numeric(c, errors="coerce").to_numpy(float) for c in columns])
    n = len(FEATURE_COLUMNS)
    lcs, jd, start, ndet = x[:, :n], x[:, n], x[:, n + 1], x[:, n + 2]
    mean_g, mean_r = lcs[:, PER_BAND.index("mean")], lcs[:, len(PER_BAND) + PER_BAND.index("mean")]
    return np.column_stack([lcs, mean_g - mean_r, jd - start, ndet])


def model_path(version: str = MODEL_VERSION):
    return resources.files("fink") / "data" / "models" / f"snia-{version}.joblib"


@lru_cache(maxsize=2)
def load_model(version: str = MODEL_VERSION):
    """The fitted model and its card (once per process)."""
    import joblib

    path = model_path(version)
    if not path.is_file():
        raise ScienceModuleError(f"SN Ia model {path} not found: run tools/train_classifier.py")
    card = json.loads((path.parent / f"snia-{version}.json").read_text())
    if card["features"] != FEATURE_NAMES:
        raise ScienceModuleError(f"SN Ia model {path}: trained on other features; retrain it")
    with path.open("rb") as f:
        return joblib.load(f), card


@module(inputs=INPUTS, outputs={"snia_prob": "double"}, version=MODEL_VERSION)
def snia_classifier(*columns: pd.Series) -> pd.Series:
    """Probability that the object is a SN Ia (NaN without any detection in g or r)."""
    model, _ = load_model()
    x = feature_matrix(list(columns))
    prob = np.full(len(x), np.nan)
    usable = ~np.isnan(x[:, : len(FEATURE_COLUMNS)]).all(axis=1)
    if usable.any():
        prob[usable] = model.predict_proba(x[usable])[:, 1]
    return pd.Series(prob)
