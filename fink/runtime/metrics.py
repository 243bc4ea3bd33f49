"""Metrics that outlive the process: every stage's streaming progress in one SQLite store.

Notes
-----
Each Spark session that starts a query through :func:`fink.runtime.streaming.start` gets a
:class:`MetricsListener` (a ``StreamingQueryListener``). It writes every progress report,
with what the stage's sink noted for the same batch (:func:`note`), into
``$FINK_HOME/metrics/metrics.db``. SQLite in WAL mode lets ``fink show``, the dashboard
and other processes read while four stages write; each write is one short transaction.

A run is one execution of a service: ``fink start`` names it (``FINK_SERVICE``,
``FINK_RUN`` in the environment of the notebook's kernel); an interactive notebook gets a
run of its own, named after its Spark application and process.

Per-alert latency comes from the stage's observed metrics named :data:`LATENCY`: the
percentiles (:data:`QUANTILES`) of the seconds from the alert's Kafka timestamp (when it
entered the broker's input topic) to the moment the stage handled it (see
:func:`observe_latency`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import fink_home
from fink.io import table_use
from fink.log import logger

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame, SparkSession

#: name of the observed metrics holding the latency percentiles of a batch
LATENCY = "latency"
#: latency quantiles recorded per batch
QUANTILES = (0.5, 0.95, 0.99)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, service TEXT NOT NULL, pid INTEGER, host TEXT, started REAL, ended REAL,
    state TEXT, error TEXT, run_dir TEXT, idle REAL);
CREATE TABLE IF NOT EXISTS progress (
    run TEXT NOT NULL, query TEXT NOT NULL, batch INTEGER NOT NULL, time REAL NOT NULL,
    input_rows INTEGER, input_rate REAL, processed_rate REAL, duration_s REAL, lag INTEGER,
    latency_p50 REAL, latency_p95 REAL, latency_p99 REAL, lag_topics TEXT, observed TEXT, report TEXT,
    PRIMARY KEY (run, query, batch));
CREATE TABLE IF NOT EXISTS notes (
    run TEXT NOT NULL, query TEXT NOT NULL, batch INTEGER NOT NULL, time REAL NOT NULL, value TEXT,
    PRIMARY KEY (run, query, batch));
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL, query TEXT, time REAL NOT NULL, kind TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS progress_time ON progress (time);
"""


def default_path(home: Path | None = None) -> Path:
    """``$FINK_HOME/metrics/metrics.db``."""
    return (home or fink_home()) / "metrics" / "metrics.db"


def epoch(iso: str | None) -> float:
    """Seconds since the epoch of Spark's progress timestamps (``2026-11-28T06:44:47.262Z``)."""
    from datetime import datetime

    if not iso:
        return time.time()
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def lag_per_topic(progress: dict) -> dict[str, int]:
    """Messages not yet read, per topic: each Kafka source's latest offsets minus where the batch ended."""
    lags: dict[str, int] = {}
    for source in progress.get("sources") or []:
        latest, end = _offsets(source.get("latestOffset")), _offsets(source.get("endOffset"))
        if latest is None or end is None:
            continue
        for topic, partitions in latest.items():
            done = end.get(topic, {})
            lags[topic] = lags.get(topic, 0) + sum(max(0, int(n) - int(done.get(p, 0))) for p, n in partitions.items())
    return lags


