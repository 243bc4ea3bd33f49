"""The wheel, installed outside the checkout: everything the broker reads at run time is in it.

The wheel is built from this clone, installed with its dependencies into a fresh virtualenv in
a temporary folder (no editable install, no ``PYTHONPATH``), and run from another folder: the
package's data through ``importlib.resources``, ``fink init --project`` copying the notebooks,
the smoke notebook headless and ``fink demo`` end to end against the suite's local services.
The dependencies come from pip's cache, constrained to the versions of ``constraints.txt``.
Then the same wheel runs the pipeline on a Spark standalone cluster (below).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import outside_env
from test_operations import consume, hbase_candids

from fink.config import PROJECT_FILES, ServicesConfig, spark_auth_file
from fink.io import hbase
from fink.ops import services

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

    # `fink demo`: the whole broker on the sample night, every alert accounted for
    demo = subprocess.run([str(wheel_venv / "fink"), "demo"], capture_output=True, text=True, env=env, cwd=work,
                          timeout=800)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "all accounted for" in demo.stdout
    report = json.loads((home / "reports" / "demo" / "demo.json").read_text())
    stages = report["stages"]
    assert report["published"] == 229 == stages["stream2raw"]["out"] + stages["stream2raw"]["quarantined"]
    assert stages["raw2science"]["out"] == 207 == stages["archive"]["out"]
    assert report["client"]["received"] == report["client"]["expected"] > 0
    # the runs were the work folder's notebooks, executed by the installed package
    runs = [json.loads(p.read_text()) for p in (home / "runs").glob("*/*/status.json")]
    assert runs and all(str(work / "notebooks") in r["notebook"] for r in runs)


# -- on a Spark standalone cluster: a master and two workers in their own JVMs ----------------------------
#
# The cluster is `fink services start spark`. The pipeline runs from the installed wheel, from a work
# folder made by `fink init --project`: its driver and the executors' Python workers import fink from
# the wheel, never from the clone. The parameters are conf/cluster.yaml's with this machine's addresses
# and sizes. Mid-stream, one worker is killed with its executor (kill -9 of its process group): the
# night written still equals, value for value and without a duplicate, what the wheel writes locally.

#: what changes in conf/cluster.yaml for this machine: addresses, and sizes a 2-core machine holds
THIS_MACHINE = {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2",
                "spark.sql.shuffle.partitions": "2"}


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


def run_pipeline(fink_bin: Path, work: Path, home: Path, master: str, data: Path, topic: str, bright: str,
                 table: str, kafka_bootstrap: str, hbase_thrift: tuple[str, int], during=None) -> dict:
    """Run the pipeline notebook from the wheel's `fink start`, calling ``during(home)`` each
    2 s until it ends; return its run status."""
    conf = yaml.safe_load((ROOT / "conf" / "cluster.yaml").read_text())
    conf.update(kafka_bootstrap=kafka_bootstrap, hbase_thrift=f"{hbase_thrift[0]}:{hbase_thrift[1]}",
                spark_master=master, data_dir=str(data), log_level="ERROR")
    conf["spark_conf"] = {k: v for k, v in conf["spark_conf"].items() if k != "spark.driver.host"} | THIS_MACHINE
    params = {**conf, "topic": topic, "duration": 600, "stream2raw": {"max_offsets_per_trigger": 40},
              "distribution": {"filters": {bright: "fink.filters.builtin:bright"}, "topic_options": {}},
              "archive": {"table": table}}
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
        spark_cluster, wheel_venv, hbase_thrift, kafka_bootstrap, tmp_path):
    work = tmp_path / "work"
    init = subprocess.run([str(wheel_venv / "fink"), "init", "--project", str(work)], capture_output=True,
                          text=True, env=outside_env(FINK_HOME=str(tmp_path / "home-init")), timeout=120)
    assert init.returncode == 0, init.stderr
    sfx = uuid.uuid4().hex[:6]
    runs, killed = {}, {}
    workers = services.select(["spark-worker-1", "spark-worker-2"])
    earlier = {w.name: set((w.run_dir / "work").glob("app-*")) for w in workers}  # work folders outlive runs
    try:
        for mode, master in (("local", "local[2]"), ("cluster", spark_cluster)):
            data, home = tmp_path / mode / "data", tmp_path / mode / "home"
            names = (f"cl_{mode}_{sfx}", f"cl_bright_{mode}_{sfx}", f"cl_{mode}_{sfx}")
            status = run_pipeline(wheel_venv / "fink", work, home, master, data, *names, kafka_bootstrap,
                                  hbase_thrift, during=kill_a_worker_after_the_first_batches(killed)
                                  if mode == "cluster" else None)
            runs[mode] = {"data": data, "names": names, "status": status}
        local, cluster = runs["local"], runs["cluster"]
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
            ours, theirs = (sorted(pq.read_table(str(r["data"] / part), columns=["candid"]).column("candid")
                                   .to_pylist()) for r in (local, cluster))
            assert ours == theirs and len(ours) == len(set(ours)), part
        assert len(set(pq.read_table(str(cluster["data"] / "raw"), columns=["candid"])["candid"].to_pylist())) == 229
        assert science_values(cluster["data"]) == science_values(local["data"])
        assert sorted(hbase_candids(hbase_thrift, cluster["names"][2])) == \
            sorted(hbase_candids(hbase_thrift, local["names"][2]))
        expected = sorted(consume(local["names"][1], 229))
        assert expected and sorted(consume(cluster["names"][1], 229)) == expected
    finally:
        conn = hbase.connect(*hbase_thrift)
        try:
            for r in runs.values():
                hbase.delete_tables(conn, r["names"][2])
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
