"""`fink services` on the real processes."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import NewTopic
from conftest import free_ports, home_of_its_own

from fink.config import SERVICE_ACCOUNT, SERVICE_SECRET, ServicesConfig, service_password
from fink.errors import ServiceError
from fink.io import kafka
from fink.io.delivery import LOG_TOPIC, BatchPublisher
from fink.ops import services
from fink.processes import process_start_time
from fink.stages.topics import Encoding, prepare_topics

pytestmark = pytest.mark.integration
FINK = [sys.executable, "-m", "fink.ops.cli"]
COMPACT = {"cleanup.policy": "compact"}


def fink(*args, env=None):
    return subprocess.run([*FINK, *args], capture_output=True, text=True, timeout=300, env=env)


def test_status_json_reports_the_running_stack(hbase_thrift):
    proc = fink("services", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"kafka", "hbase", "thrift"}
    for row in rows.values():
        assert row["state"] == "running" and Path(f"/proc/{row['pid']}").exists()
    assert rows["thrift"]["ports"] == {"thrift_port": hbase_thrift[1]}


def test_start_again_starts_no_duplicate(hbase_thrift):
    before = {s.name: s.pid for s in services.status()}
    proc = fink("services", "start")
    assert proc.returncode == 0, proc.stderr
    for name, pid in before.items():
        assert f"{name}: already running (pid {pid})" in proc.stdout
    assert {s.name: s.pid for s in services.status()} == before


def test_kafka_lifecycle_in_its_own_home(tmp_path, monkeypatch):
    """A second broker on other ports: start, answer, refuse a duplicate port, stop by PID."""
    monkeypatch.delenv("FINK_KAFKA_SERVICE", raising=False)  # its own account, in its own home
    home = tmp_path / "home"
    ports = home_of_its_own(home, "kafka")
    kafka_port, sasl = ports["kafka_port"], ports["kafka_sasl_port"]
    env = {**os.environ, "FINK_HOME": str(home)}
    try:
        proc = fink("services", "start", "kafka", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "kafka: started" in proc.stdout
        status = json.loads(fink("services", "status", "--json", "kafka", env=env).stdout)[0]
        assert status["state"] == "running"

        from confluent_kafka.admin import AdminClient

        # the service account's password: made at the first start, readable by its owner only
        secret = home / "secrets" / SERVICE_SECRET
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE((home / "services" / "kafka" / "server.properties").stat().st_mode) == 0o600
        password = service_password(home)
        assert password not in " ".join(status_command(home))  # not on the broker's command line
        conf = kafka.sasl_config(f"127.0.0.1:{kafka_port}", SERVICE_ACCOUNT, password)
        meta = AdminClient(conf).list_topics(timeout=10)
        assert [b.port for b in meta.brokers.values()] == [kafka_port]

        # a user removed, then a restart: every other credential is still there (before, the
        # removal was a SCRAM deletion, and KRaft lost every credential at the next restart)
        for name in ("keep", "gone"):
            assert fink("users", "add", name, env=env).returncode == 0
        assert fink("users", "remove", "gone", env=env).returncode == 0

        # a distribution starting as the broker goes away for longer than a client's usual 30 s
        # (its topics made, not yet its schemas and its transactional writer) waits for the broker
        monkeypatch.setenv("FINK_HOME", str(home))  # this process's clients: this home's broker and account
        bootstrap = f"127.0.0.1:{kafka_port}"
        for name, config in (("late", {}), ("late_schema", COMPACT), (LOG_TOPIC, COMPACT)):
            kafka.ensure_topic(bootstrap, name, config=config)
        monkeypatch.setattr(kafka, "ensure_topic", lambda *args, **kwargs: None)  # made: the outage starts after
        assert fink("services", "stop", "kafka", env=env).returncode == 0
        started, errors = time.monotonic(), []

        def starting(step):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        schema = '{"type": "record", "name": "a", "fields": []}'
        steps = [lambda: prepare_topics(bootstrap, [Encoding((), schema, (0,))], ["late"]),
                 lambda: BatchPublisher(bootstrap, "late-writer").publish(0, [("late", b"k", b"v")])]
        threads = [threading.Thread(target=starting, args=(step,)) for step in steps]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, 32 - (time.monotonic() - started)))
        restarted = fink("services", "start", "kafka", env=env)
        assert restarted.returncode == 0, restarted.stderr  # the service account logs in again
        for thread in threads:
            thread.join(180)
        assert not errors and not any(t.is_alive() for t in threads), errors
        assert committed(bootstrap, "late") == [(b"k", b"v")]
        assert committed(bootstrap, "late_schema") == [(schema.encode(), b"")]
        listed = fink("users", "list", "--json", env=env)
        assert set(json.loads(listed.stdout)) == {"fink-broker", "keep"}, listed.stdout + listed.stderr
        keep = kafka.sasl_config(f"127.0.0.1:{sasl}", "keep", (home / "secrets" / "users" / "keep").read_text().strip())
        assert AdminClient(keep).list_topics(timeout=10).brokers
        status = json.loads(fink("services", "status", "--json", "kafka", env=env).stdout)[0]

        # another home configured on the same ports: a one-line error naming the port
        other = tmp_path / "other"
        other.mkdir()
        (other / "services.yaml").write_text((home / "services.yaml").read_text())
        clash = fink("services", "start", "kafka", env={**env, "FINK_HOME": str(other)})
        assert clash.returncode == 1
        assert f"port 127.0.0.1:{kafka_port} (kafka_port) is already taken" in clash.stderr
    finally:
        stop = fink("services", "stop", "kafka", env=env)
    assert stop.returncode == 0 and "kafka: stopped" in stop.stdout, stop.stdout + stop.stderr
    assert process_start_time(status['pid']) is None
    assert fink("services", "status", "kafka", env=env).returncode == 3


def committed(bootstrap, topic):
    """(key, value) of every committed message of ``topic``'s partition 0."""
    consumer = Consumer(kafka.client_config(bootstrap, **{
        "group.id": "test", "enable.partition.eof": True, "isolation.level": "read_committed"}))
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out, deadline = [], time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() and msg.error().code() == KafkaError._PARTITION_EOF:
                return out
            if msg is not None and not msg.error():
                out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: not read to its end within 30 s")


