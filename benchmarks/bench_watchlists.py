"""Benchmark of the watchlists: what lists of 1,000 and 100,000 entries cost the distribution stage.

Part 1 (match): :func:`fink.filters.watchlists.match` alone, in one process, on 20,000 random
positions against lists of 0 (ids only), 1,000 and 100,000 random entries of 2 arcsec (plus
one entry on 2 % of the alerts): alerts/s.

Part 2 (stage): the real ZTF 4.02 alerts of ``../shared/datasim/ztf/native-4.02_*`` (looped
with new candids) go through Kafka, stream2raw and raw2science into a science archive once;
distribution then catches up on it (``availableNow``) with one filter (2 % of the alerts) and
no watchlist, then with a list of 1,000 and one of 100,000 entries (an entry on 2 % of the
alerts' positions, the others random): alerts/s of the stage, messages sent, and the
seconds of the step that filters and matches. Needs the local Kafka (`make services`)::

    .venv/bin/python benchmarks/bench_watchlists.py [--alerts 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid

import numpy as np
import pandas as pd
from bench_distribution import _bench_filters, science_archive
from bench_stream2raw import SHARED
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.filters import watchlists as wl
from fink.io import kafka
from fink.runtime import metrics, streaming
from fink.sim.sources import read_messages
from fink.stages import distribution as dist
from fink.stages import raw2science as r2s


def random_entries(n: int, rng: np.random.Generator, radius: float = 2.0) -> pd.DataFrame:
    return pd.DataFrame({"name": [f"r{i}" for i in range(n)], "ra": rng.uniform(0, 360, n),
                         "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))), "radius_arcsec": radius})


def match_cost(entries: int, alerts: int = 20000, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    table = random_entries(entries, rng)
    ra, dec = rng.uniform(0, 360, alerts), np.degrees(np.arcsin(rng.uniform(-1, 1, alerts)))
    hits = slice(0, alerts // 50)
    table = pd.concat([table, pd.DataFrame({"name": [f"hit{i}" for i in range(alerts // 50)],
                                            "ra": ra[hits], "dec": dec[hits], "radius_arcsec": 2.0})])
    ids = [f"ZTF{i}" for i in range(alerts)]
    idx = wl.index([wl.Watchlist("bench", "l", wl.entries(table))], 1)
    t0 = time.perf_counter()
    wl.match(idx, ra[:10], dec[:10], ids[:10])  # the tree is built at the first call
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = wl.match(idx, ra, dec, ids)
    secs = time.perf_counter() - t0
    return {"entries": len(table), "alerts": alerts, "matches": len(found), "tree_build_s": round(build, 3),
            "alerts_per_s": round(alerts / secs)}


def stage_cost(spark, fink: FinkConfig, entries: int, positions: pd.DataFrame, tmp: str) -> dict:
    tag = uuid.uuid4().hex[:6]
    registry = f"{tmp}/watchlists_{tag}"
    if entries:
        rng = np.random.default_rng(entries)
        near = positions.drop_duplicates().sample(frac=0.02, random_state=1)  # the alerts loop: 2 % of them
        table = pd.concat([random_entries(entries - len(near), rng),
                           pd.DataFrame({"name": [f"hit{i}" for i in range(len(near))], "ra": near["ra"].to_numpy(),
                                         "dec": near["dec"].to_numpy(), "radius_arcsec": 1.0})])
        wl.add("bench", table, f"bench{tag}", root=registry)
    topic = f"bench_wl_{tag}"
    cfg = dist.DistributionConfig(filters={topic: "bench_filters:bucket"}, filter_params={topic: {"k": 0, "n": 50}},
                                  max_files_per_trigger=8, checkpoint=f"{tmp}/ck_{tag}", watchlists=registry)
    writer = dist.build(spark, cfg, fink)
    t0, started = time.perf_counter(), time.time()
    result = streaming.run_until([streaming.start(writer.trigger(availableNow=True), dist.QUERY_NAME)],
                                 duration=1800, poll=0.5)
    totals = dist.reconcile(result.progress[dist.QUERY_NAME], writer.fink_sink)
    ended, wall = time.time(), time.perf_counter() - t0
    busy = [p for p in result.progress[dist.QUERY_NAME] if p.get("numInputRows")]
    first = busy[0] if len(busy) > 1 else None  # the first batch pays the Python workers' start
    secs = ended - metrics.epoch(first["timestamp"]) - first["durationMs"]["triggerExecution"] / 1000 \
        if first else wall
    rows = sum(p["numInputRows"] for p in (busy[1:] or busy))
    watched = {t: v for t, v in totals["topics"].items() if t.startswith("watchlist_")}
    steps: dict[str, float] = {}
    for note in metrics.Store().notes(query=dist.QUERY_NAME):
        if note["time"] >= started:
            for step, seconds in note["value"].get("seconds", {}).items():
                steps[step] = steps.get(step, 0.0) + seconds
    return {"entries": entries, "alerts": totals["alerts"], "balanced": totals["balanced"],
            "filter_messages": totals["topics"][topic]["delivered"],
            "watchlist_messages": sum(v["delivered"] for v in watched.values()),
            "sustained_alerts_per_s": round(rows / secs, 1) if secs else None, "wall_s": round(wall, 1),
            "step_seconds": {k: round(v, 1) for k, v in steps.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=10000)
    args = parser.parse_args()
    report: dict = {"match": [match_cost(n) for n in (0, 1000, 100000)]}
    for row in report["match"]:
        print(json.dumps(row), flush=True)
    _bench_filters()
    messages = [m for folder in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(folder)]
    bootstrap = ServicesConfig.load().kafka_bootstrap
    from fink.runtime.session import get_spark

    spark = get_spark(FinkConfig(kafka_bootstrap=bootstrap, log_level="ERROR"), app_name="bench-watchlists")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fink = science_archive(spark, bootstrap, messages, args.alerts, tmp)
            science = r2s.read_science(spark, r2s.Raw2ScienceConfig().paths(fink)["science"])
            positions = science.selectExpr("candidate.ra AS ra", "candidate.dec AS dec").toPandas()
            report["stage"] = []
            for n in (0, 1000, 100000):
                report["stage"].append(stage_cost(spark, fink, n, positions, tmp))
                print(json.dumps(report["stage"][-1]), flush=True)
    finally:
        streaming.stop_active(spark)
        spark.stop()
    print(json.dumps(report, indent=1))
    headline = {f"stage_alerts_per_s_{r['entries']}_entries": r["sustained_alerts_per_s"] for r in report["stage"]}
    headline |= {f"match_alerts_per_s_{r['entries']}_entries": r["alerts_per_s"] for r in report["match"]}
    save_result("watchlists", {**headline, "args": vars(args), **report},
                plots=[{"title": "distribution with a watchlist", "table": "stage", "x": "entries",
                        "y": ["sustained_alerts_per_s"], "ylabel": "alerts/s"}])


if __name__ == "__main__":
    with kafka.temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
