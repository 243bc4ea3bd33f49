"""The one interface every stage offers a pipeline: what it does with one micro-batch.

A stage is usable alone (its notebook builds its own streaming query from its own source)
or as a step of the one-pass pipeline (:mod:`fink.stages.pipeline`), where one query reads Kafka
once and hands each micro-batch from stage to stage in memory. As a step, a stage says

* what it reads (:attr:`Step.reads`: ``kafka``, ``raw`` or ``science``) and what it hands
  on (:attr:`Step.writes`), so the pipeline composes stages without naming them;
* what it does with one batch (:attr:`Step.run`), returning an :class:`Output`: the frame
  it hands on, how many rows that frame holds, and its account of the batch;
* its account as a progress report of the stage's own query (:func:`report`): the same
  observed metrics its standalone query would report, so that each stage's
  ``reconcile``, the metrics store and the dashboard read a one-pass run as they read a
  run of four queries.

Notes
-----
A stage caches what is costly to compute again (the decoded alerts, the module outputs) and
lists it in :attr:`Output.cached`; the pipeline unpersists it when the micro-batch ends.
Its counts are observed (:class:`Tally`) by the job that reads the batch anyway: in a
``foreachBatch`` function the observed metrics of a query do not reach the progress, and an
aggregation of its own costs each batch a Spark job or two (planning, task serialization: 0.1
to 0.3 s of a core each on a 2-core machine in a micro-benchmark, whatever the batch's size).
End to end the saving did not show (2026-12-05, `bench_e2e.py` at 100 alerts/s, four runs
before/after: 15.0 and 15.0 core-ms an alert): the counting moved into the jobs that read the
rows. A batch that runs no action (a replayed batch the distribution sink skips) is counted by
a job after waiting ``Tally.WAIT_S`` (3 s) for an observation that never comes; one whose plan
dropped the observation (a selection of nothing: adaptive execution removes the empty
broadcast), by a job at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fink.log import logger

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter

#: what a step may read or hand on
FRAMES = ("kafka", "raw", "science")


@dataclasses.dataclass
class Output:
    """What a step did with one micro-batch.

    Attributes
    ----------
    frame
        The rows it hands on (None when it hands nothing on, or when the batch held nothing).
    rows
        How many rows ``frame`` holds (known from the step's own counts, so the next step
        need not count again).
    report
        Its account, shaped as a progress report of the stage's own query (:func:`report`),
        or None when ``finish`` gives it.
    cached
        Frames it persisted for this batch; the pipeline unpersists them at the end.
    finish
        What is left to do once every step has handed on (the archives' writes, the counts
        that only the accounts need): the pipeline calls every step's after the last step's
        ``run``, side by side (:meth:`OnePass._finish`), and it returns the account. The
        alerts reach their users first.
    """

    frame: "DataFrame | None"
    rows: int
    report: dict[str, Any] | None
    cached: list["DataFrame"] = dataclasses.field(default_factory=list)
    finish: Callable[[], dict[str, Any]] | None = None


@dataclasses.dataclass
class Step:
    """One stage as a step of a one-pass pipeline.

    Attributes
    ----------
    name
        The stage's name; its accounts are stored under it.
    reads, writes
        The frame it consumes and the one it hands on (:data:`FRAMES`; ``writes`` None: nothing).
    run
        ``run(frame, batch_id, rows)`` -> :class:`Output`: ``rows`` is the count of ``frame``
        when the step before knows it, else None.
    source
        Its standalone streaming source (``source()`` -> a streaming DataFrame of what it
        reads): the pipeline reads the first step's.
    sink
        The object holding what its batches delivered or wrote, for its ``reconcile``.
    expand
        When it reads its own source: what makes a batch of it the frame it reads (the
        science archive's rows joined to their raw alerts).
    source_table
        The archive table its source streams files from (None: not a table), and
    tables
        those it writes: the query that runs the step records itself in each
        (:func:`fink.io.table_use.attach`), so that no compaction pulls files from under it.
    """

    name: str
    reads: str
    writes: str | None
    run: Callable[["DataFrame", int, int | None], Output]
    source: Callable[[], "DataFrame"] | None = None
    sink: Any = None
    expand: Callable[["DataFrame"], "DataFrame"] | None = None
    source_table: str | None = None
    tables: list[str] = dataclasses.field(default_factory=list)


class OnePass:
    """The ``foreachBatch`` function of the one-pass query: each step in turn on the batch.

    ``reports`` keeps, per stage, the account of each batch (a progress report of the
    stage's own query, :func:`fink.stages.step.report`), which also goes to the metrics store.
    What a step cached is released when the batch ends, whatever happened.
    """

    #: batches whose accounts are kept in memory (the metrics store keeps them all)
    KEEP = 1000

    def __init__(self, steps: "list[Step]"):
        from collections import deque

        self.steps = steps
        self.reports: dict[str, deque[dict]] = {s.name: deque(maxlen=self.KEEP) for s in steps}
        self._pool: Any = None  # the threads of the steps' finishes, made at the first batch that has two

    def __call__(self, batch: "DataFrame", batch_id: int) -> None:
        from fink.runtime import metrics

        outputs, cached = [], []
        session = getattr(batch, "sparkSession", None)  # (None: a test's plain batch)
        try:
            first = self.steps[0]
            if first.expand is not None:  # what its source gives made whole, once for every step
                from pyspark import StorageLevel

                batch = first.expand(batch).persist(StorageLevel.MEMORY_AND_DISK_DESER)
                cached.append(batch)
            frames: dict[str, tuple[Any, int | None]] = {first.reads: (batch, None)}
            for step in self.steps:  # the alerts' way to the users
                frame, rows = frames.get(step.reads, (None, 0))
                if frame is None:  # nothing handed on (every alert set aside or cut)
                    continue
                t0 = time.perf_counter()
                _describe(session, f"{step.name}, batch {batch_id}")
                out = step.run(frame, batch_id, rows)
                cached += out.cached
                outputs.append((step, out, time.perf_counter() - t0))
                if step.writes:
                    frames[step.writes] = (out.frame, out.rows)
            finished = self._finish(outputs, session, batch_id)
            for (step, _, ran), (account, seconds) in zip(outputs, finished, strict=True):
                # the step's own share of the batch: its hand-on, then its archives and counts
                took = {"run": int(ran * 1000), "finish": int(seconds * 1000)}
                account["durationMs"] = {**account.get("durationMs", {}), **took,
                                         "triggerExecution": took["run"] + took["finish"]}
                self.reports[step.name].append(account)
                metrics.record(account)
        finally:
            _describe(session, None)
            for df in cached:
                df.unpersist()

    def _finish(self, outputs: "list[tuple[Step, Output, float]]", session: "SparkSession | None",
                batch_id: int) -> list[tuple[dict[str, Any], float]]:
        """Each step's ``finish`` (its archives' writes and counts), side by side on threads of
        their own, and its account with the seconds it took; the first failure, in step order,
        is raised once every one has ended (their caches are released after).

        The steps' writes do not depend on each other (each archive records its own batch:
        a batch replayed after a crash finds what each wrote, :mod:`fink.io.filestore`), and
        done in turn they held the next batch back by their sum (2.2 s of a 5.6 s batch of
        560 alerts at 100 alerts/s; each waits on Spark jobs of one or two tasks, an HBase
        gateway, file commits). Each thread starts with the query thread's Spark properties
        and the session's tags (its job group, which a stop of the query cancels; its scheduler
        pool; its batch).
        """
        def timed(step: Step, out: "Output") -> tuple[dict[str, Any], float]:
            if out.finish is None:  # its account made by its run
                return out.report, 0.0
            _describe(session, f"{step.name}, batch {batch_id}: archives and counts")
            t0 = time.perf_counter()
            return out.finish(), time.perf_counter() - t0

        if sum(out.finish is not None for _, out, _ in outputs) < 2:
            return [timed(step, out) for step, out, _ in outputs]
        from concurrent.futures import ThreadPoolExecutor, wait

        from pyspark import inheritable_thread_target

        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.steps), thread_name_prefix="fink-finish")

        def on_thread(step: Step, out: "Output") -> tuple[dict[str, Any], float]:
            try:
                return timed(step, out)
            finally:  # the pool's thread serves the next batch: the tags it was given are this batch's
                if session is not None:
                    session.clearTags()

        def inherit(fn):  # a copy of the properties for each thread (one copy shared, a name set in one names both)
            return inheritable_thread_target(session)(fn) if session is not None else fn

        futures = [self._pool.submit(inherit(on_thread), step, out) if out.finish is not None else None
                   for step, out, _ in outputs]
        wait([f for f in futures if f is not None])
        return [timed(step, out) if f is None else f.result() for (step, out, _), f in zip(outputs, futures,
                                                                                            strict=True)]


def _describe(session: "SparkSession | None", what: str | None) -> None:
    """Name the Spark jobs this thread starts from now on (the Spark UI's and the event log's
    job description): the step and the batch they serve; None: no name."""
    if session is not None:
        session.sparkContext.setJobDescription(what)  # type: ignore[arg-type]


def attach(spark: "SparkSession", steps: "list[Step]", checkpoint: str, query: str) -> None:
    """Record the query ``query`` in the tables its steps read (the first step's source) and
    write (:func:`fink.io.table_use.attach`)."""
    from fink.io import table_use

    if steps[0].source_table:
        table_use.attach(spark, steps[0].source_table, "read", checkpoint, query)
    for step in steps:
        for table in step.tables:
            table_use.attach(spark, table, "write", checkpoint, query)


def source(step: Step, checkpoint: str) -> "DataFrame":
    """The step's own streaming source, without what a compaction rewrote from files the
    query of ``checkpoint`` had read (:func:`fink.io.table_use.skip_compacted`)."""
    from fink.io import table_use

    df = step.source()
    if step.source_table:
        df = table_use.skip_compacted(df.sparkSession, df, step.source_table, checkpoint)
    return df


def standalone(step: Step, checkpoint: str) -> "DataStreamWriter":
    """The step as its stage's own streaming query (unstarted, named after the stage): its
    source, each batch through :class:`OnePass`. Its ``fink_sink`` is the step's sink, its
    ``fink_reports`` the accounts of its batches (:func:`fink.runtime.streaming.start` hands them to
    the query: :func:`fink.runtime.streaming.run_until` gives them as its progress)."""
    if step.source is None:
        raise ValueError(f"{step.name}: no source of its own")
    stream = source(step, checkpoint)
    attach(stream.sparkSession, [step], checkpoint, step.name)
    batches = OnePass([step])
    writer = (stream.writeStream.foreachBatch(batches).option("checkpointLocation", checkpoint)
              .queryName(step.name))
    writer.fink_sink = step.sink  # type: ignore[attr-defined]
    writer.fink_reports = batches.reports[step.name]  # type: ignore[attr-defined]
    return writer


class Tally:
    """Aggregates of a batch's rows counted by the job that reads them anyway (Spark's
    :class:`~pyspark.sql.Observation`), not by a job of their own.

    ``on(df)`` gives ``df`` observed: the first action that reads it (a collect, a write, the
    build of a cache it is part of) computes the aggregates over every row that passes, and
    :meth:`values` returns them. That action must read every row (not a ``limit``). If no
    action has read it when :meth:`values` is called, the aggregation runs then, as a job
    (which also completes the observation). The values are those of ``df.agg(*exprs)``.
    """

    def __init__(self, name: str, *exprs: "Column"):
        self.name, self.exprs = name, exprs
        self._observation: Any = None
        self._observed: "DataFrame | None" = None

    def on(self, df: "DataFrame", observe: bool = True) -> "DataFrame":
        """``df``, observed (once per batch: a new :class:`Tally` for each). ``observe`` False:
        ``df`` as it is, counted by :meth:`values` (for rows no single action reads whole, such as
        a ``toLocalIterator``, whose observation Spark completes before the rows are read)."""
        import uuid

        from pyspark.sql import Observation

        if not observe:
            self._observed = df
            return df
        self._observation = Observation(f"fink_{self.name}_{uuid.uuid4().hex[:12]}")
        self._observed = df.observe(self._observation, *self.exprs)
        return self._observed

    #: how long :meth:`values` waits for Spark's listener to hand over an action's observation
    WAIT_S = 3.0

    def values(self) -> dict[str, Any]:
        """The aggregates (column name -> value), observed or, if nothing read the rows, counted now."""
        if self._observed is None:
            raise RuntimeError(f"tally {self.name}: values() before on()")
        # Spark completes an observation from a listener, just after the action that read the rows
        handle = self._observation._jo if self._observation is not None else None  # noqa: SLF001
        deadline = time.monotonic() + self.WAIT_S
        while handle is not None and not handle.future().isCompleted() and time.monotonic() < deadline:
            time.sleep(0.01)
        # an empty row: an action's plan held the observation but its metrics were not collected
        # (the rows came from a cache built before, or the node was optimized away)
        if handle is not None and handle.future().isCompleted() and handle.getRow().length() > 0:
            return self._observation.get
        if handle is not None:
            logger.info("tally %s: nothing observed it, counted by a job of its own", self.name)
        return self._observed.agg(*self.exprs).first().asDict()


def report(name: str, batch_id: int, rows: int, observed: dict[str, Any], latency: list[float] | None,
           started: float, **extra: Any) -> dict[str, Any]:
    """The account of one step's batch as Spark would report a standalone query's progress.

    ``observed`` becomes the observed metrics named ``name`` (what the stage's own query
    observes), ``latency`` the percentiles of :data:`fink.runtime.metrics.LATENCY`, ``started`` (a
    ``time.time()``) the start of the step: its duration is the batch's.
    """
    from fink.runtime.metrics import LATENCY

    seconds = max(time.time() - started, 1e-6)
    metrics: dict[str, Any] = {name: observed}
    if latency is not None:
        metrics[LATENCY] = {"latency_s": latency}
    return {"name": name, "batchId": batch_id,
            "timestamp": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "numInputRows": rows, "inputRowsPerSecond": 0.0, "processedRowsPerSecond": rows / seconds,
            "durationMs": {"triggerExecution": int(seconds * 1000), "addBatch": int(seconds * 1000)},
            "observedMetrics": metrics, "sources": [], **extra}


def latency_quantiles(since: "Column", until: "Column") -> "Column":
    """The aggregate of the latency percentiles (seconds from ``since`` to ``until``), as
    :func:`fink.runtime.metrics.observe_latency` observes them in a standalone query."""
    from pyspark.sql import functions as F

    from fink.runtime.metrics import QUANTILES

    seconds = (F.unix_micros(until) - F.unix_micros(since)) / 1e6
    return F.percentile_approx(seconds, list(QUANTILES), 1000)


def count_where(condition: "Column") -> "Column":
    """How many rows of a group satisfy ``condition`` (0 for none)."""
    from pyspark.sql import functions as F

    return F.sum(F.when(condition, 1).otherwise(0))
