"""Operating real stages with `fink start / show / stop`: metrics while they run, a stop mid-stream,
a restart, every stage killed at once (kill -9) and restarted, the Kafka broker stopped and
restarted; the archives, the HBase table and the topic end complete, without duplicates.

The broker stopped is the test's own (`fink services start kafka` in the test's FINK_HOME, on ports of
its own): the suite's other tests, on the shared broker, run beside it (`make test`'s two workers)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer
from conftest import home_of_its_own
from test_raw2science import passes

from fink.client import decode
from fink.config import ServicesConfig
from fink.io import hbase, kafka
from fink.processes import process_start_time
from fink.runtime import metrics
from fink.sim.simulator import SimulatorConfig, load_messages, replay

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
STAGES = ("stream2raw", "raw2science", "distribution", "archive")


def fink(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fink.ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` each second; one that raises (a file removed under a read, a busy HBase) is polled again."""
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - reported below if it never comes true
            last_error = exc
        time.sleep(1.0)
    raise AssertionError(f"not within {timeout} s: {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def candids(folder: Path) -> list[int]:
    """The candids of a Parquet archive (published files only: staging folders start with '_')."""
    if not folder.exists() or not any(folder.glob("night=*/*.parquet")):
        return []
    return pq.read_table(str(folder), columns=["candid"]).column("candid").to_pylist()


def science_alerts(data: Path) -> list[dict]:
    """``candid`` and ``candidate`` of each science row, its raw alert found by (candid, night)
    (the science archive holds what raw2science adds; the alert is in the raw archive)."""
    science = pq.read_table(str(data / "science"), columns=["candid", "night"]).to_pylist()
    raw = {(r["candid"], r["night"]): r for r in pq.read_table(str(data / "raw"),
                                                              columns=["candid", "candidate", "night"]).to_pylist()}
    return [raw[(r["candid"], r["night"])] for r in science]


def consume(topic: str, expected: int, timeout: float = 120.0) -> list[int]:
    """Candids of every committed message of ``topic``: until ``expected`` came or 8 s of silence, then 2 s
    more for any copy beyond (the messages were in the topic before the call: a copy comes at once)."""
    consumer = Consumer(kafka.client_config(ServicesConfig.load().kafka_bootstrap, **{
        "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest", "isolation.level": "read_committed"}))
    out, deadline = [], time.monotonic() + timeout
    last = [time.monotonic() + 30]  # the last message, or the assignment (30 s to join the group)

    def assigned(consumer, parts):
        last[0] = time.monotonic()  # silence counts from there

    consumer.subscribe([topic], on_assign=assigned)
    try:
        while (time.monotonic() < deadline and time.monotonic() - last[0] < (8 if len(out) < expected else 2)
               and len(out) <= expected):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(decode(msg.key(), msg.value())["candid"])
            last[0] = time.monotonic()
    finally:
        consumer.close()
    return out


def hbase_candids(hbase_thrift, table: str) -> list[int]:
    conn = hbase.connect(*hbase_thrift)
    try:
        if table.encode() not in conn.tables():
            return []
        return [int(cells[b"i:candid"]) for key, cells in conn.table(table).scan(columns=[b"i:candid"])
                if key != b"~schema"]
    finally:
        conn.close()


def kill_all(home: Path) -> list[str]:
    """kill -9 the process group of every running stage at once; return the killed runs."""
    records = [json.loads((home / "run" / f"{stage}.json").read_text()) for stage in STAGES]
    for record in records:
        os.killpg(record["pid"], signal.SIGKILL)
    wait_for(lambda: all(process_start_time(r["pid"]) is None for r in records), 30, "the killed runs to go")
    return [f"{stage}-{Path(r['run_dir']).name}" for stage, r in zip(STAGES, records, strict=True)]


@pytest.fixture
def own_kafka(tmp_path, monkeypatch):
    """A broker of the test's own: its FINK_HOME (``home``), its ports, its service account; this
    process's Kafka clients log in to it (``FINK_HOME``, no ``FINK_KAFKA_SERVICE``). Yields
    (home, bootstrap, environment of the `fink` commands); stopped at the end."""
    home = tmp_path / "home"
    port = home_of_its_own(home, "kafka")["kafka_port"]
    monkeypatch.delenv("FINK_KAFKA_SERVICE", raising=False)
    monkeypatch.setenv("FINK_HOME", str(home))
    env = {**os.environ}
    started = fink(env, "services", "start", "kafka")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield home, f"127.0.0.1:{port}", env
    finally:
        fink(env, "services", "stop", "kafka")


@pytest.mark.timeout(1200)
def test_stop_restart_kill_all_and_a_kafka_restart_lose_and_double_nothing(own_kafka, hbase_thrift, tmp_path):
    home, kafka_bootstrap, env = own_kafka
    data = tmp_path / "data"
    sfx = uuid.uuid4().hex[:6]
    topic, bright, table = f"ops_{sfx}", f"ops_bright_{sfx}", f"ops_{sfx}"
    kafka.ensure_topic(kafka_bootstrap, topic)
    common = [f"data_dir={data}", f"kafka_bootstrap={kafka_bootstrap}", "trigger=2 seconds", "duration=900"]
    params = {"stream2raw": [f"topic={topic}", "max_offsets_per_trigger=4"],  # <= 2 alerts/s: mid-stream 115 s
              "raw2science": ["max_files_per_trigger=1"],
              "distribution": [f"filters={{{bright}: 'fink.filters.builtin:bright'}}", "topic_options={}",
                               "max_files_per_trigger=1"],
              "archive": [f"table={table}", "max_files_per_trigger=1", "retry_for_s=300"]}
    try:
        _operate(env, home, data, topic, bright, table, common, params, kafka_bootstrap, hbase_thrift)
    finally:
        fink(env, "stop", "all", "--timeout", "60")
        conn = hbase.connect(*hbase_thrift)
        try:
            hbase.delete_tables(conn, table)
        finally:
            conn.close()


def _operate(env, home, data, topic, bright, table, common, params, kafka_bootstrap, hbase_thrift):
    def start_all(faster=False):
        for stage in STAGES:
            # after the kill: stream2raw 10 a second, the others a backlog of files at a time
            extra = ([] if not faster else ["max_offsets_per_trigger=20"] if stage == "stream2raw"
                     else ["max_files_per_trigger=8"])
            args = [a for p in common + params[stage] + extra for a in ("-p", p)]
            started = fink(env, "start", stage, "-c", str(ROOT / "conf" / "ci.yaml"), *args)
            assert started.returncode == 0, started.stderr
            assert f"{stage}: started" in started.stdout

    start_all()
    # the night arrives over a minute, as from a telescope: the stop below comes mid-stream. Its
    # last 59 alerts are held back until after the kill, so the stop and the kill come
    # mid-stream however slowly the stages start on a loaded machine
    sim = SimulatorConfig(source=str(ROOT / "datasim" / "sample_night"), topic=topic, rate=4.0)
    night = load_messages(sim)
    assert len(night) == 229
    sent: dict = {}
    publisher = threading.Thread(target=lambda: sent.update(replay(sim, kafka_bootstrap, messages=night[:170],
                                                                   progress=False)))
    publisher.start()
    again = fink(env, "start", "stream2raw", "-p", f"topic={topic}")
    assert again.returncode == 1 and "already running" in again.stderr

    # the metrics store fills while the stages run, and `fink show` reads it from another process
    store = metrics.Store(metrics.default_path(home))

    def busy(query):
        df = store.batches()
        return int(((df["query"] == query) & (df["input_rows"] > 0)).sum()) if len(df) else 0

    wait_for(lambda: busy("stream2raw") >= 2 and busy("raw2science") >= 1, 300, "two stream2raw batches")
    shown = fink(env, "show", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["service"]: r for r in json.loads(shown.stdout)}
    assert set(rows) == set(STAGES)
    for r in rows.values():
        assert r["pid"] > 0 and r["uptime_s"] > 0 and r["started_at"]
        assert r["state"] in ("starting", "waiting", "processing")
    s2r = rows["stream2raw"]
    assert s2r["batches"] >= 2 and s2r["rows_in"] >= 10 and s2r["last_batch"] and s2r["input_rate"] >= 0
    assert s2r["latency_p50_s"] is not None and s2r["lag"] is not None
    assert "stream2raw" in fink(env, "show").stdout

    # stop mid-stream: each query ends at a batch boundary, cleanly, within the timeout
    stopped = fink(env, "stop", "all", "--timeout", "120", timeout=600)
    assert stopped.returncode == 0
    assert stopped.stdout.count("stopped cleanly") == 4, stopped.stdout
    assert json.loads(fink(env, "show", "--json").stdout) == []
    raw_at_stop = len(candids(data / "raw"))
    assert 0 < raw_at_stop < 170, f"the stop did not come mid-stream ({raw_at_stop} of 170 archived)"
    for stage in STAGES:
        (run_dir,) = (home / "runs" / stage).iterdir()
        assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"

    # restart from the checkpoints
    start_all()

    # kill -9 every stage at once, mid-stream (each process group: papermill, kernel, Spark driver,
    # Python workers), then start them all again: checkpoints and exactly-once sinks absorb the crash
    def restarted_busy(query):
        record = json.loads((home / "run" / f"{query}.json").read_text())
        df = store.batches(runs=[f"{query}-{Path(record['run_dir']).name}"])
        return len(df) and int((df["input_rows"] > 0).sum()) >= 1

    wait_for(lambda: restarted_busy("raw2science") and restarted_busy("stream2raw"), 300,
             "a batch of the restarted raw2science")
    # the kill comes before the night's last 59 alerts are published: mid-stream by construction
    killed_runs = kill_all(home)
    start_all(faster=True)
    publisher.join(timeout=120)
    assert not publisher.is_alive(), "the first 170 alerts were not published within 120 s"
    # the last 59 at once: the restarted stream2raw has them to read (20 a batch) when the broker stops
    rest = replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=night[170:], progress=False)

    # the Kafka broker stopped for 15 s, then started again, while the stages run
    wait_for(lambda: restarted_busy("stream2raw"), 300, "a batch of stream2raw after the kill")
    assert fink(env, "services", "stop", "kafka").returncode == 0  # as the operator would
    time.sleep(15)
    assert fink(env, "services", "start", "kafka").returncode == 0
    for stage in STAGES:  # each stage rode out the outage
        record = json.loads((home / "run" / f"{stage}.json").read_text())
        status = Path(record["run_dir"]) / "status.json"
        assert process_start_time(record["pid"]) is not None, (
            f"{stage} ended during the broker outage: {status.read_text() if status.exists() else 'no status'}")

    # every alert once in each archive, in HBase and in the topic
    assert sent["alerts"] + rest["alerts"] == 229
    wait_for(lambda: len(candids(data / "raw")) >= 229 and len(candids(data / "science")) >= 207
             and len(hbase_candids(hbase_thrift, table)) >= 207, 500, "the archives complete")
    raw, science = candids(data / "raw"), candids(data / "science")
    table_rows = science_alerts(data)
    expected = sorted(r["candid"] for r in table_rows if r["candidate"]["magpsf"] < 18.0)
    delivered = consume(bright, len(expected))
    archived = hbase_candids(hbase_thrift, table)
    assert fink(env, "stop", "all", "--timeout", "120", timeout=600).stdout.count("stopped cleanly") == 4
    assert len(raw) == len(set(raw)) == 229
    assert len(science) == len(set(science)) == 207
    raw_rows = pq.read_table(str(data / "raw"), columns=["candid", "candidate"]).to_pylist()
    assert sorted(science) == sorted(r["candid"] for r in raw_rows if passes(r["candidate"]))
    assert sorted(archived) == sorted(science)
    assert sorted(delivered) == expected and len(expected) > 0

    # every run of each stage is in the store: what each sink wrote adds up to the archives (a
    # batch replayed after the kill is noted again by the next run under the same batch id)
    latest = {q: {n["batch"]: n["value"] for n in sorted(store.notes(query=q), key=lambda n: n["time"])}
              for q in STAGES}
    assert sum(v["archived"] for v in latest["stream2raw"].values()) == 229
    assert sum(v["alerts"] for v in latest["raw2science"].values()) == 207
    assert sum((v["delivered"] or {}).get(bright, 0) for v in latest["distribution"].values()) == len(expected)
    assert len({r["run"] for r in store.runs()}) == 12
    states = {r["run"]: r for r in store.runs()}
    for run in killed_runs:
        assert states[run]["state"] == "lost" and states[run]["error"].startswith("the process ended without")
