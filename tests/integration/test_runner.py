"""`fink start / stop / show` on real background notebook runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fink.processes import process_start_time

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "FINK_HOME": str(tmp_path / "home"), "FINK_NOTEBOOKS": str(ROOT / "tests" / "notebooks")}


def fink(env, *args):
    return subprocess.run([sys.executable, "-m", "fink.ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=180)


def wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_start_show_stop_a_notebook_service(env, tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("kafka_bootstrap: 127.0.0.1:9092\nduration: 120.0\n")
    started = fink(env, "start", "sleeper", "-c", str(conf), "--simulator")
    assert started.returncode == 0, started.stderr
    assert "sleeper: started" in started.stdout

    show = fink(env, "show")
    assert "sleeper" in show.stdout and "fink start <service>" in show.stdout
    record = json.loads((Path(env["FINK_HOME"]) / "run" / "sleeper.json").read_text())
    run_dir = Path(record["run_dir"])
    assert run_dir.parent == Path(env["FINK_HOME"]) / "runs" / "sleeper"

    again = fink(env, "start", "sleeper")
    assert again.returncode == 1 and "already running" in again.stderr

    # the kernel must be executing the loop before we ask it to stop
    assert wait_for((run_dir / "ticks.txt").exists)
    time.sleep(0.5)
    stopped = fink(env, "stop", "sleeper")
    assert stopped.returncode == 0 and "sleeper: stopped cleanly" in stopped.stdout, stopped.stdout
    assert process_start_time(record['pid']) is None  # gone (or a zombie nobody reaps)
    ticks, reason, sim = (run_dir / "ticks.txt").read_text().split()
    assert reason == "stop-file" and sim == "simulator=True" and int(ticks) > 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped"  # it ended by `fink stop`, cleanly
    assert "<html" in (run_dir / "output.html").read_text()[:500].lower()  # the executed notebook as a page
    from fink.runtime import metrics

    (stored,) = metrics.Store(metrics.default_path(Path(env["FINK_HOME"]))).runs()
    assert (stored["service"], stored["state"], stored["run_dir"]) == ("sleeper", "stopped", str(run_dir))
    params = (run_dir / "parameters.yaml").read_text()
    assert "duration: 120.0" in params and "stop_file:" in params
    executed = json.loads((run_dir / "output.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert "no service running" in fink(env, "show").stdout


def test_stop_forces_a_notebook_that_ignores_the_stop_file(env):
    started = fink(env, "start", "stubborn")
    assert started.returncode == 0, started.stderr
    record = json.loads((Path(env["FINK_HOME"]) / "run" / "stubborn.json").read_text())
    stopped = fink(env, "stop", "all", "--timeout", "3")
    assert "stubborn: terminated after timeout" in stopped.stdout or "killed after timeout" in stopped.stdout
    assert wait_for(lambda: process_start_time(record['pid']) is None, 15)
    assert fink(env, "stop", "stubborn").stdout.strip() == "stubborn: not running"


def test_a_notebook_whose_query_dies_is_a_failed_run(env):
    """Before, a run whose streaming query died still ended ``finished`` (the notebook printed
    its totals, papermill exited 0) and ``fink show`` had nothing to say."""
    started = fink(env, "start", "deadquery")
    assert started.returncode == 0, started.stderr
    record = json.loads((Path(env["FINK_HOME"]) / "run" / "deadquery.json").read_text())
    run_dir = Path(record["run_dir"])
    assert wait_for(lambda: (run_dir / "status.json").exists(), 150)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert "QueryFailed" in status["error"] and "an alert this sink cannot take" in status["error"]
    assert wait_for(lambda: process_start_time(record["pid"]) is None, 30)
    show = fink(env, "show").stdout
    line = next(x for x in show.splitlines() if x.strip().startswith("deadquery"))
    assert "failed" in line and "QueryFailed" in line and str(run_dir) in line
    from fink.runtime import metrics

    (stored,) = metrics.Store(metrics.default_path(Path(env["FINK_HOME"]))).runs()
    assert stored["state"] == "failed"


def test_a_run_killed_before_its_process_began_is_recorded_lost(env, tmp_path, monkeypatch):
    """kill -9 right after `fink start` returned, before the background process reached its own record
    of the run (a loaded machine: seconds): the store still has the run, and says it was lost."""
    import signal

    from fink.ops import runner
    from fink.runtime import metrics

    home = Path(env["FINK_HOME"])
    monkeypatch.setenv("FINK_NOTEBOOKS", env["FINK_NOTEBOOKS"])
    run = runner.start("sleeper", None, home=home, params={"duration": 120.0})
    os.killpg(run.pid, signal.SIGKILL)  # the process has not imported what it records the run with yet
    assert wait_for(lambda: process_start_time(run.pid) is None, 30)
    assert not (Path(run.run_dir) / "status.json").exists() and (Path(run.run_dir) / "log.txt").stat().st_size == 0
    assert runner.running(home) == []  # what `fink show` does: the dead run's record is dropped, the run marked
    (stored,) = metrics.Store(metrics.default_path(home)).runs()
    assert (stored["run"], stored["service"], stored["state"]) == (run.run_id, "sleeper", "lost")
    assert stored["error"].startswith("the process ended without")