def _offsets(value: Any) -> dict[str, dict[str, int]] | None:
    """A Kafka source offset (a JSON string or a mapping ``{topic: {partition: offset}}``), else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        return None
    return value


def flatten(progress: dict) -> dict[str, Any]:
    """One progress report (``StreamingQueryProgress.json``) as the columns of the ``progress`` table."""
    observed = progress.get("observedMetrics") or {}
    latency = (observed.get(LATENCY) or {}).get("latency_s") or []
    latency = list(latency) + [None] * (len(QUANTILES) - len(latency))
    lags = lag_per_topic(progress)
    total_lag = [s.get("metrics", {}).get("maxOffsetsBehindLatest") for s in progress.get("sources") or []]
    total_lag = [int(float(v)) for v in total_lag if v is not None]
    duration = (progress.get("durationMs") or {}).get("triggerExecution")
    return {
        "query": progress.get("name") or progress.get("id") or "?",
        "batch": int(progress.get("batchId", -1)),
        "time": epoch(progress.get("timestamp")),
        "input_rows": int(progress.get("numInputRows") or 0),
        "input_rate": float(progress.get("inputRowsPerSecond") or 0.0),
        "processed_rate": float(progress.get("processedRowsPerSecond") or 0.0),
        "duration_s": None if duration is None else duration / 1000.0,
        "lag": sum(lags.values()) if lags else (sum(total_lag) if total_lag else None),
        "latency_p50": latency[0], "latency_p95": latency[1], "latency_p99": latency[2],
        "lag_topics": json.dumps(lags) if lags else None,
        "observed": json.dumps({k: v for k, v in observed.items() if k != LATENCY}, default=str),
    }


class Store:
    """The metrics database: written by the stages' listeners, read by ``fink show`` and the dashboard.

    Parameters
    ----------
    path
        SQLite file (default :func:`default_path`); created with its folder on first write.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path else default_path()
        self._ready = False

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
                columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
                if "idle" not in columns:  # a store written before runs had their idle time
                    conn.execute("ALTER TABLE runs ADD COLUMN idle REAL")
                self._ready = True
            with conn:  # one transaction
                yield conn
        finally:
            conn.close()

    # -- writing ---------------------------------------------------------------------------

    def begin_run(self, run: str, service: str, pid: int | None = None, run_dir: str = "",
                  started: float | None = None) -> None:
        """Record that ``run`` of ``service`` started (a second call keeps the first start time)."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO runs (run, service, pid, host, started, state, run_dir) "
                       "VALUES (?, ?, ?, ?, ?, 'running', ?)",
                       (run, service, pid or os.getpid(), socket.gethostname(), started or time.time(), run_dir))

    def prune(self, days: float = 30.0) -> int:
        """Forget what is older than ``days``: runs that ended before (with their batches,
        notes and events), and the batches, notes and events of longer runs; return how many
        rows went. ``fink start`` calls it, so the store does not grow without end."""
        cutoff = time.time() - days * 86400
        with self._db() as db:
            old = "SELECT run FROM runs WHERE ended IS NOT NULL AND ended < ?"
            n = 0
            for table in ("progress", "notes", "events"):
                n += db.execute(f"DELETE FROM {table} WHERE run IN ({old}) OR time < ?", (cutoff, cutoff)).rowcount
            n += db.execute("DELETE FROM runs WHERE ended IS NOT NULL AND ended < ?", (cutoff,)).rowcount
        return n

    def end_run(self, run: str, state: str, error: str | None = None) -> None:
        """Record how ``run`` ended (``finished``, ``failed``, ``stopped``...)."""
        with self._db() as db:
            db.execute("UPDATE runs SET ended = ?, state = ?, error = ? WHERE run = ?",
                       (time.time(), state, error, run))

    def add_progress(self, run: str, *reports: dict) -> None:
        """Store progress reports of queries of ``run`` (several: in one transaction)."""
        with self._db() as db:
            for progress in reports:
                row = flatten(progress)
                row["report"] = json.dumps(progress, default=str)
                db.execute(f"INSERT OR REPLACE INTO progress (run, {', '.join(row)}) VALUES (?{', ?' * len(row)})",
                           (run, *row.values()))

    def add_note(self, run: str, query: str, batch: int, value: dict) -> None:
        """Store what a sink did with one batch (archived, delivered, written...)."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO notes VALUES (?, ?, ?, ?, ?)",
                       (run, query, int(batch), time.time(), json.dumps(value, default=str)))

    def idle(self, run: str, when: float | None = None) -> None:
        """Record that a query of ``run`` found no new data (Spark's idle event)."""
        with self._db() as db:
            db.execute("UPDATE runs SET idle = ? WHERE run = ?", (when or time.time(), run))

    def add_event(self, run: str, query: str | None, kind: str, detail: str | None = None) -> None:
        """Store a query's start or end (``detail``: the exception of a failed query)."""
        with self._db() as db:
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (run, query, time.time(), kind, detail))

    # -- reading ---------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, args)]

    def runs(self, service: str | None = None, since: float | None = None,
             until: float | None = None) -> list[dict[str, Any]]:
        """Runs (newest first), of ``service`` and started in ``[since, until)`` if given."""
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if service:
            sql, args = sql + " AND service = ?", [*args, service]
        if since is not None:
            sql, args = sql + " AND started >= ?", [*args, since]
        if until is not None:
            sql, args = sql + " AND started < ?", [*args, until]
        return self._rows(sql + " ORDER BY started DESC", tuple(args))

    def batches(self, runs: list[str] | None = None, since: float | None = None) -> "pd.DataFrame":
        """Every stored batch of ``runs`` (all runs by default), oldest first, as a DataFrame.

        Columns: run, service, query, batch, time (UTC), input_rows, input_rate,
        processed_rate, duration_s, lag, latency_p50/p95/p99, lag_topics (dict), observed
        (dict: the stage's observed metrics), note (dict: what its sink recorded).
        """
        import pandas as pd

        sql = ("SELECT p.run, r.service, p.query, p.batch, p.time, p.input_rows, p.input_rate, p.processed_rate, "
               "p.duration_s, p.lag, p.latency_p50, p.latency_p95, p.latency_p99, p.lag_topics, p.observed, "
               "n.value AS note FROM progress p LEFT JOIN runs r ON r.run = p.run "
               "LEFT JOIN notes n ON n.run = p.run AND n.query = p.query AND n.batch = p.batch WHERE 1=1")
        args: list[Any] = []
        if runs is not None:
            sql += f" AND p.run IN ({', '.join('?' * len(runs))})"
            args += runs
        if since is not None:
            sql += " AND p.time >= ?"
            args.append(since)
        rows = self._rows(sql + " ORDER BY p.time", tuple(args))
        columns = ["run", "service", "query", "batch", "time", "input_rows", "input_rate", "processed_rate",
                   "duration_s", "lag", "latency_p50", "latency_p95", "latency_p99", "lag_topics", "observed", "note"]
        df = pd.DataFrame(rows, columns=columns)
        for col in ("lag_topics", "observed", "note"):
            df[col] = [json.loads(v) if v else {} for v in df[col]]
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    def notes(self, runs: list[str] | None = None, query: str | None = None) -> list[dict[str, Any]]:
        """What sinks and services noted (``value`` decoded), oldest first."""
        sql, args = "SELECT * FROM notes WHERE 1=1", []
        if runs is not None:
            sql += f" AND run IN ({', '.join('?' * len(runs))})"
            args += runs
        if query:
            sql, args = sql + " AND query = ?", [*args, query]
        rows = self._rows(sql + " ORDER BY time", tuple(args))
        return [{**r, "value": json.loads(r["value"]) if r["value"] else {}} for r in rows]

    def events(self, run: str) -> list[dict[str, Any]]:
        """Query starts and ends of ``run``, oldest first."""
        return self._rows("SELECT * FROM events WHERE run = ? ORDER BY time", (run,))

    def last_batch(self, run: str) -> dict[str, Any] | None:
        """The newest stored progress of ``run`` (any of its queries), the run's totals and last idle time."""
        rows = self._rows("SELECT query, batch, time, input_rows, input_rate, processed_rate, duration_s, lag, "
                          "latency_p50, latency_p95 FROM progress WHERE run = ? ORDER BY time DESC LIMIT 1", (run,))
        if not rows:
            return None
        totals = self._rows("SELECT COUNT(*) AS batches, SUM(input_rows) AS rows FROM progress WHERE run = ?",
                            (run,))[0]
        idle = self._rows("SELECT idle FROM runs WHERE run = ?", (run,))
        return {**rows[0], **totals, "idle": idle[0]["idle"] if idle else None}


