"""The metrics database: every stage's streaming progress, what its sinks noted and the
runs' starts and ends, in one SQLite file (``$FINK_HOME/metrics/metrics.db``).

Notes
-----
SQLite in WAL mode lets ``fink show``, the dashboard and other processes read while four
stages write; each write is one short transaction. The listener that writes it is in
:mod:`fink.runtime.metrics`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import fink_home

if TYPE_CHECKING:
    import pandas as pd

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



#: the columns of :meth:`Store.batches`, and the query that reads them
BATCH_COLUMNS = ["run", "service", "query", "batch", "time", "input_rows", "input_rate", "processed_rate",
                 "duration_s", "lag", "latency_p50", "latency_p95", "latency_p99", "lag_topics", "observed", "note"]
BATCHES = ("SELECT p.run, r.service, p.query, p.batch, p.time, p.input_rows, p.input_rate, p.processed_rate, "
           "p.duration_s, p.lag, p.latency_p50, p.latency_p95, p.latency_p99, p.lag_topics, p.observed, "
           "n.value AS note FROM progress p LEFT JOIN runs r ON r.run = p.run "
           "LEFT JOIN notes n ON n.run = p.run AND n.query = p.query AND n.batch = p.batch WHERE 1=1")


def _create(conn: sqlite3.Connection) -> None:
    """The tables, in WAL mode (a store written before runs had their idle time gets the column)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    if "idle" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
        conn.execute("ALTER TABLE runs ADD COLUMN idle REAL")


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
                _create(conn)
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
        given = [(c, v) for c, v in (("service = ?", service or None), ("started >= ?", since), ("started < ?", until))
                 if v is not None]
        sql = "SELECT * FROM runs WHERE 1=1" + "".join(f" AND {c}" for c, _ in given)
        return self._rows(sql + " ORDER BY started DESC", tuple(v for _, v in given))

    def batches(self, runs: list[str] | None = None, since: float | None = None) -> "pd.DataFrame":
        """Every stored batch of ``runs`` (all runs by default), oldest first, as a DataFrame.

        Columns: run, service, query, batch, time (UTC), input_rows, input_rate,
        processed_rate, duration_s, lag, latency_p50/p95/p99, lag_topics (dict), observed
        (dict: the stage's observed metrics), note (dict: what its sink recorded).
        """
        import pandas as pd

        sql = BATCHES
        args: list[Any] = []
        if runs is not None:
            sql += f" AND p.run IN ({', '.join('?' * len(runs))})"
            args += runs
        if since is not None:
            sql += " AND p.time >= ?"
            args.append(since)
        rows = self._rows(sql + " ORDER BY p.time", tuple(args))
        df = pd.DataFrame(rows, columns=BATCH_COLUMNS)
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
