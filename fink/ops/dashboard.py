"""The operator's dashboard: live panels of the running services, and a night's report.

Everything here reads the metrics store (:mod:`fink.runtime.metrics`) that the stages write while
they run, so the dashboard is a separate process (``fink start dashboard``, or
``notebooks/dashboard.ipynb`` in JupyterLab) and works as well on a finished night.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.client.plots import show_figures
from fink.config import fink_home
from fink.ops import runner
from fink.runtime import metrics
from fink.stages.pipeline import STAGES

if TYPE_CHECKING:
    import pandas as pd

#: the stages in pipeline order (the report lists them so)

#: where each stage's accounts are: (``observed`` metrics name, key) or (``note``, key)
ACCOUNTS: dict[str, dict[str, tuple[str, ...]]] = {
    "stream2raw": {"in": ("observed", "stream2raw", "messages"), "out": ("note", "archived"),
                   "quarantined": ("note", "quarantined"), "lost": ("note", "lost")},
    "raw2science": {"in": ("observed", "raw2science", "alerts"), "out": ("note", "alerts"),
                    "rejected": ("observed", "raw2science", "rejected")},
    "distribution": {"in": ("observed", "distribution", "alerts"), "out": ("note", "delivered"),
                     "selected": ("observed", "distribution", "selected")},
    "archive": {"in": ("observed", "archive", "alerts"), "out": ("note", "archived")},
}


def night_window(night: str | None) -> tuple[float, float, str]:
    """``(since, until, night)`` in epoch seconds for a UTC night ``YYYYMMDD`` ("" or None: today)."""
    day = (datetime.strptime(night, "%Y%m%d") if night else datetime.now(UTC)).replace(
        hour=0, minute=0, second=0, microsecond=0, tzinfo=UTC)
    return day.timestamp(), (day + timedelta(days=1)).timestamp(), day.strftime("%Y%m%d")


def batches_of(store: metrics.Store, night: str | None = None, services: list[str] | None = None,
               runs: list[str] | None = None) -> "pd.DataFrame":
    """The stored batches of a night (or of ``runs``), optionally of some services only."""
    since, until, _ = night_window(night)
    by_time = runs is None or bool(night)
    if runs is None:  # runs started up to a day before the night may still be running in it
        runs = [r["run"] for r in store.runs(since=since - 86400, until=until)]
    df = store.batches(runs=runs)
    if by_time:
        df = df[(df["time"] >= _utc(since)) & (df["time"] < _utc(until))]
    if services:
        df = df[df["service"].isin(services)]
    return df.reset_index(drop=True)


def _utc(epoch: float) -> "pd.Timestamp":
    import pandas as pd

    return pd.Timestamp(epoch, unit="s", tz="UTC")


def _value(row: "pd.Series", where: tuple[str, ...]) -> float:
    """One account of one batch: an observed metric, or what the sink noted (dicts are summed)."""
    if where[0] == "observed":
        value = (row["observed"].get(where[1]) or {}).get(where[2])
    else:
        value = row["note"].get(where[1])
    if isinstance(value, dict):
        value = sum(v for v in value.values() if isinstance(v, (int, float)))
    return float(value or 0)


def summary(batches: "pd.DataFrame") -> dict[str, dict[str, Any]]:
    """Per query: batches, alerts in and out (and rejected, quarantined, lost, selected), rates, latency.

    Latency p50 is the median of the batches' p50, weighted by their alerts; p95 the
    weighted 95th percentile of the batches' p95 (both from :data:`fink.runtime.metrics.LATENCY`).
    """
    out: dict[str, dict[str, Any]] = {}
    for query, group in batches.groupby("query", sort=False):
        accounts = ACCOUNTS.get(str(query), {"in": ()})
        busy = group[group["input_rows"] > 0]
        entry: dict[str, Any] = {"service": ", ".join(sorted(set(group["service"].dropna()))),
                                 "batches": int(len(busy)), "input_rows": int(group["input_rows"].sum())}
        for account, where in accounts.items():
            entry[account] = int(sum(_value(r, where) for _, r in group.iterrows())) if where else entry["input_rows"]
        if len(busy):
            seconds = (busy["time"].max() - busy["time"].min()).total_seconds() + float(busy["duration_s"].iloc[-1])
            entry["alerts_per_s"] = round(entry["input_rows"] / max(seconds, 1e-3), 1)
            entry["batch_s_p50"] = round(float(busy["duration_s"].median()), 2)
        lat = busy.dropna(subset=["latency_p50"])
        if len(lat):
            entry["latency_p50_s"] = round(_weighted_quantile(lat["latency_p50"], lat["input_rows"], 0.5), 2)
            entry["latency_p95_s"] = round(_weighted_quantile(lat["latency_p95"], lat["input_rows"], 0.95), 2)
        out[str(query)] = entry
    order = {name: k for k, name in enumerate(STAGES)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _weighted_quantile(values: "pd.Series", weights: "pd.Series", q: float) -> float:
    import numpy as np

    v, w = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, q * cum[-1])])


def figures(batches: "pd.DataFrame") -> dict[str, Any]:
    """Matplotlib figures of a night: ``rates`` (alerts/s in and batch time) and ``latency`` (p50, p95)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    def time_axis(ax) -> None:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz="UTC"))
        if len(batches):  # a margin, so that a single batch is not alone in a decade-wide axis
            margin = pd.Timedelta(seconds=30)
            ax.set_xlim(batches["time"].min() - margin, batches["time"].max() + margin)

    figs = {}
    fig, (ax_rate, ax_batch) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    for query, group in batches.groupby("query", sort=False):
        ax_rate.plot(group["time"], group["processed_rate"], marker=".", label=f"{query} processed")
        ax_batch.plot(group["time"], group["duration_s"], marker=".", label=str(query))
    ax_rate.set_ylabel("alerts/s processed")
    ax_batch.set_ylabel("batch duration (s)")
    ax_batch.set_xlabel("time (UTC)")
    for ax in (ax_rate, ax_batch):
        time_axis(ax)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="upper left")
    ax_rate.set_title("Processing rate and batch time per stage")
    figs["rates"] = fig

    fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    lat = batches.dropna(subset=["latency_p50"])
    for query, group in lat.groupby("query", sort=False):
        line, = ax.plot(group["time"], group["latency_p50"], marker=".", label=f"{query} p50")
        ax.plot(group["time"], group["latency_p95"], ls="--", color=line.get_color(), label=f"{query} p95")
    ax.set_ylabel("seconds since the alert entered Kafka")
    ax.set_xlabel("time (UTC)")
    ax.set_title("Alert latency at each stage (per batch)")
    time_axis(ax)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    figs["latency"] = fig
    return figs


