"""Train the early SN Ia classifier on the generator's labelled light curves.

Simulates nights (no cutouts: only light curves matter), computes each alert's features
with the same module code the stream runs, fits scikit-learn's histogram gradient boosting
(SN Ia against every other class), and measures the ROC AUC on objects of held-out nights
it never saw. Writes ``fink/data/models/snia-<version>.joblib`` and its card
``snia-<version>.json``::

    .venv/bin/python tools/train_classifier.py [--nights 10] [--objects 800]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from fink.science.modules import classifier
from fink.science.science_api import load_module, run_module
from fink.sim.generator import NightConfig, generate_night

ROOT = Path(__file__).resolve().parents[1]
MIX = {"snia": 0.3, "sncc": 0.2, "varstar": 0.15, "agn": 0.15, "sso": 0.1, "bogus": 0.1}


def column(records: list[dict], path: str) -> pd.Series:
    head, _, leaf = path.partition(".")
    if head == "prv_candidates":
        return pd.Series([None if r["prv_candidates"] is None else
                          np.array([p[leaf] if p[leaf] is not None else np.nan for p in r["prv_candidates"]],
                                   dtype=float) for r in records])
    return pd.Series([r["candidate"][leaf] for r in records])


def night_table(seed: int, n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1 = SN Ia) of every alert of one simulated night."""
    night = generate_night(NightConfig(night="20261127", seed=seed, n_objects=n_objects, mix=MIX, cutouts=False))
    labels = {row["objectId"]: row["class"] for row in csv.DictReader(io.StringIO(night.truth_csv()))}
    features = load_module("fink.science.modules.features:lightcurve_features")
    out = run_module(features, [column(night.alerts, c) for c in features.inputs], fail=True)
    cols = [out[c] if c in out else column(night.alerts, c) for c in classifier.INPUTS]
    x = classifier.feature_matrix(cols)
    y = np.array([labels[r["objectId"]] == "snia" for r in night.alerts], dtype=int)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=10, help="simulated nights; the last fifth is held out")
    parser.add_argument("--objects", type=int, default=800, help="objects per night")
    args = parser.parse_args()
    t0 = time.perf_counter()
    tables = [night_table(1000 + k, args.objects) for k in range(args.nights)]
    held = max(1, args.nights // 5)
    x_train = np.vstack([t[0] for t in tables[:-held]])
    y_train = np.concatenate([t[1] for t in tables[:-held]])
    x_test = np.vstack([t[0] for t in tables[-held:]])
    y_test = np.concatenate([t[1] for t in tables[-held:]])
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.08, random_state=0)
    model.fit(x_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    version = classifier.MODEL_VERSION
    folder = ROOT / "fink" / "data" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / f"snia-{version}.joblib", compress=3)
    card = {"version": version, "model": "sklearn.ensemble.HistGradientBoostingClassifier",
            "sklearn": sklearn.__version__, "features": classifier.FEATURE_NAMES,
            "training": {"nights": args.nights - held, "objects_per_night": args.objects, "seeds_from": 1000,
                         "alerts": int(len(y_train)), "snia_fraction": round(float(y_train.mean()), 3), "mix": MIX},
            "held_out": {"nights": held, "alerts": int(len(y_test)), "roc_auc": round(float(auc), 4)},
            "seconds": round(time.perf_counter() - t0, 1)}
    (folder / f"snia-{version}.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps(card["held_out"] | {"train_alerts": card["training"]["alerts"], "seconds": card["seconds"]}))


if __name__ == "__main__":
    main()