# -- the listener ------------------------------------------------------------------------


@dataclass
class Recorder:
    """Where this process's streaming metrics go: the store and the run they belong to."""

    store: Store
    run: str
    service: str

    def progress(self, report: dict) -> None:
        self.store.add_progress(self.run, report)

    def note(self, query: str, batch: int, value: dict) -> None:
        self.store.add_note(self.run, query, batch, value)


_RECORDER: Recorder | None = None
#: queries whose accounts of their batches their steps record (:func:`record`), not Spark's reports
_SELF_REPORTED: set[str] = set()
_ATTACHED: set[int] = set()
_LOCK = threading.Lock()


class Clock:
    """Seconds spent in each step of a batch (``laps``: step -> seconds), for its note."""

    def __init__(self):
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


def note(query: str, batch: int, value: dict) -> None:
    """Record what a stage's sink did with one batch; nothing if no recorder (never raises)."""
    rec = _RECORDER
    if rec is None:
        return
    try:
        rec.note(query, batch, value)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a stage
        logger.warning("metrics: could not record batch %s of %s: %s", batch, query, exc)


def self_reported(query: str) -> None:
    """From now on, the progress of ``query`` is what its step records (:func:`record`):
    Spark's own reports of it, which lack the step's counts, are not stored over them."""
    _SELF_REPORTED.add(query)


def record(report: dict) -> None:
    """Store a progress report this process made itself (a one-pass stage's account of a
    batch, :func:`fink.stages.step.report`); nothing if no recorder (never raises)."""
    rec = _RECORDER
    if rec is None:
        return
    try:
        rec.progress(report)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a stage
        logger.warning("metrics: could not record batch %s of %s: %s", report.get("batchId"), report.get("name"), exc)


