"""A live view of streaming queries that also survives headless runs.

Notes
-----
papermill does not keep widget state, but it does keep a display updated in place:
:class:`QueryMonitor` renders one table per poll into a ``display_id`` handle, so the
executed notebook ends with the last state of every query, and JupyterLab shows it
changing while the run cell blocks in :func:`fink.runtime.streaming.run_until`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fink.log import logger
from fink.runtime.streaming import observed

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery


def query_row(query: Any) -> dict[str, Any]:
    """Summarise a query's state and last progress as one flat row."""
    last = query.lastProgress or {}
    durations = last.get("durationMs", {})
    return {
        "query": query.name or str(query.id),
        "active": query.isActive,
        "batch": last.get("batchId"),
        "input rows": last.get("numInputRows"),
        "input rows/s": round(last.get("inputRowsPerSecond") or 0.0, 1),
        "processed rows/s": round(last.get("processedRowsPerSecond") or 0.0, 1),
        "batch ms": durations.get("triggerExecution"),
        "total rows": sum(p.get("numInputRows", 0) for p in query.recentProgress),
        "lag": _lag(last),
        "quarantined": _observed(query.recentProgress, "quarantined"),
    }


def _lag(progress: dict) -> int | None:
    """Messages behind the newest offset, as the Kafka source reports it."""
    lags = [s.get("metrics", {}).get("maxOffsetsBehindLatest") for s in progress.get("sources", [])]
    lags = [int(float(v)) for v in lags if v is not None]
    return sum(lags) if lags else None


def _observed(progress: list[dict], name: str) -> int | None:
    """Sum of an observed metric (``DataFrame.observe``) over the reports, if the query has one."""
    total, seen = 0, False
    for p in progress:
        for key in p.get("observedMetrics") or {}:
            values = observed(p, key) or {}
            if name in values:
                total, seen = total + int(values[name] or 0), True
    return total if seen else None


class QueryMonitor:
    """Call it with the queries (``run_until(..., on_poll=monitor)``) to refresh the view."""

    def __init__(self, title: str = "streaming queries", every: float = 0.0):
        self.title = title
        self.every = every
        self._handle = None
        self._last = 0.0

    def _display(self, obj: Any) -> bool:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return False
        if get_ipython() is None:
            return False
        if self._handle is None:
            self._handle = display(obj, display_id=True)
        else:
            self._handle.update(obj)
        return True

    def __call__(self, queries: list["StreamingQuery"]) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        import pandas as pd

        table = pd.DataFrame([query_row(q) for q in queries]).set_index("query")
        table.attrs["title"] = self.title
        if not self._display(table):
            logger.info("%s\n%s", self.title, table.to_string())


class Background:
    """Run ``fn`` in a daemon thread, so that a notebook cell returns while a live view updates.

    A later cell calls :meth:`join`: it waits, then returns ``fn``'s result or raises its
    exception (widget updates reach JupyterLab while the thread runs; a blocked cell would
    keep its callbacks from running).
    """

    def __init__(self, fn: Callable[[], Any], name: str):
        self._result: Any = None
        self._error: BaseException | None = None

        def body() -> None:
            try:
                self._result = fn()
            except Exception as exc:  # handed to join(), in the caller's cell
                self._error = exc

        self._thread = threading.Thread(target=body, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds; return the result, raise the error, or None if still running."""
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return None if self._thread.is_alive() else self._result


def batch_summary(progress: list[dict], title: str, count: str = "input rows"):
    """The summary figure of a stage's run, as readable for one micro-batch as for a hundred:
    the rows each batch took in and how long it ran, as bars over whole batch numbers (a single
    batch is one bar, not a point on a degenerate axis), with the run's totals in the title.

    Returns the matplotlib figure (the notebooks show it and save it in their report).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    batches = [p for p in progress if p.get("numInputRows")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    ids = [int(p["batchId"]) for p in batches]
    rows = [int(p["numInputRows"]) for p in batches]
    seconds = [p.get("durationMs", {}).get("triggerExecution", 0) / 1000 for p in batches]
    for ax, values, label in ((axes[0], rows, count), (axes[1], seconds, "batch duration (s)")):
        if not batches:
            ax.text(0.5, 0.5, "no micro-batch read anything", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.bar(ids, values, width=0.8, color="tab:blue")
        ax.set_xlabel("micro-batch")
        ax.set_ylabel(label)
        if len(ids) <= 10:  # each batch its tick
            ax.set_xticks(ids)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        ax.set_xlim(min(ids) - 0.6, max(ids) + 0.6)
        ax.set_ylim(0, max(max(values), 1e-9) * 1.15)
    if batches:
        total, took = sum(rows), sum(seconds)
        axes[0].set_title(f"{total} in {len(batches)} batch{'es' if len(batches) > 1 else ''}", fontsize=9)
        axes[1].set_title(f"{took:.1f} s in all, {total / max(took, 1e-9):.0f} rows/s", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
