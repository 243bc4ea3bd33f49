"""A long-running JVM service controlled by its own PID file.

Notes
-----
Processes are found again by the PID recorded at start, together with the process's
start time read from ``/proc``: a PID that the kernel has since given to another
program is recognised as stale instead of being signalled. Nothing is ever looked up
or killed by name pattern.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fink.config import ServicesConfig, fink_home
from fink.errors import ServiceError
from fink.log import logger

LOG_TAIL_LINES = 25


def java_executable() -> str:
    """Return the ``java`` to run services with (``$JAVA_HOME/bin/java``, else ``java`` on PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ServiceError("java not found: install OpenJDK 17 (apt install openjdk-17-jre-headless) "
                           "or set JAVA_HOME")
    return found


def process_start_time(pid: int) -> int | None:
    """Return the kernel start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        # A zombie has exited, unless only its main thread has: a JVM shutting down shows
        # 'Z' for the leader while its other threads still run (and still hold ports).
        try:
            if len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return None
        except FileNotFoundError:
            return None
    return int(fields[19])


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on ``host:port`` (or the address cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: the size past which a service's console output is set aside (to ``<name>.out.1``) at its start
OUT_BYTES = 20 * 1024 * 1024


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


@dataclass
class Status:
    name: str
    state: str  # running | stopped | stale
    pid: int | None
    ports: dict[str, int]
    log: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Service:
    """Base class: subclasses give the command line, the preparation and a readiness probe."""

    name = "service"

    def __init__(self, config: ServicesConfig | None = None, home: Path | None = None):
        self.home = home or fink_home()
        self.config = config or ServicesConfig.load(self.home)
        self.run_dir = self.home / "services" / self.name
        self.pid_file = self.run_dir / "pid.json"
        self.log_file = self.home / "logs" / f"{self.name}.log"  # its own log, rolled at 20 MB, 3 kept
        self.out_file = self.home / "logs" / f"{self.name}.out"  # what the JVM prints (rolled at start)
        self._child: subprocess.Popen[bytes] | None = None

    def tail(self) -> str:
        """The last lines of its log and of its console output, and where to read them whole."""
        return f"{log_tail(self.log_file)}\n{log_tail(self.out_file)}\n(full logs: {self.log_file}, {self.out_file})"

    # -- to be provided by subclasses ---------------------------------------------------
    def ports(self) -> dict[str, int]:
        raise NotImplementedError

    def java_args(self) -> list[str]:
        """The ``java`` command line after the executable: options, classpath, main class."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration files and initialise storage before the first start."""

    def ready(self) -> bool:
        raise NotImplementedError

    # -- PID file -----------------------------------------------------------------------
    def _read_pid(self) -> tuple[int, int] | None:
        try:
            data = json.loads(self.pid_file.read_text())
            return int(data["pid"]), int(data["start_time"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return (-1, -1)  # unreadable: treated as stale

    def _reap(self, pid: int) -> None:
        """Collect the exit status of a process this object started (else it lingers as a zombie)."""
        if self._child is not None and self._child.pid == pid:
            self._child.poll()
            if self._child.returncode is not None:
                self._child = None

    def alive_pid(self) -> int | None:
        """Return the PID if the recorded process is this service's and still runs."""
        recorded = self._read_pid()
        if recorded is None:
            return None
        pid, started = recorded
        self._reap(pid)
        if pid > 0 and process_start_time(pid) == started:
            return pid
        return None

    def status(self) -> Status:
        pid = self.alive_pid()
        if pid is not None:
            state = "running"
        elif self.pid_file.exists():
            state = "stale"
        else:
            state = "stopped"
        return Status(self.name, state, pid, self.ports(), str(self.log_file))

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> str:
        """Start the service and wait until it answers; return what was done.

        Idempotent: a running service is left alone. Raises :class:`ServiceError` with the
        end of the log if the process dies or does not answer within ``start_timeout``.
        """
        pid = self.alive_pid()
        if pid is not None:
            return f"{self.name}: already running (pid {pid})"
        if self.pid_file.exists():
            logger.warning("%s: removing stale PID file %s", self.name, self.pid_file)
            self.pid_file.unlink()
        java = java_executable()
        for key, port in self.ports().items():
            if port_in_use(self.config.host, port):
                raise ServiceError(
                    f"{self.name}: port {self.config.host}:{port} ({key}) is already taken by another process; "
                    f"stop it or choose another port with '{key}:' in {self.home / 'services.yaml'}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = [java, f"-Dfink.log.file={self.log_file}", *self.java_args()]
        if self.out_file.exists() and self.out_file.stat().st_size > OUT_BYTES:
            self.out_file.replace(self.out_file.with_name(self.out_file.name + ".1"))
        with open(self.out_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self._child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           cwd=self.run_dir, start_new_session=True)
        started = process_start_time(self._child.pid)
        self.pid_file.write_text(json.dumps({"pid": self._child.pid, "start_time": started,
                                             "ports": self.ports(), "command": cmd}))
        t0 = time.monotonic()
        deadline = t0 + self.config.start_timeout
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(f"{self.name} exited with status {self._child.returncode} while starting; "
                                   f"last lines of its log:\n{self.tail()}")
            if self.ready():
                return f"{self.name}: started (pid {self._child.pid}) in {time.monotonic() - t0:.1f} s"
            time.sleep(0.5)
        self.stop()
        raise ServiceError(f"{self.name} did not answer within {self.config.start_timeout:.0f} s; "
                           f"last lines of its log:\n{self.tail()}")

    def stop(self) -> str:
        """Stop the recorded process: SIGTERM, then SIGKILL after ``stop_timeout``."""
        pid = self.alive_pid()
        if pid is None:
            stale = self.pid_file.exists()
            self.pid_file.unlink(missing_ok=True)
            return f"{self.name}: not running" + (" (stale PID file removed)" if stale else "")
        os.kill(pid, signal.SIGTERM)
        if self._wait_gone(pid, self.config.stop_timeout):
            how = "stopped"
        else:
            logger.warning("%s: pid %d ignored SIGTERM for %.0f s, killing it",
                           self.name, pid, self.config.stop_timeout)
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)
            how = "killed after timeout"
        self.pid_file.unlink(missing_ok=True)
        return f"{self.name}: {how} (pid {pid})"

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        started = self._read_pid()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(pid)
            if started is None or process_start_time(pid) != started[1]:
                self._reap(pid)  # it may have turned zombie between the two calls
                return True
            time.sleep(0.2)
        return False
