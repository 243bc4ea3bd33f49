"""The one-pass pipeline (`fink start pipeline`) with a real-time lane: what each lane delivers,
and a kill -9 mid-stream that loses nothing and doubles nothing where exactly once is promised."""

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer
from test_operations import candids, consume, hbase_candids, science_alerts, wait_for
from test_raw2science import passes

from fink.client import AlertStream, decode
from fink.config import SERVICE_ACCOUNT, ServicesConfig, service_password
from fink.io import hbase, kafka
from fink.ops import runner
from fink.processes import process_start_time
from fink.runtime import metrics
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.survey.avro import ALERT_ID_HEADER

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]
NIGHT = ROOT / "datasim" / "sample_night"
XMATCH = "fink.science.modules.xmatch:crossmatch"
#: the condition of the real-time filter: the built-in micro-batch filter "bright" selects the same
BRIGHT_SQL = "candidate.magpsf < 18.0"


def plan(data: Path, topic: str, realtime: str, bright: str, table: str, **stream2raw) -> dict:
    return {"data_dir": str(data), "topic": topic,
            "stream2raw": stream2raw,
            "raw2science": {"modules": ["builtin"],
                            "module_params": {XMATCH: {"catalogue_path": str(NIGHT / "catalogue.csv")}}},
            "distribution": {"filters": {bright: "fink.filters.builtin:bright",
                                         realtime: {"condition": BRIGHT_SQL, "lane": "realtime"}},
                             "topic_options": {}},
            "archive": {"table": table}}