def status_command(home):
    return json.loads((home / "services" / "kafka" / "pid.json").read_text())["command"]


def test_a_storage_formatted_without_the_service_account_is_migrated_and_a_wrong_password_is_a_clear_error(
        tmp_path, monkeypatch):
    from confluent_kafka.admin import AdminClient

    from fink.ops.services.kafka_server import KafkaService, cluster_id, run_tool

    home = tmp_path / "home"
    kafka_port = home_of_its_own(home, "kafka", start_timeout=90)["kafka_port"]
    monkeypatch.delenv("FINK_KAFKA_SERVICE", raising=False)  # the password is this home's file
    env = {**os.environ, "FINK_HOME": str(home)}
    bootstrap = f"127.0.0.1:{kafka_port}"
    # a storage as earlier versions formatted it: plaintext internal listeners, no account
    old = KafkaService(home=home)
    old._legacy = True
    old.run_dir.mkdir(parents=True)
    old.prepare()
    (old.run_dir / "log4j2.yaml").write_text("Configuration:\n  status: warn\n")
    old.data_dir.mkdir(parents=True)
    run_tool(old.run_dir, old.log_file,
             ["kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(old.conf_file)])
    try:
        old.start()
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until its future is done
        admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(30)
    finally:
        old.stop()
    try:
        proc = fink("services", "start", "kafka", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "no credential for fink-broker" in proc.stderr and "kafka: started" in proc.stdout
        conf = kafka.sasl_config(bootstrap, SERVICE_ACCOUNT, service_password(home))
        assert "kept" in AdminClient(conf).list_topics(timeout=10).topics
        plain = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        with pytest.raises(Exception):  # noqa: B017 - librdkafka's KafkaException (the connection is closed)
            plain.list_topics(timeout=5)
    finally:
        assert fink("services", "stop", "kafka", env=env).returncode == 0
    # the password file replaced behind the broker's back (and its digest with it): a clear error, no hang
    (home / "secrets" / SERVICE_SECRET).write_text("not-the-password\n")
    account = json.loads((home / "services" / "kafka" / "account.json").read_text())
    account["sha256"] = hashlib.sha256(b"not-the-password").hexdigest()
    (home / "services" / "kafka" / "account.json").write_text(json.dumps(account))
    t0 = time.monotonic()
    proc = fink("services", "start", "kafka", env=env)
    assert proc.returncode == 1 and "refuses the service account fink-broker" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 60
    assert fink("services", "status", "kafka", env=env).returncode == 3  # stopped, not left running


def test_failing_service_prints_its_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    port, controller, sasl = free_ports(3)
    config = ServicesConfig.from_mapping({"kafka_port": port, "kafka_controller_port": controller,
                                          "kafka_sasl_port": sasl})
    svc = services.select(["kafka"], home=tmp_path, config=config)[0]
    # storage that looks formatted but is not: Kafka refuses to start on it
    (tmp_path / "data" / "kafka").mkdir(parents=True)
    (tmp_path / "data" / "kafka" / "meta.properties").write_text("version=1\n")
    with pytest.raises(ServiceError) as info:
        svc.start()
    message = str(info.value)
    assert "kafka exited with status 1 while starting; last lines of its log:" in message, message
    assert "meta.properties" in message, message
    assert f"(full logs: {tmp_path / 'logs' / 'kafka.log'}, {tmp_path / 'logs' / 'kafka.out'})" in message
    assert svc.status().state == "stopped"
