"""The one-pass pipeline on a Spark standalone cluster: a master and two workers in their own JVMs.

The cluster is `fink services start spark`. The pipeline runs from the installed wheel (a
virtualenv outside the clone, from a work folder made by `fink init --project`): its driver and
the executors' Python workers import ``fink`` from the wheel, never from the clone. The
parameters are conf/cluster.yaml's with this machine's addresses and sizes. The night it
writes equals, value for value, what the same wheel writes in local mode.
"""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import outside_env
from test_operations import consume, hbase_candids

from fink.config import ServicesConfig
from fink.io import hbase
from fink.ops import services

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.wheel, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]
#: what changes in conf/cluster.yaml for this machine: addresses, and sizes a 2-core machine holds
THIS_MACHINE = {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2",
                "spark.sql.shuffle.partitions": "2"}


@pytest.fixture(scope="module")
def spark_cluster():
    """The standalone master and its two workers, stopped at the end of the module."""
    cfg = ServicesConfig.load()
    services.start(["spark"])
    yield f"spark://{cfg.host}:{cfg.spark_master_port}"
    services.stop(["spark"])


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
    env = outside_env(FINK_HOME=str(home))
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


@pytest.mark.timeout(1500)
def test_the_pipeline_on_the_cluster_writes_what_local_mode_writes_with_a_worker_killed(
        spark_cluster, wheel_venv, hbase_thrift, kafka_bootstrap, tmp_path):
    work = tmp_path / "work"
    init = subprocess.run([str(wheel_venv / "fink"), "init", "--project", str(work)], capture_output=True,
                          text=True, env=outside_env(FINK_HOME=str(tmp_path / "home-init")), timeout=120)
    assert init.returncode == 0, init.stderr
    sfx = uuid.uuid4().hex[:6]
    runs, killed = {}, {}
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
        services.start(["spark-worker-1"])  # the machine back, for what follows

        # the cluster ran it: each worker started an executor for the pipeline's application
        apps = {w.name: list((w.run_dir / "work").glob("app-*/*/stderr"))
                for w in services.select(["spark-worker-1", "spark-worker-2"])}
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