def raw_messages(topic: str, timeout: float = 120.0) -> list:
    """Every message of ``topic`` (key, value, headers) up to its end now (a topic no transaction writes:
    its end offsets are its last messages')."""
    bootstrap = ServicesConfig.load().kafka_bootstrap
    ends = {p: end for p, end in kafka.end_offsets(bootstrap, topic).items() if end > 0}
    consumer = Consumer(kafka.client_config(bootstrap, **{"group.id": uuid.uuid4().hex,
                                                          "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and ends:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key(), msg.value(), dict(msg.headers() or [])))
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
    finally:
        consumer.close()
    return out


def expected_bright(data: Path) -> list[int]:
    """Candids of the alerts both lanes must send: past the cuts (in the science archive), magpsf < 18."""
    rows = science_alerts(data)
    return sorted(r["candid"] for r in rows if r["candidate"]["magpsf"] < 18.0)


def drop_tables(hbase_thrift, table: str) -> None:
    conn = hbase.connect(*hbase_thrift)
    try:
        hbase.delete_tables(conn, table)
    finally:
        conn.close()


def check_realtime_lane(rt: str, expected: list[int], data: Path, sfx: str) -> None:
    """The real-time lane's topic: every expected alert (at least once), in the community format.

    Each key is the value's schema (as distribution's), each alert id in a header; fink.client drops
    the repeats; fink-client reads the topic unchanged, values equal to the raw archive's.
    """
    from fink_client.consumer import AlertConsumer

    messages = raw_messages(rt, timeout=60)
    got = [decode(key, value) for key, value, _ in messages]
    assert sorted(set(a["candid"] for a in got)) == expected
    for (key, _, headers), alert in zip(messages, got, strict=True):
        assert json.loads(key)["type"] == "record"
        assert int(headers[ALERT_ID_HEADER]) == alert["candid"]
    with AlertStream(rt, group_id=f"check-{sfx}") as stream:
        once = [a["candid"] for _, a in stream.alerts(limit=len(messages), idle=8)]
        assert sorted(once) == expected and stream.repeats == len(messages) - len(expected)
    raw = {r["candid"]: r for r in pq.read_table(str(data / "raw"), columns=["candid", "objectId", "candidate"])
           .to_pylist()}
    # on the internal listener as the service account (fink-client speaks SCRAM-SHA-512 too)
    client = AlertConsumer([rt], {"bootstrap.servers": ServicesConfig.load().kafka_bootstrap,
                                  "username": SERVICE_ACCOUNT, "password": service_password(),
                                  "group.id": f"fc-{sfx}"}, survey="ztf")
    seen, deadline = [], time.monotonic() + 120
    while len(seen) < len(messages) and time.monotonic() < deadline:
        if (msg := client.poll(5))[0] is not None:
            seen.append(msg[1])
    client.close()
    assert sorted(set(a["candid"] for a in seen)) == expected
    for alert in seen:
        want = raw[alert["candid"]]
        assert alert["objectId"] == want["objectId"]
        assert alert["candidate"]["magpsf"] == want["candidate"]["magpsf"] < 18.0
        assert alert["candidate"]["jd"] == want["candidate"]["jd"]


@pytest.mark.faults
@pytest.mark.timeout(1200)
def test_a_kill_9_of_the_one_pass_pipeline_mid_stream_loses_and_doubles_nothing(kafka_bootstrap, hbase_thrift,
                                                                                 tmp_path):
    """Killed mid-stream and started again: each alert once in the archives and on the micro-batch
    lane's topic; the real-time lane's topic has each (a repeat allowed) in the community format."""
    home, data = tmp_path / "home", tmp_path / "data"
    sfx = uuid.uuid4().hex[:6]
    topic, rt, bright, table = f"kill_{sfx}", f"kill_fast_{sfx}", f"kill_bright_{sfx}", f"kill_{sfx}"
    params = {**plan(data, topic, rt, bright, table, max_offsets_per_trigger=30), "trigger": "2 seconds",
              "duration": 900}
    night = load_messages(SimulatorConfig(source=str(NIGHT), topic=topic))
    assert len(night) == 229
    # the first 170 alerts wait in the topic; the pipeline reads them 30 a batch
    first = replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=night[:170], progress=False)
    conf = str(ROOT / "conf" / "ci.yaml")
    run = runner.start("pipeline", conf, home=home, params=params)
    store = metrics.Store(metrics.default_path(home))
    try:
        def busy(run_id: str) -> int:
            df = store.batches(runs=[run_id])
            return int(((df["query"] == "archive") & (df["input_rows"] > 0)).sum()) if len(df) else 0

        wait_for(lambda: busy(run.run_id) >= 2, 400, "two batches through every stage")
        # kill -9 the whole process group (papermill, kernel, Spark driver, Python workers), mid-stream
        os.killpg(run.pid, signal.SIGKILL)
        wait_for(lambda: process_start_time(run.pid) is None, 30, "the killed pipeline to go")
        raw_at_kill = len(candids(data / "raw"))
        assert raw_at_kill < 170, "the kill did not come mid-stream"
        run = runner.start("pipeline", conf, home=home, params=params)
        rest = replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=night[170:], progress=False)
        assert first["alerts"] + rest["alerts"] == 229
        wait_for(lambda: len(candids(data / "raw")) >= 229 and len(candids(data / "science")) >= 207
                 and len(hbase_candids(hbase_thrift, table)) >= 207, 500, "the archives complete")
        expected = expected_bright(data)
        assert 0 < len(expected) < 207
        delivered = consume(bright, len(expected))
    finally:
        if run.alive():
            runner.stop("pipeline", timeout=120, home=home)
    try:
        raw, science = candids(data / "raw"), candids(data / "science")
        assert len(raw) == len(set(raw)) == 229
        assert len(science) == len(set(science)) == 207
        raw_rows = pq.read_table(str(data / "raw"), columns=["candid", "candidate"]).to_pylist()
        assert sorted(science) == sorted(r["candid"] for r in raw_rows if passes(r["candidate"]))
        assert sorted(hbase_candids(hbase_thrift, table)) == sorted(science)
        assert sorted(delivered) == expected and expected  # exactly once through the kill
        check_realtime_lane(rt, expected, data, sfx)  # at least once: every one there
    finally:
        drop_tables(hbase_thrift, table)
