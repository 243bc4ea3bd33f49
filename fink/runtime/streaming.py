"""Starting and supervising streaming queries from a notebook.

Notes
-----
A headless notebook must always end. :func:`run_until` waits with bounded
``awaitTermination`` calls, raises the query's own exception if it failed, honours the
stop file written by ``fink stop`` and stops every query in a ``finally``, so papermill
reaches the notebook's summary cells whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.errors import FinkError
from fink.io import table_use
from fink.log import logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamWriter, StreamingQuery


class QueryFailed(FinkError, RuntimeError):
    """A streaming query stopped with an exception."""


@dataclass
class RunResult:
    """Why and when a bounded run ended, and the last progress of each query."""

    reason: str  # finished | duration | stop-file
    seconds: float
    progress: dict[str, list[dict]] = field(default_factory=dict)


def observed(progress: dict, name: str) -> dict | None:
    """The metrics one progress report holds under ``name`` (``DataFrame.observe``), as a dict."""
    row = (progress.get("observedMetrics") or {}).get(name)
    if row is None:
        return None
    return row.asDict() if hasattr(row, "asDict") else dict(row)


def stop_requested(stop_file: str | Path | None) -> bool:
    """True if ``fink stop`` asked this run to end (its stop file exists)."""
    return bool(stop_file) and Path(stop_file).exists()


def stop_active(spark: "SparkSession") -> int:
    """Stop every streaming query of ``spark``; return how many were running.

    A notebook cell that builds a query calls it first, so that re-running the cell never
    leaves a second query behind; the last cell calls it to leave nothing running.
    """
    active = list(spark.streams.active)
    for q in active:
        q.stop()
    return len(active)


def start(writer: "DataStreamWriter", name: str) -> "StreamingQuery":
    """Start ``writer`` as the query ``name`` (a name makes its metrics findable).

    Its progress reports go to the metrics store (:func:`fink.runtime.metrics.attach`). The query's
    jobs run in a scheduler pool of its own name: with Spark's FAIR mode (the
    default of :func:`fink.runtime.session.get_spark`), stages of a pipeline sharing one session take
    turns on the cores instead of one query's backlog holding the next one's batch back.
    """
    from fink.runtime import metrics

    metrics.attach(writer._spark)  # progress of every query into the metrics store (fink show, dashboard)
    sc = writer._spark.sparkContext  # the query thread inherits the caller's local properties
    previous = sc.getLocalProperty("spark.scheduler.pool")
    sc.setLocalProperty("spark.scheduler.pool", name)
    reports = getattr(writer, "fink_reports", None)  # a stage's step: its accounts are its progress
    if reports is not None:
        metrics.self_reported(name)
    try:
        query = writer.queryName(name).start()
    finally:
        sc.setLocalProperty("spark.scheduler.pool", previous)
    table_use.started(name, str(query.id))  # its tables' records are its own before another query is built
    if reports is not None:
        query.fink_reports = reports
    return query


def _last_batch(query: "StreamingQuery") -> tuple[int, str] | None:
    """The id and time of the latest progress report of a micro-batch that ran, or None (a
    trigger that found no data reports too, under the next batch's id: it does not count)."""
    last = query.lastProgress
    if not last or "addBatch" not in (last.get("durationMs") or {}):
        return None
    return int(last["batchId"]), str(last["timestamp"])


def stop_at_boundary(query: "StreamingQuery", timeout: float = 60.0) -> bool:
    """Stop ``query`` between two micro-batches: wait up to ``timeout`` s for its batch to end.

    Behind a backlog the next batch starts as soon as one ends, so the query may never be seen
    idle: once a batch has reported its progress (after its sink and its offsets are
    committed) since the stop was asked, the query is stopped at once. The batch that has just
    begun is interrupted before it has done much, and the checkpoint replays it on restart.

    Returns True if the batch that was running ended before the stop, False if it was still
    running at the timeout (Spark then interrupts it; the exactly-once sinks replay it).
    """
    deadline = time.monotonic() + timeout
    before = _last_batch(query)
    ended = False
    while time.monotonic() < deadline and query.isActive:
        if not query.status.get("isTriggerActive", False):
            ended = True
            break
        latest = _last_batch(query)
        if latest is not None and latest != before:
            ended = True
            break
        time.sleep(0.05)
    query.stop()
    return ended


def gather(query: "StreamingQuery", into: dict[tuple, Any]) -> None:
    """Add the query's latest progress reports to ``into`` (keyed by run, batch and time).

    Spark keeps only the last 100 (a step the last 1,000): gathered at each poll of
    :func:`run_until`, every batch of a long run reaches the accounts. A trigger that found
    no data and observed nothing is not kept (a long idle run would pile them up).
    """
    reports = getattr(query, "fink_reports", None)  # a stage's step keeps its own accounts
    for r in list(query.recentProgress if reports is None else reports):
        if not r.get("numInputRows") and not r.get("observedMetrics"):
            continue
        into.setdefault((r.get("runId"), r.get("batchId"), r.get("timestamp")), r)


def run_until(queries: Iterable["StreamingQuery"], duration: float, stop_file: str | Path | None = None,
              poll: float = 1.0, on_poll: Callable[[list["StreamingQuery"]], None] | None = None,
              boundary_timeout: float = 60.0, watch: Iterable["StreamingQuery"] = ()) -> RunResult:
    """Supervise ``queries`` until they finish, ``duration`` seconds pass, or a stop is requested.

    Parameters
    ----------
    queries
        Started queries; all are stopped when this returns or raises.
    duration
        Upper bound of the run in seconds (``0`` or less: until the queries finish or a stop).
    stop_file
        Path polled for ``fink stop``.
    poll
        Seconds between checks.
    on_poll
        Called with the queries at each check (a live monitor's update).
    boundary_timeout
        At the end, seconds to wait for a running micro-batch to finish before stopping
        its query (:func:`stop_at_boundary`).
    watch
        Queries that run beside (a real-time lane): one that fails fails the run, but the run
        does not wait for them to end, nor stops them.

    Raises
    ------
    QueryFailed
        If a query stopped with an exception; the Spark exception is chained.
    """
    queries, watch = list(queries), list(watch)
    t0 = time.monotonic()
    reason = "finished"
    gathered: dict[str, dict[tuple, Any]] = {q.name or q.id: {} for q in queries}
    try:
        while True:
            active = []
            for q in queries:
                gather(q, gathered[q.name or q.id])
                try:
                    q.awaitTermination(poll / max(1, len(queries)))
                except Exception as exc:  # PySpark raises a query's own failure here: the same as below
                    raise QueryFailed(f"streaming query {q.name!r} failed: {exc}") from exc
                exc = q.exception()
                if exc is not None:
                    raise QueryFailed(f"streaming query {q.name!r} failed: {exc}") from exc
                if q.isActive:
                    active.append(q)
            for q in watch:
                exc = q.exception()
                if exc is not None:
                    raise QueryFailed(f"streaming query {q.name!r} failed: {exc}") from exc
            if on_poll is not None:
                on_poll(queries)
            if not active:
                reason = "finished"
                break
            if stop_requested(stop_file):
                reason = "stop-file"
                break
            if duration > 0 and time.monotonic() - t0 >= duration:
                reason = "duration"
                break
    finally:
        for q in queries:
            if q.isActive:
                stop_at_boundary(q, timeout=boundary_timeout)
            if not q.isActive:  # its tables are free now, not when the listener hears of it
                table_use.ended(q.name or "", str(q.id))
            gather(q, gathered[q.name or q.id])
        progress = {name: list(reports.values()) for name, reports in gathered.items()}
        from fink.runtime import metrics

        metrics.catch_up(progress)  # the listener's last events may not have arrived yet
    elapsed = time.monotonic() - t0
    logger.info("run ended (%s) after %.1f s", reason, elapsed)
    return RunResult(reason, elapsed, progress)
