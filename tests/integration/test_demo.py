"""`fink demo`, the main job of `make demo`: the sample night through the broker, accounted for."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_demo_runs_the_pipeline_and_its_top_candidates_are_supernovae(kafka_bootstrap, tmp_path):
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "fink.cli", "demo"], capture_output=True, text=True, timeout=580,
                          env={**os.environ, "FINK_HOME": str(home)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "The sample night through the broker" in proc.stdout
    summary = json.loads((home / "reports" / "raw2science" / "summary.json").read_text())
    assert summary["alerts"] == 229 and summary["balanced"]
    assert summary["kept"] + sum(summary["reasons"].values()) == 229
    assert all(m["errors"] == 0 for m in summary["modules"].values())
    truth_csv = (ROOT / "datasim" / "sample_night" / "truth.csv").read_text().splitlines()
    truth = {r["objectId"]: r["class"] for r in csv.DictReader(truth_csv)}
    top = list(csv.DictReader((home / "reports" / "raw2science" / "top_candidates.csv").read_text().splitlines()))
    assert len(top) == 10 and sum(truth[r["objectId"]] == "snia" for r in top) >= 8
    assert (home / "reports" / "raw2science" / "summary.png").stat().st_size > 5000