def run_identity(app_name: str = "notebook") -> tuple[str, str]:
    """``(service, run)``: from ``fink start`` (``FINK_SERVICE``, ``FINK_RUN``), else an interactive run."""
    service = os.environ.get("FINK_SERVICE") or app_name
    run = os.environ.get("FINK_RUN") or f"{service}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return service, run


def process_recorder(app_name: str = "notebook", store: Store | None = None) -> Recorder:
    """This process's recorder, created (and its run stored) on first call; Spark not needed.

    For services without a streaming query (the simulator) to store what they did.
    """
    global _RECORDER
    with _LOCK:
        if _RECORDER is None:
            service, run = run_identity(app_name)
            _RECORDER = Recorder(store or Store(), run, service)
            _RECORDER.store.begin_run(run, service, run_dir=os.environ.get("FINK_RUN_DIR", ""))
        return _RECORDER


def _listener_class():
    from pyspark.sql.streaming import StreamingQueryListener

    class MetricsListener(StreamingQueryListener):
        """Writes each query event of the session into the metrics store (errors are logged, never raised)."""

        def __init__(self, rec: Recorder):
            self.rec = rec
            self.names: dict[str, str] = {}  # query id -> name (idle and end events give only the id)

        def _safely(self, what: str, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a metrics failure must not touch the query
                logger.warning("metrics: could not record %s: %s", what, exc)

        def onQueryStarted(self, event) -> None:  # noqa: N802 - Spark's names
            self.names[str(event.id)] = event.name
            self._safely("a query's tables", table_use.started, event.name or "", str(event.id))
            self._safely("a query start", self.rec.store.add_event, self.rec.run, event.name, "started", str(event.id))

        def onQueryProgress(self, event) -> None:  # noqa: N802
            self._safely("a heartbeat", table_use.beat, str(event.progress.id))  # the tables it uses: still in use
            if event.progress.name in _SELF_REPORTED:  # its step records its accounts (record())
                return
            self._safely("a progress report", self.rec.progress, json.loads(event.progress.json))

        def onQueryIdle(self, event) -> None:  # noqa: N802
            self._safely("a heartbeat", table_use.beat, str(event.id))
            self._safely("an idle event", self.rec.store.idle, self.rec.run, epoch(event.timestamp))

        def onQueryTerminated(self, event) -> None:  # noqa: N802
            self._safely("a query's tables released", table_use.ended, self.names.pop(str(event.id), ""),
                         str(event.id))
            kind = "failed" if event.exception else "terminated"
            self._safely("a query end", self.rec.store.add_event, self.rec.run, None, kind,
                         (event.exception or str(event.id))[:4000])

    return MetricsListener


def attach(spark: "SparkSession", store: Store | None = None) -> Recorder:
    """Register the metrics listener on ``spark`` once; return this process's recorder."""
    rec = process_recorder(spark.sparkContext.appName, store)
    with _LOCK:
        key = id(spark.sparkContext._jsc)
        if key not in _ATTACHED:
            spark.streams.addListener(_listener_class()(rec))
            _ATTACHED.add(key)
        return rec


def catch_up(progress: Mapping[str, Iterable[Mapping[str, Any]]]) -> int:
    """Store the recent progress reports of stopped queries (``{query: reports}``, as
    :func:`fink.runtime.streaming.run_until` gathers them), in one transaction; return how many.

    The listener gets its events asynchronously: a process that ends right after its query
    would lose the last batches' reports. Storing a report twice rewrites the same row.
    """
    rec = _RECORDER
    # pyspark 4's StreamingQueryProgress is a dict of objects (Row, SourceProgress): its JSON is the report
    reports = [json.loads(r.json) if hasattr(r, "json") else dict(r) for reports in progress.values() for r in reports]
    if rec is None or not reports:
        return 0
    try:
        rec.store.add_progress(rec.run, *reports)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a stage
        logger.warning("metrics: could not record the last progress reports of %s: %s", ", ".join(progress), exc)
        return 0
    return len(reports)


def observe_latency(df: "DataFrame", until: "Column | str | None" = None,
                    since: str = "kafka_timestamp") -> "DataFrame":
    """Add the batch's latency percentiles to the query's metrics (observed as :data:`LATENCY`).

    Latency of an alert: seconds from ``since`` (its Kafka timestamp: ``kafka_timestamp`` in
    the archives, ``timestamp`` on a Kafka source) to ``until`` (a timestamp column, or the
    batch's start time when None).
    """
    from pyspark.sql import functions as F

    end = F.current_timestamp() if until is None else (F.col(until) if isinstance(until, str) else until)
    seconds = (F.unix_micros(end) - F.unix_micros(F.col(since))) / 1e6
    return df.observe(LATENCY, F.percentile_approx(seconds, list(QUANTILES), 1000).alias("latency_s"))
