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

The store itself is :mod:`fink.runtime.metrics_store` (:class:`Store` is re-exported here).

Per-alert latency comes from the stage's observed metrics named :data:`LATENCY`: the
percentiles (:data:`QUANTILES`) of the seconds from the alert's Kafka timestamp (when it
entered the broker's input topic) to the moment the stage handled it (see
:func:`observe_latency`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fink.io import table_use
from fink.log import logger
from fink.runtime.metrics_store import LATENCY, QUANTILES, Store, default_path, epoch, flatten, lag_per_topic

__all__ = ["LATENCY", "QUANTILES", "Clock", "Recorder", "Store", "attach", "catch_up", "default_path", "epoch",
           "flatten", "lag_per_topic", "note", "observe_latency", "process_recorder", "record", "run_identity",
           "self_reported"]

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


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


class _Progress:
    """What the listener reads of a progress event: the report (its JSON, fetched from the JVM
    in one call, parsed once), its query's id and name."""

    def __init__(self, jprogress: Any):
        self.report: dict[str, Any] = json.loads(jprogress.json())
        self.id, self.name = self.report["id"], self.report.get("name")


def _listener_class():
    from pyspark import SparkContext
    from pyspark.sql.streaming import StreamingQueryListener
    from pyspark.sql.streaming.listener import JStreamingQueryListener

    class ProgressAsJson(JStreamingQueryListener):
        """pyspark's bridge, but a progress event is handed on as its JSON: pyspark's own
        rebuilds every field of the report, one call to the JVM each (a hundred and more
        a batch, the keys of each map ended by an exception), on the driver's Python beside
        the batch's own work."""

        def onQueryProgress(self, jevent: Any) -> None:  # noqa: N802 - Spark's names
            from types import SimpleNamespace

            self.pylistener.onQueryProgress(SimpleNamespace(progress=_Progress(jevent.progress())))

    class MetricsListener(StreamingQueryListener):
        """Writes each query event of the session into the metrics store (errors are logged, never raised)."""

        def __init__(self, rec: Recorder):
            self.rec = rec
            self.names: dict[str, str] = {}  # query id -> name (idle and end events give only the id)

        @property
        def _jlistener(self) -> Any:  # what StreamingQueryManager.addListener registers in the JVM
            if not hasattr(self, "_jlistenerobj"):
                self._jlistenerobj = SparkContext._jvm.PythonStreamingQueryListenerWrapper(ProgressAsJson(self))
            return self._jlistenerobj

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
            self._safely("a progress report", self.rec.progress, event.progress.report)

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


def now() -> "Column":
    """The time each row is computed at, as a timestamp column: what ``F.current_timestamp()``
    would give, without its cost in a long-running stream.

    Notes
    -----
    Spark replaces ``current_timestamp()`` by a literal of the batch's time, and its generated
    code carries that literal inline: every micro-batch then compiles the projections holding
    it anew (the decode's projection over the alert's hundreds of nested fields among them: in a
    one-pass batch of 100 alerts the decode took 0.86 s with it, 0.35 s without). Read through ``reflect``, the
    clock is not a literal, so the code is the same in every batch and compiled once. The value
    is that of the row's evaluation (within a batch, milliseconds apart), not of the batch.
    """
    from pyspark.sql import functions as F

    return F.timestamp_millis(F.expr("cast(reflect('java.lang.System', 'currentTimeMillis') as bigint)"))


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
