"""`fink demo`, the main job of `make demo`: the whole broker on the sample night, accounted for."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fink.ops import runner

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]


def processes_of(home: Path) -> list[str]:
    """Live processes started for ``home`` (its path in their command line or FINK_HOME)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            env = proc.info["environ"] or {}
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, OSError):
            continue
        if env.get("FINK_HOME") == str(home) or str(home) in cmd:
            found.append(f"{proc.info['pid']}: {cmd[:200]}")
    return found


@pytest.mark.timeout(660)
def test_demo_runs_the_whole_broker_accounts_for_every_alert_and_leaves_nothing_running(kafka_bootstrap, tmp_path):
    home = tmp_path / "home"
    # `make demo` itself (its venv and JVM steps are already done here, so it goes straight to the demo);
    # the services of the suite are running: the demo uses them and leaves them running
    proc = subprocess.run(["make", "-s", "demo", f"VENV={Path(sys.executable).parents[1]}"], capture_output=True,
                          text=True, timeout=620, env={**os.environ, "FINK_HOME": str(home)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "The sample night through the broker" in proc.stdout and "all accounted for" in proc.stdout

    # every alert accounted for, stage by stage (what the demo printed comes from this file)
    report = home / "reports" / "demo"
    demo = json.loads((report / "demo.json").read_text())
    stages = demo["stages"]
    assert demo["published"] == 229
    assert stages["stream2raw"]["in"] == 229 == stages["stream2raw"]["out"] + stages["stream2raw"]["quarantined"]
    r2s = stages["raw2science"]
    assert r2s["in"] == stages["stream2raw"]["out"] and r2s["in"] == r2s["out"] + r2s["rejected"]
    assert r2s["out"] == 207  # 14 rejected by nbad, 8 by rb (the sample night's known bad detections)
    assert stages["distribution"]["in"] == r2s["out"] == stages["archive"]["in"] == stages["archive"]["out"]
    for name in ("stream2raw", "raw2science", "distribution", "archive"):
        assert stages[name]["latency_p50_s"] is not None and 0 < stages[name]["latency_p50_s"] < 300, name
    client = demo["client"]
    assert client["received"] == client["expected"] > 0
    # each lane timed on its way from the input topic to a topic of it
    for lane in ("micro-batch", "real-time"):
        timed = client["lanes"][lane]
        assert timed["alerts"] > 0 and 0 < timed["latency_p50_s"] < 300, lane
    assert "real-time lane" in proc.stdout

    # the client's most likely SN Ia, and raw2science's top candidates, are true SN Ia
    truth_csv = (ROOT / "datasim" / "sample_night" / "truth.csv").read_text().splitlines()
    truth = {r["objectId"]: r["class"] for r in csv.DictReader(truth_csv)}
    assert truth[demo["best_candidate"]["objectId"]] == "snia"
    top = list(csv.DictReader((report / "top_candidates.csv").read_text().splitlines()))
    assert len(top) == 10 and sum(truth[r["objectId"]] == "snia" for r in top) >= 8

    # the night's report: the dashboard's page and plots, and its own accounts agree
    summary = json.loads((report / "summary.json").read_text())
    assert summary["published"] == 229
    four = ("stream2raw", "raw2science", "distribution", "archive")  # besides, the queries' own rows
    assert {k: summary["stages"][k]["out"] for k in four} == {k: stages[k]["out"] for k in four}
    assert {r["state"] for r in summary["runs"]} == {"stopped", "finished"}
    html = (report / "dashboard.html").read_text()
    assert html.count("<img") >= 2 and "raw2science" in html
    for png in ("rates.png", "latency.png", "best_candidate.png"):
        assert (report / png).stat().st_size > 10_000, png

    # nothing left running: no service record, no process of this FINK_HOME
    assert runner.running(home) == []
    assert processes_of(home) == []
