"""Shared fixtures: the local services, a Spark session, the real alerts of ../shared.

Integration fixtures start what they need idempotently (``make test`` has already
started it; a plain ``pytest`` run from a fresh shell works too) and never stop the
shared services, which other tests and the developer's notebooks use.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from fink.config import FinkConfig, ServicesConfig, fink_home
from fink.ops import services
from fink.runtime import metrics
from fink.runtime.session import DRIVER_JAVA_OPTIONS
from fink.runtime.streaming import stop_active

ROOT = Path(__file__).resolve().parents[1]
# every Spark driver the suite starts in another process (notebook kernels, `fink start` services, the
# demo) compiles with the JIT's quick tier only: those runs are short, and start in half the time
QUICK_TIER = "-XX:TieredStopAtLevel=1"
os.environ.setdefault(DRIVER_JAVA_OPTIONS, QUICK_TIER)
SHARED = Path(os.environ.get("FINK_SHARED", ROOT.parent / "shared")).resolve()


#: the test files that take longest, longest first (seconds on one of `make test`'s two workers, 2 cores,
#: 2026-12-05: 496, 471, 468, 279, 197, 146, 112, about 110 with its pipeline run, 110, 97, 58, 44, 37, 37).
#: With ``--dist loadfile --no-loadscope-reorder`` xdist hands whole files to its workers in collection order:
#: these go first, so that no long file starts last on one worker while the other has finished.
SLOW_FIRST = ["test_wheel.py", "test_distribution.py", "test_notebooks.py", "test_operations.py", "test_archive.py",
              "test_one_pass.py", "test_services.py", "test_pipeline.py", "test_stream2raw.py", "test_rubin.py",
              "test_compaction.py", "test_runner.py", "test_browser.py", "test_raw2science.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free now (for a service of a test's own)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


#: the ports of each service in services.yaml
PORT_KEYS = {"kafka": ("kafka_port", "kafka_controller_port", "kafka_sasl_port"),
             "hbase": ("hbase_zookeeper_port", "hbase_master_port", "hbase_regionserver_port", "thrift_port")}


def home_of_its_own(home: Path, *services: str, **settings) -> dict[str, int]:
    """Make ``home`` a FINK_HOME whose ``services.yaml`` puts ``services`` (keys of :data:`PORT_KEYS`) on
    loopback ports free now, with ``settings`` beside them (``hbase_heap="512m"``): a test stops, breaks
    or reformats a service of its own there while the suite's shared ones serve the other worker.
    Returns the ports by their services.yaml key."""
    import yaml

    keys = [k for name in services for k in PORT_KEYS[name]]
    ports = dict(zip(keys, free_ports(len(keys)), strict=True))
    home.mkdir(parents=True, exist_ok=True)
    (home / "services.yaml").write_text(yaml.safe_dump({**ports, **settings}))
    return ports


@pytest.fixture(scope="session", autouse=True)
def class_data_archive(request):
    """Spark drivers start from the class-data archive (:mod:`fink.runtime.class_archive`) in a session
    with integration tests: made here when `make jvm` did not (once per JDK, pyspark and connector
    jars), else found; every driver's ``get_spark`` then maps it (a session and its first query 10 s
    -> 5 s). A JVM whose class path differs (the wheel's virtualenv) runs without it."""
    import sys

    from fink.runtime import class_archive

    if not any(item.get_closest_marker("integration") for item in request.session.items):
        yield None
        return
    try:
        class_archive.build()
    except Exception as exc:  # noqa: BLE001 - the suite runs without it, only slower
        print(f"no class-data archive for the Spark drivers: {exc}", file=sys.stderr)
    path = class_archive.archive_path()
    yield path if path.exists() else None


@pytest.fixture(scope="session")
def services_config() -> ServicesConfig:
    return ServicesConfig.load(fink_home())


@pytest.fixture(scope="session")
def kafka_bootstrap(services_config: ServicesConfig):
    """The local broker; the topics the tests create are deleted at the end of the session.

    Without that, every run leaves its topics' data on the broker's disk (gigabytes after
    a few hundred runs). The topics there before the session are kept.
    """
    from fink.config import SERVICE_SECRET, service_password
    from fink.io.kafka import temporary_topics

    services.start(["kafka"])
    # the tests that keep their data in a FINK_HOME of their own (the demo, the notebooks, the
    # browser, the fault suite) talk to these services: they log in with these services' account
    os.environ.setdefault(f"FINK_{SERVICE_SECRET.upper()}", service_password() or "")
    if os.environ.get("PYTEST_XDIST_WORKER") and _CONTROLLER_TOPICS_ENV in os.environ:
        yield services_config.kafka_bootstrap  # the controller's block lists and deletes them (below)
        return
    with temporary_topics(services_config.kafka_bootstrap) as bootstrap:
        yield bootstrap


#: set by the pytest-xdist controller for its workers: the session's topics are listed in one block
_CONTROLLER_TOPICS_ENV = "FINK_TEST_CONTROLLER_TOPICS"
_controller_topics: list = []


#: the folder of what is made once for the run (:func:`once`), set by its first process (xdist's controller,
#: or a plain run's only one); xdist's workers inherit it
_SHARED_ENV = "FINK_TEST_SHARED"


def pytest_sessionstart(session):
    """Under pytest-xdist (``-n 2``) the controller, not each worker, deletes the session's topics at
    the end: a worker that finished first deleted topics the other's running test still wrote (the
    delivery log, met by both), and that test's transaction then waited forever. Runs before xdist
    starts its workers (its own hook is ``trylast``): they inherit the block's list of topics and the
    folder of :func:`once`. Nothing to do for the topics when the broker is not up yet (the workers'
    fixtures start it; their topics then stay)."""
    import tempfile

    if hasattr(session.config, "workerinput"):
        return
    os.environ[_SHARED_ENV] = tempfile.mkdtemp(prefix="fink-tests-once-")  # a plain pytest run has one too
    if not getattr(session.config.option, "numprocesses", None):
        return
    from fink.io.kafka import temporary_topics, topics

    bootstrap = ServicesConfig.load(fink_home()).kafka_bootstrap
    try:
        topics(bootstrap, timeout=5.0)
    except Exception:  # noqa: BLE001 - the broker is down: the workers start it
        return
    block = temporary_topics(bootstrap)
    block.__enter__()
    os.environ[_CONTROLLER_TOPICS_ENV] = "1"
    _controller_topics.append(block)


def pytest_sessionfinish(session, exitstatus):
    while _controller_topics:
        _controller_topics.pop().__exit__(None, None, None)
        os.environ.pop(_CONTROLLER_TOPICS_ENV, None)
    shared = os.environ.get(_SHARED_ENV)
    if shared and not hasattr(session.config, "workerinput"):  # the controller: the workers have ended
        _drop_made_once(Path(shared), remove=exitstatus == 0 or not any(Path(shared).iterdir()))
        os.environ.pop(_SHARED_ENV, None)


def once(name: str, make) -> dict:
    """``make(folder)`` once for the whole run, whichever xdist worker needs it first: the others wait
    for it and get the same JSON value (a session fixture is made once per worker, and two workers
    making the sample night's archives or pipeline run spent a minute of CPU each on the same
    work; a fixture imported into a second module is made once too). The session's first process
    drops what was made at the end (:func:`_drop_made_once`: the HBase tables a value lists under
    ``"hbase_tables"``, the folder when every test passed)."""
    import fcntl
    import json
    import shutil

    root = Path(os.environ[_SHARED_ENV])
    folder, made = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the worker holding it ends, whatever way
        if made.exists():
            return json.loads(made.read_text())
        shutil.rmtree(folder, ignore_errors=True)  # a worker that died making it left part of it
        folder.mkdir()
        value = make(folder)
        made.write_text(json.dumps(value))
        return value


def _drop_made_once(root: Path, remove: bool) -> None:
    import json
    import shutil

    from fink.io import hbase

    tables = [t for made in root.glob("*.json") for t in json.loads(made.read_text()).get("hbase_tables", [])]
    if tables:
        svc = ServicesConfig.load(fink_home())
        try:
            conn = hbase.connect(svc.host, svc.thrift_port)
            try:
                hbase.delete_tables(conn, *tables)
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - the suite's outcome stands; the tables stay
            print(f"could not delete the HBase tables {tables}: {exc}")
    if remove:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hbase_thrift(kafka_bootstrap: str, services_config: ServicesConfig) -> tuple[str, int]:
    services.start(["kafka", "hbase", "thrift"])
    return services_config.host, services_config.thrift_port


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses (deleted with the session's temporary topics)."""
    from fink.io import kafka

    name = f"test_{uuid.uuid4().hex[:12]}"
    kafka.track(name)
    return name


@pytest.fixture(scope="session")
def spark(kafka_bootstrap: str):
    from fink.runtime.session import get_spark

    cfg = FinkConfig(kafka_bootstrap=kafka_bootstrap, log_level="ERROR",
                     spark_conf={"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "2"})
    # this driver lives as long as the session and does most of the in-process work: the full JIT
    # (the class-data archive, when there is one, stays)
    options = os.environ.get(DRIVER_JAVA_OPTIONS)
    if options is not None:
        os.environ[DRIVER_JAVA_OPTIONS] = " ".join(o for o in options.split() if o != QUICK_TIER)
    try:
        session = get_spark(cfg, app_name="fink-tests")
    finally:
        if options is not None:
            os.environ[DRIVER_JAVA_OPTIONS] = options
    yield session
    stop_active(session)
    session.stop()


@pytest.fixture
def fresh_spark(spark):
    """The session with no query left over from an earlier test."""
    stop_active(spark)
    yield spark
    stop_active(spark)


@pytest.fixture(scope="session")
def shared_datasim() -> Path:
    path = SHARED / "datasim"
    if not path.is_dir():
        pytest.skip(f"real alert samples not found at {path} (set FINK_SHARED to the folder holding datasim/)")
    return path


# -- metrics (fink.runtime.metrics) ---------------------------------------------------------------

def _progress(query, batch, rows, when, latency=None, observed=None, latest=None, end=None, duration_ms=2000):
    """A progress report shaped as ``StreamingQueryProgress.json`` gives it."""
    obs = dict(observed or {})
    if latency is not None:
        obs[metrics.LATENCY] = {"latency_s": latency}
    source = {"description": "KafkaV2[Subscribe[t]]", "numInputRows": rows,
              "metrics": {"maxOffsetsBehindLatest": "7"}}
    if latest is not None:
        source.update(latestOffset=latest, endOffset=end)
    return {"id": "q-id", "runId": "r-id", "name": query, "batchId": batch, "numInputRows": rows,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when)),
            "inputRowsPerSecond": rows / 2.0, "processedRowsPerSecond": rows / 1.5,
            "durationMs": {"triggerExecution": duration_ms}, "observedMetrics": obs, "sources": [source]}


def _night_store(path):
    """Two stages' batches on the night 20261128 and one batch the night before."""
    store = metrics.Store(path)
    t = pd.Timestamp("2026-11-28T01:00:00Z").timestamp()
    store.begin_run("s2r", "stream2raw", started=t - 86400 - 60)  # running since the night before
    store.begin_run("r2s", "raw2science", started=t - 60)
    store.begin_run("sim", "simulator", started=t - 30)
    store.add_note("sim", "simulator", 0, {"alerts": 130})
    store.add_progress("s2r", _progress("stream2raw", 0, 30, t - 86400, observed={"stream2raw": {"messages": 30}}))
    for b, (rows, lat) in enumerate([(100, [1.0, 2.0, 2.5]), (30, [3.0, 9.0, 9.5]), (0, None)]):
        store.add_progress("s2r", _progress("stream2raw", b + 1, rows, t + 10 * b, latency=lat,
                                           observed={"stream2raw": {"messages": rows}}))
        store.add_note("s2r", "stream2raw", b + 1, {"archived": rows - (b == 1), "quarantined": int(b == 1)})
    for b, rows in enumerate([99, 30]):
        store.add_progress("r2s", _progress("raw2science", b, rows, t + 5 + 10 * b, latency=[5.0, 6.0, 7.0],
                                           observed={"raw2science": {"alerts": rows, "rejected": 9}}))
        store.add_note("r2s", "raw2science", b, {"alerts": rows - 9})
    return store


@pytest.fixture
def progress():
    """Build a progress report shaped as ``StreamingQueryProgress.json`` gives it."""
    return _progress


@pytest.fixture
def night_metrics(tmp_path) -> Path:
    """A metrics store: stream2raw and raw2science batches of the night 20261128 (UTC), one the night
    before, and the simulator's note of 130 alerts published."""
    path = tmp_path / "night-metrics" / "metrics.db"
    _night_store(path)
    return path


# -- the wheel (tests/unit/test_packaging.py, tests/integration/test_wheel.py) -------------------

@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The wheel of this working tree, built from a copy of it (a clone's stale ``build/`` folder
    would add modules that no longer exist)."""
    import shutil
    import subprocess
    import sys

    where = tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__",
                                  ".hypothesis", ".*_cache", "tests", "benchmarks")
    shutil.copytree(ROOT, where / "src", ignore=skip)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(where / "dist"), str(where / "src")], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (where / "dist").glob("fink_broker_nb-*.whl")
    return wheel


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without what points at the clone or the suite's venv."""
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FINK_PROJECT", "FINK_NOTEBOOKS", "PYTEST_CURRENT_TEST")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.executable).parent)))
    return {**env, **extra}


@pytest.fixture(scope="session")
def wheel_venv(built_wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv outside the clone with the wheel and its dependencies (from pip's cache,
    at the versions of constraints.txt); return its ``bin/`` folder."""
    import subprocess
    import sys

    where = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=120)
    bin_dir = where / "venv" / "bin"
    # --no-compile: the few modules a run imports are compiled when imported, not the thousands installed
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "--no-compile", "-c", str(ROOT / "constraints.txt"), str(built_wheel)],
                         capture_output=True, text=True, timeout=900, env=outside_env(), cwd=where)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    return bin_dir


# -- the pipeline on the sample night, in local mode: one run for two tests ------------------------------

#: what changes in conf/cluster.yaml for this machine: addresses, and sizes a 2-core machine holds
THIS_MACHINE = {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2",
                "spark.sql.shuffle.partitions": "2"}


def pipeline_params(master: str, data: Path, topic: str, bright: str, table: str) -> dict:
    """The pipeline notebook's parameters for a run on the sample night: conf/cluster.yaml's, with
    this machine's services and sizes, ``master``, 40 alerts a micro-batch, a bright-alerts filter."""
    import yaml

    svc = ServicesConfig.load()
    conf = yaml.safe_load((ROOT / "conf" / "cluster.yaml").read_text())
    conf.update(kafka_bootstrap=svc.kafka_bootstrap, hbase_thrift=f"{svc.host}:{svc.thrift_port}",
                spark_master=master, data_dir=str(data), log_level="ERROR")
    conf["spark_conf"] = {k: v for k, v in conf["spark_conf"].items() if k != "spark.driver.host"} | THIS_MACHINE
    return {**conf, "topic": topic, "duration": 600, "stream2raw": {"max_offsets_per_trigger": 40},
            "distribution": {"filters": {bright: "fink.filters.builtin:bright"}, "topic_options": {}},
            "archive": {"table": table}}


def _pipeline_night(tmp: Path) -> dict:
    import dataclasses

    from fink.ops import runner

    home, data = tmp / "home", tmp / "data"
    sfx = uuid.uuid4().hex[:6]
    names = {"topic": f"pipe_{sfx}", "bright": f"pipe_bright_{sfx}", "table": f"pipe_{sfx}"}
    params = pipeline_params("local[2]", data, names["topic"], names["bright"], names["table"])
    run = runner.start("pipeline", None, simulator=True, home=home, params=params)
    try:
        assert runner.wait(run, timeout=600), f"the pipeline did not end: {run.run_dir}/log.txt"
    finally:
        if run.alive():  # a failed wait must not leave a Spark driver behind
            runner.stop("pipeline", timeout=60, home=home)
    return {"home": str(home), "data": str(data), "run": dataclasses.asdict(run), **names,
            "hbase_tables": [names["table"]]}


@pytest.fixture(scope="session")
def local_pipeline_night(hbase_thrift) -> dict:
    """`fink start pipeline --simulator` in local mode on the sample night, from this clone, with
    :func:`pipeline_params`: its home, data folder, topic, filter topic, table and run. Made once
    for the whole run (:func:`once`): its archives, table and topics are only read.

    test_pipeline checks this run; the cluster test (test_wheel) compares its own run with it.
    """
    from fink.ops import runner

    night = once("pipeline_night", _pipeline_night)
    return {**night, "home": Path(night["home"]), "data": Path(night["data"]), "run": runner.Run(**night["run"])}
