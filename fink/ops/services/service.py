"""A long-running JVM service controlled by its own PID file.

Notes
-----
A service is found again by the PID recorded at start, with the process's start time
(:func:`fink.processes.process_start_time`): a PID that the kernel has since given to
another program is recognised as stale instead of being signalled. Nothing is ever looked
up or killed by name pattern.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fink.config import ServicesConfig, fink_home
from fink.errors import ServiceError
from fink.log import logger
from fink.processes import OUT_BYTES, java_executable, log_tail, port_in_use, process_start_time


@dataclass
class Status:
    name: str
    state: str  # running | stopped | stale
    pid: int | None
    ports: dict[str, int]
    log: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_pid_file(path: Path) -> tuple[int, int] | None:
    """``(pid, start time)`` recorded at start; None without a file, ``(-1, -1)`` for an unreadable one."""
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), int(data["start_time"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return (-1, -1)  # unreadable: treated as stale


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

    def environment(self) -> dict[str, str]:
        """Variables added to the process's environment (none by default)."""
        return {}

    # -- PID file -----------------------------------------------------------------------
    def _read_pid(self) -> tuple[int, int] | None:
        return read_pid_file(self.pid_file)

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
                                           cwd=self.run_dir, start_new_session=True,
                                           env={**os.environ, **self.environment()})
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
