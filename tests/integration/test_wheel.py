"""The wheel, installed outside the checkout: everything the broker reads at run time is in it.

The wheel is built from this clone, installed with its dependencies into a fresh virtualenv in
a temporary folder (no editable install, no ``PYTHONPATH``), and run from another folder: the
package's data through ``importlib.resources``, ``fink init --project`` copying the notebooks,
the smoke notebook headless and ``fink demo`` end to end against the suite's local services.
The dependencies come from pip's cache, constrained to the versions of ``constraints.txt``.
Then the same wheel runs the pipeline on a Spark standalone cluster (below).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import outside_env, pipeline_params
from test_operations import consume, hbase_candids, science_alerts

from fink.config import PROJECT_FILES, ServicesConfig, spark_auth_file
from fink.io import hbase
from fink.ops import runner, services

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.wheel]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)  # the first to build and install the wheel
def test_the_installed_package_is_the_wheel_and_carries_its_data(wheel_venv, tmp_path):
    code = ("import fink, importlib.metadata as m\n"
            "from fink.config import project_dir\n"
            "print(fink.__file__)\n"
            "print(m.distribution('fink-broker-nb').read_text('direct_url.json') or '')\n"
            "print(project_dir())\n")
    proc = subprocess.run([str(wheel_venv / "python"), "-c", code], capture_output=True, text=True,
                          env=outside_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    package, direct_url, project = proc.stdout.splitlines()
    site = wheel_venv.parent / "lib"
    assert Path(package).is_relative_to(site), package  # not the clone
    assert '"editable"' not in direct_url
    # the notebooks, conf files and sample night of the clone, byte for byte
    assert Path(project) == Path(package).parent / "data" / "project"
    for folder, pattern in PROJECT_FILES.items():
        ours = sorted(p.name for p in (ROOT / folder).glob(pattern))
        assert ours and sorted(p.name for p in (Path(project) / folder).glob(pattern)) == ours, folder
        for name in ours:
            assert (Path(project) / folder / name).read_bytes() == (ROOT / folder / name).read_bytes(), name
    # the ZTF schemas and survey description as package data: the installed package decodes the
    # bundled night (each message a container naming a schema the wheel carries) and checks each alert
    decode = ("from fink.config import project_dir\n"
              "from fink.sim.simulator import SimulatorConfig, load_messages\n"
              "from fink.survey import avro, description\n"
              "ztf = description.load('ztf')\n"
              "msgs = load_messages(SimulatorConfig(source=str(project_dir() / 'datasim' / 'sample_night')))\n"
              "alerts = [avro.decode_container(m, survey=ztf).alert for m in msgs]\n"
              "[avro.check_alert(a, ztf) for a in alerts]\n"
              "print(len(alerts), len({a['candid'] for a in alerts}), ' '.join(avro.schema_versions('ztf')))\n")
    proc = subprocess.run([str(wheel_venv / "python"), "-c", decode], capture_output=True, text=True,
                          env=outside_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, unique, *versions = proc.stdout.split()
    assert int(count) == int(unique) == 229 and "4.02" in versions and "3.3" in versions


@pytest.mark.timeout(900)
def test_from_a_work_folder_the_smoke_notebook_and_the_demo_run_end_to_end(wheel_venv, kafka_bootstrap, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    env = outside_env(FINK_HOME=str(home))
    init = subprocess.run([str(wheel_venv / "fink"), "init", "--project", str(work)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert init.returncode == 0, init.stderr
    names = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {p.name for p in (work / "notebooks").glob("*.ipynb")} == names
    assert (work / "datasim" / "sample_night" / "alerts.avro").is_file() and (work / "conf" / "local.yaml").is_file()

    # the smoke notebook, headless, from the work folder's copy
    topic = f"wheel_{uuid.uuid4().hex[:8]}"
    smoke = subprocess.run([str(wheel_venv / "papermill"), "--no-progress-bar", "notebooks/smoke.ipynb",
                            str(tmp_path / "smoke.ipynb"), "-f", "conf/local.yaml", "--cwd", "notebooks",
                            "-p", "data_dir", str(tmp_path / "data"), "-p", "topic", topic, "-p", "n_alerts", "60"],
                           capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert smoke.returncode == 0, smoke.stdout[-2000:] + smoke.stderr[-3000:]
    summary = json.loads((home / "reports" / "smoke" / "summary.json").read_text())
    assert summary["published"] == summary["archived_this_run"] == summary["published_alerts_found_in_archive"] == 60

    # `fink demo`, the main job of `make demo` (which runs it after `fink init`): the whole broker on the
    # sample night, every alert accounted for, and nothing left running (the suite's services stay)
    demo = subprocess.run([str(wheel_venv / "fink"), "demo"], capture_output=True, text=True, env=env, cwd=work,
                          timeout=800)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    check_demo(home, demo.stdout)
    # the runs were the work folder's notebooks, executed by the installed package
    runs = [json.loads(p.read_text()) for p in (home / "runs").glob("*/*/status.json")]
    assert runs and all(str(work / "notebooks") in r["notebook"] for r in runs)


def check_demo(home: Path, printed: str) -> None:
    """What `fink demo` printed and reported: every alert accounted for, stage by stage, the
    client's lanes timed, true SN Ia on top, the night's dashboard; nothing of ``home`` running."""
    assert "The sample night through the broker" in printed and "all accounted for" in printed
    report = home / "reports" / "demo"
    demo = json.loads((report / "demo.json").read_text())  # what the demo printed comes from this file
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
    for lane in ("micro-batch", "real-time"):  # each lane timed from the input topic to a topic of it
        timed = client["lanes"][lane]
        assert timed["alerts"] > 0 and 0 < timed["latency_p50_s"] < 300, lane
    assert "real-time lane" in printed

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


# -- on a Spark standalone cluster: a master and two workers in their own JVMs ----------------------------
#
# The cluster is `fink services start spark`. The pipeline runs from the installed wheel, from a work
# folder made by `fink init --project`: its driver and the executors' Python workers import fink from
# the wheel, never from the clone. The parameters are conf/cluster.yaml's with this machine's addresses
# and sizes (tests/conftest.py's pipeline_params). Mid-stream, one worker is killed with its executor
# (kill -9 of its process group): the night written still equals, value for value and without a
# duplicate, what the same parameters write in local mode (the run test_pipeline checks).

@pytest.fixture(scope="module")
def spark_cluster():
    """The standalone master and its two workers, stopped at the end of the module."""
    cfg = ServicesConfig.load()
    started = fink_services("start", "spark")  # from another process, as an operator (no child of ours)
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"spark://{cfg.host}:{cfg.spark_master_port}"
    fink_services("stop", "spark")


def fink_services(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fink.ops.cli", "services", *args], capture_output=True, text=True,
                          timeout=300)


def run_pipeline(fink_bin: Path, work: Path, home: Path, params: dict, during=None) -> dict:
    """Run the pipeline notebook from the wheel's `fink start pipeline --simulator` with ``params``,
    calling ``during(home)`` each 2 s until it ends; return its run status."""
    # the cluster's secret (its daemons run for the suite's FINK_HOME, the driver for a home of its own)
    env = outside_env(FINK_HOME=str(home), FINK_SPARK_AUTH_FILE=str(spark_auth_file()))
    started = subprocess.run([str(fink_bin), "start", "pipeline", "--simulator",
                              *[a for k, v in params.items() for a in ("-p", f"{k}={json.dumps(v)}")]],
                             capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        statuses = list((home / "runs" / "pipeline").glob("*/status.json"))
        if statuses:
            status = json.loads(statuses[0].read_text())
            assert status["state"] == "finished", (statuses[0].parent / "log.txt").read_text()[-3000:]
            return status
        if during is not None:
            during(home)
        time.sleep(2)
    subprocess.run([str(fink_bin), "stop", "pipeline"], env=env, cwd=work, timeout=120)
    raise AssertionError("the pipeline did not end within 600 s")


def science_values(data: Path) -> list[dict]:
    """The science archive's rows by candid, every column but the times of processing."""
    import pyarrow as pa

    table = pq.read_table(str(data / "science"))
    kept = [f.name for f in table.schema if not pa.types.is_timestamp(f.type) and "processing" not in f.name]
    assert "candid" in kept and len(kept) > 5, table.column_names
    return sorted(table.select(kept).to_pylist(), key=lambda r: r["candid"])


