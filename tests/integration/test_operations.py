"""Operating real stages with `fink start / show / stop`: metrics while they run, a stop mid-stream,
a restart, and archives and topics complete without duplicates."""

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

from fink import kafka, metrics
from fink.client import decode
from fink.config import ServicesConfig
from fink.services.process import process_start_time
from fink.simulator import SimulatorConfig, replay

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]
STAGES = ("stream2raw", "raw2science", "distribution")


def fink(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fink.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"not within {timeout} s: {what}")


def candids(folder: Path) -> list[int]:
    """The candids of a Parquet archive (published files only: staging folders start with '_')."""
    if not folder.exists() or not any(folder.glob("night=*/*.parquet")):
        return []
    return pq.read_table(str(folder), columns=["candid"]).column("candid").to_pylist()


def consume(topic: str, expected: int, timeout: float = 120.0) -> list[int]:
    """Candids of every committed message of ``topic``, reading until ``expected`` came or 8 s of silence."""
    consumer = Consumer({"bootstrap.servers": ServicesConfig.load().kafka_bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    out, last, deadline = [], time.monotonic(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and time.monotonic() - last < 8 and len(out) <= expected:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(decode(msg.key(), msg.value())["candid"])
            last = time.monotonic()
    finally:
        consumer.close()
    return out


@pytest.mark.timeout(900)
def test_start_show_stop_mid_stream_and_restart_lose_and_double_nothing(kafka_bootstrap, tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    env = {**os.environ, "FINK_HOME": str(home)}
    sfx = uuid.uuid4().hex[:6]
    topic, bright = f"ops_{sfx}", f"ops_bright_{sfx}"
    kafka.ensure_topic(kafka_bootstrap, topic)
    common = [f"data_dir={data}", "trigger=2 seconds", "duration=500"]
    params = {"stream2raw": [f"topic={topic}", "max_offsets_per_trigger=5"],  # <= 2.5 alerts/s: mid-stream 90 s
              "raw2science": ["max_files_per_trigger=1"],
              "distribution": [f"filters={{{bright}: 'fink.filters.builtin:bright'}}", "topic_options={}",
                               "max_files_per_trigger=1"]}

    def start_all():
        for stage in STAGES:
            args = [a for p in common + params[stage] for a in ("-p", p)]
            started = fink(env, "start", stage, "-c", str(ROOT / "conf" / "ci.yaml"), *args)
            assert started.returncode == 0, started.stderr
            assert f"{stage}: started" in started.stdout

    start_all()
    # the night arrives over a minute, as from a telescope: the stop below comes mid-stream
    sim = SimulatorConfig(source=str(ROOT / "datasim" / "sample_night"), topic=topic, rate=4.0)
    sent: dict = {}
    publisher = threading.Thread(target=lambda: sent.update(replay(sim, kafka_bootstrap, progress=False)))
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
    stopped = fink(env, "stop", "all", "--timeout", "120")
    assert stopped.returncode == 0
    assert stopped.stdout.count("stopped cleanly") == 3, stopped.stdout
    assert json.loads(fink(env, "show", "--json").stdout) == []
    raw_at_stop = len(candids(data / "raw"))
    assert 0 < raw_at_stop < 229, f"the stop did not come mid-stream ({raw_at_stop} archived)"
    for stage in STAGES:
        (run_dir,) = (home / "runs" / stage).iterdir()
        assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"

    # restart from the checkpoints
    start_all()

    # kill -9 raw2science mid-stream (its process group: papermill, kernel, Spark driver, Python
    # workers), then start it again: its checkpoint and the exactly-once archive absorb the crash
    record = json.loads((home / "run" / "raw2science.json").read_text())
    killed_run = f"raw2science-{Path(record['run_dir']).name}"

    def r2s_busy():
        df = store.batches(runs=[killed_run])
        return len(df) and int((df["input_rows"] > 0).sum()) >= 1

    wait_for(r2s_busy, 300, "a batch of the restarted raw2science")
    assert len(candids(data / "raw")) < 229, "stream2raw finished before the kill: not mid-stream"
    os.killpg(record["pid"], signal.SIGKILL)
    wait_for(lambda: process_start_time(record["pid"]) is None, 30, "the killed run to go")
    args = [a for p in common + params["raw2science"] for a in ("-p", p)]
    assert fink(env, "start", "raw2science", "-c", str(ROOT / "conf" / "ci.yaml"), *args).returncode == 0

    # every alert once in each archive and in the topic
    publisher.join(timeout=120)
    assert sent["alerts"] == 229
    wait_for(lambda: len(candids(data / "raw")) >= 229 and len(candids(data / "science")) >= 207, 400,
             "the archives complete")
    raw, science = candids(data / "raw"), candids(data / "science")
    table = pq.read_table(str(data / "science"), columns=["candid", "candidate"]).to_pylist()
    expected = sorted(r["candid"] for r in table if r["candidate"]["magpsf"] < 18.0)
    delivered = consume(bright, len(expected))
    assert fink(env, "stop", "all", "--timeout", "120").stdout.count("stopped cleanly") == 3
    assert len(raw) == len(set(raw)) == 229
    assert len(science) == len(set(science)) == 207
    assert sorted(delivered) == expected and len(expected) > 0

    # both runs of each stage are in the store: what each sink wrote adds up to the archives
    notes = {q: store.notes(query=q) for q in STAGES}
    assert sum(n["value"]["archived"] for n in notes["stream2raw"]) == 229
    assert sum(n["value"]["alerts"] for n in notes["raw2science"]) == 207
    assert sum((n["value"]["delivered"] or {}).get(bright, 0) for n in notes["distribution"]) == len(expected)
    assert len({r["run"] for r in store.runs()}) == 7
    (killed,) = [r for r in store.runs() if r["run"] == killed_run]
    assert killed["state"] == "lost" and killed["error"].startswith("the process ended without recording")
