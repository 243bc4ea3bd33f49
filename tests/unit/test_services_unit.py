"""Process control of a service, on a real (tiny) JVM standing in for Kafka or HBase."""

import base64
import json
import os
import socket
import subprocess
import sys

import pytest

from fink.config import ServicesConfig
from fink.errors import ServiceError
from fink.ops.services.service import Service
from fink.processes import port_in_use, process_start_time

SLEEPER = """
public class Sleeper {
    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].equals("fail")) {
            System.out.println("cannot bind: bad config");
            System.exit(3);
        }
        if (args.length > 0 && args[0].equals("ignore-term")) {
            sun.misc.Signal.handle(new sun.misc.Signal("TERM"), s -> System.out.println("ignoring TERM"));
        }
        System.out.println("sleeper up");
        Thread.sleep(600_000);
    }
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SleeperService(Service):
    name = "sleeper"
    mode = "ok"

    def ports(self):
        return {"kafka_port": self.config.kafka_port}

    def java_args(self):
        return ["-Xmx32m", str(self.run_dir / "Sleeper.java"), self.mode]

    def prepare(self):
        (self.run_dir / "Sleeper.java").write_text(SLEEPER)

    def ready(self):
        return "sleeper up" in self.out_file.read_text()  # its console output


@pytest.fixture
def service(tmp_path):
    config = ServicesConfig.from_mapping({"kafka_port": free_port(), "start_timeout": 30.0, "stop_timeout": 2.0})
    svc = SleeperService(config, tmp_path)
    yield svc
    svc.config = ServicesConfig.from_mapping({**config.to_dict(), "stop_timeout": 1.0})
    svc.stop()


def test_start_is_idempotent_and_stop_is_graceful(service):
    service.config = ServicesConfig.from_mapping({**service.config.to_dict(), "stop_timeout": 15.0})  # a busy CI
    assert "started" in service.start()
    pid = service.status().pid
    assert service.status().state == "running"
    assert service.start() == f"sleeper: already running (pid {pid})"
    assert service.stop() == f"sleeper: stopped (pid {pid})"
    assert process_start_time(pid) is None
    assert service.status().state == "stopped"
    assert service.stop() == "sleeper: not running"


def test_stop_forces_after_timeout(service):
    service.mode = "ignore-term"
    service.start()
    pid = service.status().pid
    assert service.stop() == f"sleeper: killed after timeout (pid {pid})"
    assert process_start_time(pid) is None


def test_stale_pid_file_is_detected_and_replaced(service):
    # a PID file left by a process that is gone (here: one that already exited)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    service.run_dir.mkdir(parents=True)
    service.pid_file.write_text(json.dumps({"pid": dead.pid, "start_time": 1}))
    assert service.status().state == "stale"
    service.start()
    assert service.status().state == "running" and service.status().pid != dead.pid


def test_reused_pid_is_not_mistaken_for_the_service(service):
    # our own live process, recorded with another start time: a PID the kernel gave to someone else
    service.run_dir.mkdir(parents=True)
    service.pid_file.write_text(json.dumps({"pid": os.getpid(), "start_time": 1}))
    assert service.status().state == "stale"
    assert service.stop() == "sleeper: not running (stale PID file removed)"
    assert process_start_time(os.getpid()) is not None  # and we were not signalled


def test_taken_port_is_a_one_line_error(service):
    with socket.socket() as s:
        s.bind(("127.0.0.1", service.config.kafka_port))
        s.listen()
        assert port_in_use("127.0.0.1", service.config.kafka_port)
        with pytest.raises(ServiceError) as info:
            service.start()
    message = str(info.value)
    assert f"port 127.0.0.1:{service.config.kafka_port} (kafka_port) is already taken" in message
    assert "\n" not in message
    assert not service.pid_file.exists()


def test_missing_java_is_a_one_line_error(service, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceError, match="^java not found: install OpenJDK 17") as info:
        service.start()
    assert "\n" not in str(info.value)


def test_failed_start_shows_log_tail_and_where_the_rest_is(service):
    service.mode = "fail"
    with pytest.raises(ServiceError) as info:
        service.start()
    message = str(info.value)
    assert "sleeper exited with status 3 while starting" in message
    assert "cannot bind: bad config" in message
    assert f"(full logs: {service.log_file}, {service.out_file})" in message
    assert service.status().state == "stopped"


def test_a_kafka_cluster_id_never_starts_with_a_dash():
    """An id starting with "-" made the storage tool's format fail, one time in 64."""
    from fink.ops.services.kafka_server import cluster_id

    draws = iter([b"\xfb" + bytes(15), b"\xf8" + bytes(15)])  # base64 "-w..." first, then "-A..."
    assert base64.urlsafe_b64encode(b"\xfb" + bytes(15)).decode().startswith("-")
    with pytest.raises(StopIteration):
        cluster_id(lambda: next(draws))  # both refused: it keeps drawing
    draws = iter([b"\xfb" + bytes(15), bytes(16)])
    assert cluster_id(lambda: next(draws)) == "AAAAAAAAAAAAAAAAAAAAAA"
    ids = {cluster_id() for _ in range(2000)}
    assert len(ids) == 2000 and not any(i.startswith("-") for i in ids) and all(len(i) == 22 for i in ids)
