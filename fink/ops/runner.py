"""Notebook services: ``fink start|stop|show``.

A service is a notebook of ``notebooks/`` run headless by papermill with a parameters
file from ``conf/``, in the background. Each run keeps its folder under
``$FINK_HOME/runs/<service>/<timestamp>/``: the executed notebook, the log, the
parameters and the stop file the notebook polls (:func:`fink.runtime.streaming.run_until`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fink.config import FinkConfig, fink_home, project_dir
from fink.errors import ConfigError, RunnerError
from fink.log import logger
from fink.processes import process_start_time

# the services this process started, by PID: kept (a Popen dropped while its child runs warns)
# and reaped when they end (an unreaped child stays a zombie of this process)
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class Run:
    """A started notebook service."""

    service: str
    pid: int
    start_time: int  # kernel start time of pid, to tell a reused PID apart
    started_at: str
    run_dir: str
    notebook: str

    @property
    def stop_file(self) -> Path:
        return Path(self.run_dir) / "STOP"

    @property
    def run_id(self) -> str:
        """The run's name in the metrics store (``FINK_RUN`` of its kernel)."""
        return f"{self.service}-{Path(self.run_dir).name}"

    def alive(self) -> bool:
        child = _CHILDREN.get(self.pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[self.pid]
            return False
        return process_start_time(self.pid) == self.start_time


def notebooks_dir() -> Path:
    """Return where service notebooks are found (``$FINK_NOTEBOOKS``, else the project's ``notebooks/``,
    :func:`fink.config.project_dir`)."""
    return Path(os.environ.get("FINK_NOTEBOOKS") or project_dir() / "notebooks")


def _state_file(service: str, home: Path) -> Path:
    return home / "run" / f"{service}.json"


def _load(service: str, home: Path) -> Run | None:
    try:
        return Run(**json.loads(_state_file(service, home).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise RunnerError(f"{_state_file(service, home)}: unreadable run record ({exc}); delete it") from exc


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """Return the parameters a notebook declares (papermill's inspection of its tagged cell)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def resolve_parameters(notebook: Path, conf: str | None, simulator: bool) -> dict[str, Any]:
    """Read ``conf`` and check every key against the notebook and the typed config.

    papermill only warns about a parameter the notebook does not declare; here it is an
    error naming the key, before anything starts.
    """
    params: dict[str, Any] = {}
    if conf:
        path = Path(conf)
        try:
            params = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read parameters file ({exc.strerror})") from exc
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: expected a mapping of parameter: value")
    declared = notebook_parameters(notebook)
    for key in params:
        if key not in declared:
            raise ConfigError(f"{conf}: unknown parameter '{key}' for {notebook.name} "
                              f"(it declares: {', '.join(declared)})")
    FinkConfig.from_mapping({k: v for k, v in params.items() if k in FinkConfig.field_names()}, source=str(conf))
    if simulator:
        if "simulator" not in declared:
            raise RunnerError(f"{notebook.stem} does not read from the simulator (no 'simulator' parameter)")
        params["simulator"] = True
    if "stop_file" not in declared:
        raise RunnerError(f"{notebook}: a service notebook must declare a 'stop_file' parameter, "
                          "polled through fink.runtime.streaming.run_until, so that `fink stop` can end it")
    return params


#: run folders kept per service (the oldest go when a new run starts), and days of metrics kept
RUNS_KEPT, METRICS_DAYS = 20, 30.0


def _retire(home: Path, service: str) -> None:
    """Bound what runs leave behind: the ``RUNS_KEPT`` newest run folders of ``service``
    stay (their notebooks, logs and pages), and the metrics store forgets what is older
    than ``METRICS_DAYS``."""
    import shutil

    from fink.runtime import metrics

    folders = sorted((p for p in (home / "runs" / service).glob("*") if p.is_dir()), key=lambda p: p.name)
    for old in folders[:max(0, len(folders) - (RUNS_KEPT - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    try:
        metrics.Store(metrics.default_path(home)).prune(METRICS_DAYS)
    except Exception as exc:  # noqa: BLE001 - a full or locked store must not stop a start
        logger.warning("metrics: could not prune the store: %s", exc)


def start(service: str, conf: str | None = None, simulator: bool = False, home: Path | None = None,
          params: dict[str, Any] | None = None) -> Run:
    """Run ``notebooks/<service>.ipynb`` headless in the background; return its record.

    ``params`` override the parameters file (``fink start ... -p key=value``); every key
    must be a parameter of the notebook.
    """
    home = home or fink_home()
    notebook = notebooks_dir() / f"{service}.ipynb"
    if not notebook.exists():
        known = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
        raise RunnerError(f"no service '{service}': {notebook} does not exist (services: {', '.join(known)})")
    current = _load(service, home)
    if current is not None and current.alive():
        raise RunnerError(f"{service} is already running (pid {current.pid}, {current.run_dir}); "
                          f"`fink stop {service}` first")
    if current is not None:
        _forget(current, home)
    _refuse_sharing(service, home)
    if params_override := dict(params or {}):
        declared = notebook_parameters(notebook)
        unknown = sorted(set(params_override) - set(declared))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {notebook.name} "
                              f"(it declares: {', '.join(declared)})")
    params = {**resolve_parameters(notebook, conf, simulator), **params_override}
    _retire(home, service)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = home / "runs" / service / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = home / "runs" / service / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    params["stop_file"] = str(run_dir / "STOP")
    (run_dir / "parameters.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    with open(run_dir / "log.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fink.ops.runner", str(notebook), str(run_dir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                env={**os.environ, "FINK_HOME": str(home), "FINK_SERVICE": service,
                                     "FINK_RUN": f"{service}-{run_dir.name}",  # Run.run_id
                                     "FINK_RUN_DIR": str(run_dir)})
    _CHILDREN[proc.pid] = proc
    run = Run(service, proc.pid, process_start_time(proc.pid) or 0, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              str(run_dir), str(notebook))
    _register(run, home)
    state = _state_file(service, home)
    state.parent.mkdir(parents=True, exist_ok=True)
    # written whole, then renamed: a `fink start` or `fink show` running at the same time never reads half of it
    partial = state.with_name(f".{state.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(asdict(run)))
        os.replace(partial, state)
    finally:
        partial.unlink(missing_ok=True)
    return run


def _refuse_sharing(service: str, home: Path) -> None:
    """The pipeline service and the stage services share checkpoints: never both at once."""
    from fink.stages.pipeline import STAGES

    if service != "pipeline" and service not in STAGES:
        return
    clash = [r.service for r in running(home)
             if (service == "pipeline" and r.service in STAGES) or (service in STAGES and r.service == "pipeline")]
    if clash:
        raise RunnerError(f"{service} would share checkpoints and outputs with {', '.join(clash)}, which is "
                          f"running; `fink stop {' '.join(clash)}` first")


def running(home: Path | None = None) -> list[Run]:
    """Return the services whose process is alive (stale records are removed)."""
    home = home or fink_home()
    runs = []
    for state in sorted((home / "run").glob("*.json")):
        run = _load(state.stem, home)
        if run is not None and run.alive():
            runs.append(run)
        elif run is not None:
            _forget(run, home)
        else:
            state.unlink(missing_ok=True)
    return runs


def _register(run: Run, home: Path) -> None:
    """Record the run in the metrics store now: one killed before its process reached its own
    ``begin_run`` (a loaded machine: seconds) is then still there, and marked lost by :func:`_forget`."""
    from fink.runtime import metrics

    try:
        metrics.Store(metrics.default_path(home)).begin_run(run.run_id, run.service, run.pid, run.run_dir)
    except Exception as exc:  # noqa: BLE001 - the store is informative; the run goes on without it
        logger.warning("metrics: could not record the run %s: %s", run.run_id, exc)


def _forget(run: Run, home: Path) -> None:
    """Drop the record of a run whose process is gone; one that wrote no status was killed: say so."""
    _state_file(run.service, home).unlink(missing_ok=True)
    if not (Path(run.run_dir) / "status.json").exists():
        from fink.runtime import metrics

        try:
            metrics.Store(metrics.default_path(home)).end_run(
                run.run_id, "lost",
                "the process ended without recording how (killed, or the machine stopped)")
        except Exception as exc:  # noqa: BLE001 - the store is informative; the run is gone either way
            logger.warning("metrics: could not record the run %s as lost: %s", run.run_id, exc)


def describe(run: Run, store: Any = None) -> dict[str, Any]:
    """What ``fink show`` says of a running service: process, uptime, state and its latest batch.

    ``state`` is ``stopping`` (its stop file exists), ``starting`` (no batch yet),
    ``processing`` (its latest batch read alerts) or ``waiting`` (its latest batch was empty).
    """
    from fink.runtime import metrics

    store = store or metrics.Store(metrics.default_path(Path(run.run_dir).parents[2]))
    try:
        last = store.last_batch(run.run_id)
    except Exception as exc:  # noqa: BLE001 - an unreadable store must not hide the running services
        last, note = None, f"metrics unreadable: {exc}"
    else:
        note = None
    started = time.mktime(time.strptime(run.started_at[:19], "%Y-%m-%dT%H:%M:%S"))
    if run.stop_file.exists():
        state = "stopping"
    elif last is None:
        state = "starting"
    else:
        idle_since_batch = (last["idle"] or 0) > last["time"] + (last["duration_s"] or 0)
        state = "processing" if last["input_rows"] and not idle_since_batch else "waiting"
    info: dict[str, Any] = {"service": run.service, "pid": run.pid, "started_at": run.started_at,
                            "uptime_s": round(time.time() - started, 1), "state": state, "run_dir": run.run_dir}
    if note:
        info["note"] = note
    if last is not None:
        info.update(query=last["query"], batches=last["batches"], rows_in=last["rows"],
                    input_rate=round(last["input_rate"], 1), processed_rate=round(last["processed_rate"], 1),
                    last_batch=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last["time"])),
                    last_batch_s=last["duration_s"], lag=last["lag"], latency_p50_s=last["latency_p50"],
                    latency_p95_s=last["latency_p95"])
    return info


def stop(service: str, timeout: float = 60.0, home: Path | None = None) -> str:
    """Ask ``service`` to stop through its stop file; signal its process group after ``timeout``."""
    home = home or fink_home()
    if service == "all":  # every stop file first: the services end together, not one after another
        runs = running(home)
        for r in runs:
            r.stop_file.touch()
        return "\n".join(stop(r.service, timeout, home) for r in runs) or "no service running"
    run = _load(service, home)
    if run is None or not run.alive():
        _state_file(service, home).unlink(missing_ok=True)
        if run is not None and run.stop_file.exists():  # asked to stop (`fink stop all`), and it did
            return f"{service}: stopped cleanly (pid {run.pid}, {run.run_dir})"
        return f"{service}: not running"
    run.stop_file.touch()
    how = "stopped cleanly"
    if not _wait(run, timeout):
        # the run is its own session and process group: papermill and its kernel, nothing else
        os.killpg(run.pid, signal.SIGTERM)
        how = "terminated after timeout"
        if not _wait(run, 10):
            os.killpg(run.pid, signal.SIGKILL)
            _wait(run, 10)
            how = "killed after timeout"
    _state_file(service, home).unlink(missing_ok=True)
    return f"{service}: {how} (pid {run.pid}, {run.run_dir})"


def wait(run: Run, timeout: float) -> bool:
    """Wait until ``run``'s process ends (True) or ``timeout`` seconds pass (False)."""
    ok = _wait(run, timeout)
    if ok:
        _state_file(run.service, Path(run.run_dir).parents[2]).unlink(missing_ok=True)
    return ok


def _wait(run: Run, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.alive():
            return True
        time.sleep(0.2)
    return not run.alive()


def _execute(notebook: str, run_dir: str) -> int:
    """Body of the background process: execute the notebook and record how it ended."""
    import logging

    import papermill

    # papermill logs each cell's output through its logger: into this run's log.txt
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from fink.runtime import metrics

    out = Path(run_dir)
    params = yaml.safe_load((out / "parameters.yaml").read_text()) or {}
    t0 = time.time()
    status: dict[str, Any] = {"notebook": notebook, "started": t0}
    service, run = metrics.run_identity(Path(notebook).stem)
    store = metrics.Store()
    store.begin_run(run, service, os.getpid(), run_dir, t0)
    try:
        papermill.execute_notebook(notebook, str(out / "output.ipynb"), parameters=params, log_output=True,
                                   progress_bar=False, cwd=str(Path(notebook).parent))
        status["state"] = "finished"
        code = 0
    except Exception as exc:  # noqa: BLE001 - recorded for `fink show` and the log, then exit 1
        # a cell's exception: its own name and message first (papermill's text is the traceback)
        what = f"{exc.ename}: {exc.evalue}" if hasattr(exc, "ename") else f"{type(exc).__name__}: {exc}"
        status.update(state="failed", error=what[:2000])
        print(status["error"], file=sys.stderr)
        code = 1
    if (out / "STOP").exists() and code == 0:
        status["state"] = "stopped"
    status["seconds"] = round(time.time() - t0, 1)
    try:  # a page a person can read without Jupyter: the executed notebook, its plots inline
        export_html(out / "output.ipynb", out / "output.html")
        status["html"] = str(out / "output.html")
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more than its page
        print(f"HTML export failed: {exc}", file=sys.stderr)
    (out / "status.json").write_text(json.dumps(status, indent=1))
    store.end_run(run, status["state"], status.get("error"))
    return code


def export_html(executed: str | Path, html: str | Path) -> Path:
    """Write an executed notebook as one self-contained HTML page (images embedded)."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    body, _ = nbconvert.HTMLExporter(embed_images=True).from_notebook_node(nb)
    Path(html).write_text(body)
    return Path(html)


if __name__ == "__main__":
    sys.exit(_execute(sys.argv[1], sys.argv[2]))