def kill_a_worker_after_the_first_batches(killed: dict):
    """``during``: kill -9 spark-worker-1 and its executor (its process group) once the pipeline
    has written two micro-batches, as a machine of the cluster would die; started again after."""
    from fink.runtime import metrics

    def during(home: Path) -> None:
        path = metrics.default_path(home)
        if killed or not path.exists():
            return
        df = metrics.Store(path).batches()
        if len(df) and int(((df["query"] == "stream2raw") & (df["input_rows"] > 0)).sum()) >= 2:
            (worker,) = services.select(["spark-worker-1"])
            pid = worker.alive_pid()
            os.killpg(pid, signal.SIGKILL)
            killed.update(pid=pid, after_batches=len(df))
    return during


@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_the_pipeline_on_the_cluster_writes_what_local_mode_writes_with_a_worker_killed(
        spark_cluster, wheel_venv, hbase_thrift, kafka_bootstrap, local_pipeline_night, tmp_path):
    local = local_pipeline_night  # the same parameters in local mode (tests/conftest.py), from the clone
    work = tmp_path / "work"
    init = subprocess.run([str(wheel_venv / "fink"), "init", "--project", str(work)], capture_output=True,
                          text=True, env=outside_env(FINK_HOME=str(tmp_path / "home-init")), timeout=120)
    assert init.returncode == 0, init.stderr
    sfx = uuid.uuid4().hex[:6]
    killed = {}
    data, home = tmp_path / "data", tmp_path / "home"
    topic, bright, table = f"cl_{sfx}", f"cl_bright_{sfx}", f"cl_{sfx}"
    workers = services.select(["spark-worker-1", "spark-worker-2"])
    earlier = {w.name: set((w.run_dir / "work").glob("app-*")) for w in workers}  # work folders outlive runs
    try:
        run_pipeline(wheel_venv / "fink", work, home, pipeline_params(spark_cluster, data, topic, bright, table),
                     during=kill_a_worker_after_the_first_batches(killed))
        assert killed, "the pipeline ended before a worker could be killed mid-stream"
        (worker,) = services.select(["spark-worker-1"])
        assert worker.alive_pid() is None
        assert fink_services("start", "spark-worker-1").returncode == 0  # the machine back, for what follows

        # the cluster ran it: each worker started an executor for this run's application
        apps = {w.name: [a for a in (w.run_dir / "work").glob("app-*") if a not in earlier[w.name]
                         and list(a.glob("*/stderr"))] for w in workers}
        assert all(apps.values()), apps

        # the same night, value for value: raw, science, HBase rows, the topic's alerts
        for part in ("raw", "science"):
            ours, theirs = (sorted(pq.read_table(str(d / part), columns=["candid"]).column("candid").to_pylist())
                            for d in (local["data"], data))
            assert ours == theirs and len(ours) == len(set(ours)), part
        assert len(set(pq.read_table(str(data / "raw"), columns=["candid"])["candid"].to_pylist())) == 229
        assert science_values(data) == science_values(local["data"])
        # against local mode's science archive, not its table: the completeness test (test_pipeline), on the
        # other worker maybe, deletes a row of that table for a moment (test_pipeline checks the two are equal)
        local_science = pq.read_table(str(local["data"] / "science"), columns=["candid"]).column("candid")
        assert sorted(hbase_candids(hbase_thrift, table)) == sorted(local_science.to_pylist())
        bright_local = [r["candid"] for r in science_alerts(local["data"]) if r["candidate"]["magpsf"] < 18.0]
        expected = sorted(consume(local["bright"], len(bright_local)))
        assert expected == sorted(bright_local) and sorted(consume(bright, len(expected))) == expected
    finally:
        conn = hbase.connect(*hbase_thrift)
        try:
            hbase.delete_tables(conn, table)
        finally:
            conn.close()