def write_report(store: metrics.Store, out_dir: str | Path, night: str | None = None,
                 services: list[str] | None = None, runs: list[str] | None = None,
                 completeness_dir: str | Path | None = None, completeness_night: str = "") -> dict[str, Any]:
    """Write a night's report: ``summary.json``, ``batches.csv``, ``rates.png``, ``latency.png``,
    and ``completeness.png`` when ``fink report night`` wrote the night's per-exposure counts
    (in ``completeness_dir``, by default ``$FINK_HOME/reports/completeness``) of
    ``completeness_night`` (the alerts' night; by default ``night``).

    Returns the summary (per stage accounts and latency, the runs and their end states).
    """
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = batches_of(store, night, services, runs)
    since, until, name = night_window(night)
    known = {r["run"]: r for r in store.runs(since=since - 86400, until=until)}
    run_ids = runs or sorted(set(df["run"]) | {r for r, v in known.items() if (v["started"] or 0) >= since})
    report = {"night": name, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "batches": int(len(df)),
              "published": sum(int(n["value"].get("alerts", 0)) for n in store.notes(run_ids, "simulator")),
              "stages": summary(df),
              "runs": [{k: known.get(r, {}).get(k) for k in ("run", "service", "state", "error")} | {"run": r}
                       for r in run_ids]}
    flat = df.drop(columns=["observed", "note", "lag_topics"]).copy()
    flat["time"] = flat["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    flat.to_csv(out / "batches.csv", index=False)
    figs = figures(df)
    checked = Path(completeness_dir) if completeness_dir else fink_home() / "reports" / "completeness"
    alerts_night = completeness_night or name
    if (checked / f"{alerts_night}.csv").is_file():  # `fink report night` ran: its per-exposure counts, drawn
        import pandas as pd

        from fink.ops import completeness

        table = pd.read_csv(checked / f"{alerts_night}.csv")
        report["completeness"] = {"night": alerts_night, **completeness.summary(table)}
        figs["completeness"] = completeness.figure(table, alerts_night)
    for key, fig in figs.items():
        fig.savefig(out / f"{key}.png", dpi=110)
        plt.close(fig)
    (out / "summary.json").write_text(json.dumps(report, indent=1, default=str))
    return report


class Dashboard:
    """Live ipywidgets panels: one per running service, and the night's plots, refreshed by :meth:`update`.

    Parameters
    ----------
    store
        The metrics store (default ``$FINK_HOME/metrics/metrics.db``).
    night
        ``YYYYMMDD`` (UTC) of the plots; "" means today.
    services
        Show only these services (default: every one).
    """

    def __init__(self, store: metrics.Store | None = None, night: str = "", services: list[str] | None = None):
        import ipywidgets as widgets

        self.store = store or metrics.Store()
        self.night, self.services = night, services or None
        self.title = widgets.HTML()
        self.panels = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.table = widgets.HTML()
        self.plots = widgets.Output()
        self.widget = widgets.VBox([self.title, self.panels, self.table, self.plots])
        self.updates = 0

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def running(self) -> list[dict[str, Any]]:
        """``fink show`` of the services that are running (filtered by ``services``)."""
        rows = [runner.describe(r, self.store) for r in runner.running()]
        return [r for r in rows if not self.services or r["service"] in self.services]

    def update(self, plots: bool = True) -> None:
        """Re-read the store; redraw the panels, the table and (with ``plots``) the figures."""
        import ipywidgets as widgets
        import pandas as pd

        self.updates += 1
        live = self.running()
        df = batches_of(self.store, self.night, self.services)
        self.title.value = (f"<h3>fink: {len(live)} service(s) running, night {night_window(self.night)[2]}, "
                            f"{len(df)} batches stored</h3><small>updated {time.strftime('%H:%M:%S')}</small>")
        self.panels.children = [widgets.HTML(_panel(r), layout=widgets.Layout(margin="4px", min_width="230px"))
                                for r in live] or [widgets.HTML("<i>no service running</i>")]
        self.table.value = pd.DataFrame(summary(df)).T.to_html(na_rep="-") if len(df) else ""
        if plots and len(df):
            show_figures(self.plots, figures(df).values())

    def run(self, duration: float, refresh: float = 5.0, stop_file: str | None = None, plot_every: int = 3) -> int:
        """Refresh every ``refresh`` seconds for ``duration`` seconds (or until the stop file); return updates."""
        from fink.runtime.streaming import stop_requested

        t0 = time.monotonic()
        while True:
            self.update(plots=self.updates % plot_every == 0)
            if time.monotonic() - t0 + refresh > duration or stop_requested(stop_file):
                break
            time.sleep(refresh)
        return self.updates


def _panel(row: dict[str, Any]) -> str:
    """One service as a small HTML card."""
    colour = {"processing": "#2e7d32", "waiting": "#1565c0", "starting": "#ef6c00", "stopping": "#6a1b9a"}
    lines = [f"<b>{row['service']}</b> <span style='color:{colour.get(row['state'], '#333')}'>{row['state']}</span>",
             f"pid {row['pid']}, up {row['uptime_s']:.0f} s"]
    if "batches" in row:
        lines += [f"{row['batches']} batches, {row['rows_in']} alerts in",
                  f"last: {row['input_rate']} in/s, {row['processed_rate']} done/s, {row['last_batch_s']} s",
                  f"lag {row['lag'] if row['lag'] is not None else '-'}; latency p50 "
                  f"{row['latency_p50_s'] if row['latency_p50_s'] is not None else '-'} s"]
    return "<div style='border:1px solid #ccc;padding:6px;border-radius:4px'>" + "<br>".join(lines) + "</div>"
