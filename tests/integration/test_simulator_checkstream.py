"""simulator -> real Kafka -> checkstream: counts match exactly, every fault named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fink.ops import checkstream
from fink.sim import faults
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.sim.sources import read_messages
from fink.survey import avro

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "datasim" / "sample_night")


@pytest.fixture(scope="module")
def sample_messages():
    return load_messages(SimulatorConfig(source=SAMPLE))


def test_every_alert_and_every_fault_is_accounted_for(kafka_bootstrap, topic, sample_messages):
    fractions = {kind: 0.04 for kind in faults.KINDS}
    config = SimulatorConfig(source=SAMPLE, topic=topic, faults=fractions)
    report = replay(config, kafka_bootstrap, messages=sample_messages, progress=False, fault_seed=3)
    assert report["alerts"] == len(sample_messages) == 229
    assert set(report["faults"]) == set(faults.KINDS)  # every kind was sent at least once

    stats = checkstream.watch(kafka_bootstrap, topic, max_messages=report["messages"], idle=20)
    assert stats.messages == report["messages"]
    assert stats.alerts == report["alerts"]
    assert dict(stats.rejected) == {faults.KINDS[k]: n for k, n in report["faults"].items()}
    assert stats.lag == 0
    latest = stats.latest[-1]
    last = avro.decode_container(sample_messages[-1]).alert
    assert (latest["objectId"], latest["candid"]) == (last["objectId"], last["candid"])
    assert latest["band"] in "gr" and latest["time"].startswith("2026-11-2")


def test_real_ztf_alerts_replay_and_decode(kafka_bootstrap, topic, shared_datasim):
    folder = shared_datasim / "ztf" / "native-4.02_kowalski-2023-10-12"
    messages = list(read_messages(folder))
    assert messages == [p.read_bytes() for p in sorted(folder.glob("*.avro"))]  # replayed byte for byte
    report = replay(SimulatorConfig(source=str(folder), topic=topic), kafka_bootstrap, progress=False)
    assert report["alerts"] == len(messages) == 24
    stats = checkstream.watch(kafka_bootstrap, topic, max_messages=24, idle=20)
    assert stats.alerts == 24 and not stats.rejected
    assert {row["candid"] for row in stats.latest} <= {int(p.stem) for p in folder.glob("*.avro")}


def test_generator_source_in_schema_33(kafka_bootstrap, topic):
    config = SimulatorConfig(source="generator", n_objects=6, seed=5, schema_version="3.3", topic=topic)
    report = replay(config, kafka_bootstrap, progress=False)
    stats = checkstream.watch(kafka_bootstrap, topic, max_messages=report["alerts"], idle=20)
    assert stats.alerts == report["alerts"] > 0
    assert {row["schema"] for row in stats.latest} == {"3.3"}


def test_steady_rate_and_bursts_pace_the_stream(kafka_bootstrap, topic, sample_messages):
    steady = replay(SimulatorConfig(topic=topic, rate=40.0, count=60), kafka_bootstrap,
                    messages=sample_messages, progress=False)
    assert steady["alerts"] == 60 and steady["stopped_because"] == "count reached"
    assert steady["seconds"] >= 59 / 40  # the 60th alert is due at 1.475 s
    bursts = replay(SimulatorConfig(topic=topic, burst=25, visit_seconds=1.0, count=75), kafka_bootstrap,
                    messages=sample_messages, progress=False)
    assert bursts["alerts"] == 75 and bursts["seconds"] >= 2.0  # visits at 0, 1 and 2 s


def test_loop_and_duration(kafka_bootstrap, topic, sample_messages):
    report = replay(SimulatorConfig(topic=topic, loop=True, duration=1.0, rate=300), kafka_bootstrap,
                    messages=sample_messages[:10], progress=False)
    assert report["stopped_because"] == "duration reached"
    assert report["alerts"] > 10  # it went round more than once
    stats = checkstream.watch(kafka_bootstrap, topic, idle=2)  # each pass with new candids: no duplicate
    assert stats.alerts == report["alerts"] and stats.rejected == {}


def test_checkstream_from_an_offset_and_cli(kafka_bootstrap, topic, sample_messages):
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=sample_messages[:30], progress=False)
    stats = checkstream.watch(kafka_bootstrap, topic, start=20, idle=2)
    assert stats.messages == 10 and stats.alerts == 10
    proc = subprocess.run([sys.executable, "-m", "fink.ops.cli", "checkstream", topic, "--bootstrap", kafka_bootstrap,
                           "--idle", "2", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["messages"] == summary["alerts"] == 30 and summary["rejected"] == {}


def test_checkstream_on_a_missing_topic_is_a_clear_error(kafka_bootstrap, topic):
    from fink.io.kafka import KafkaError

    with pytest.raises(KafkaError, match=f"topic '{topic}'.*waited 1 s"):
        checkstream.watch(kafka_bootstrap, topic, idle=1)