#: what a driver the master turns away logs (Spark's StandaloneAppClient), each 20 s until it gives up
REFUSED = "Failed to connect to master"


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_a_driver_without_the_cluster_s_secret_is_refused_and_no_secret_is_on_a_command_line(spark_cluster,
                                                                                              tmp_path):
    import psutil

    ours = dict(line.split("=", 1) for line in spark_auth_file().read_text().splitlines() if "=" in line)
    wrong = tmp_path / "wrong.properties"
    wrong.write_text("spark.authenticate=true\nspark.authenticate.secret=" + "0" * 64 + "\n")
    wrong.chmod(0o600)
    drivers = {}  # a driver with another secret, and one that does not authenticate
    for name, auth in (("wrong-secret", "true"), ("no-secret", "false")):
        code = ("from fink.config import FinkConfig\n"
                "from fink.runtime.session import get_spark\n"
                f"cfg = FinkConfig(spark_master={spark_cluster!r}, spark_conf={{'spark.authenticate': {auth!r}}})\n"
                f"spark = get_spark(cfg, app_name='fink-{name}')\n"
                "print('registered', spark.sparkContext.applicationId, flush=True)\n")
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            drivers[name] = (log, subprocess.Popen(
                [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "FINK_HOME": str(tmp_path / name), "FINK_SPARK_AUTH_FILE": str(wrong)}))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(REFUSED in log.read_text() or proc.poll() is not None
                                                       for log, proc in drivers.values()):
            time.sleep(1)
        wrong_log, none_log = (drivers[n][0].read_text() for n in ("wrong-secret", "no-secret"))
        assert REFUSED in wrong_log and "SaslException" in wrong_log, wrong_log[-3000:]
        assert REFUSED in none_log and "Expected SaslMessage" in none_log, none_log[-3000:]
        assert "registered" not in wrong_log + none_log
        # neither secret on any command line of the machine (the refused drivers' JVMs are up)
        lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        assert sum("--properties-file" in line and "spark-auth.properties" in line for line in lines) >= 3
        assert sum(str(wrong) in line for line in lines) >= 1  # the wrong-secret driver's spark-submit
        assert not any(ours["spark.authenticate.secret"] in line or "0" * 64 in line for line in lines)
    finally:
        for _, proc in drivers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
