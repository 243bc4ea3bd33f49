"""Processes and ports on this host: the facts the services, the runner and the table records
check (a process's start time, a port in use, the ``java`` to run, a log's tail).

Notes
-----
Processes are found again by the PID recorded at start, together with the process's
start time read from ``/proc``: a PID that the kernel has since given to another
program is recognised as stale instead of being signalled. Nothing is ever looked up
or killed by name pattern.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from fink.errors import ServiceError

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
