"""`make bench`: the whole broker under load, as it is operated.

The four stages run as one service (`fink start pipeline`, 1 s triggers): by default in one
pass (``--mode one-pass``: one query, each micro-batch through every stage in memory), or as
four queries of one Spark driver (``--mode queries``), or as four services (``--mode
services``: `fink start <stage>`, one process and Spark driver each), against the local
Kafka, HBase and Thrift. The simulator publishes real ZTF 4.02 alerts
(``../shared/datasim/ztf/native-4.02_*``, looped with fresh candids): first a few alerts
waiting when the pipeline starts (the cold start), then steady phases, each after a
warm-up at its own rate, then one burst published at once. A consumer of a distribution
topic that selects every kept alert records when each one arrives. Measured:

- cold start: from `fink start pipeline` to the first alert at the consumer;
- end-to-end latency per alert: arrival at the consumer - the alert's Kafka timestamp on the
  input topic (when the simulator published it), p50/p95/p99 per phase (warm-up excluded);
- per phase, the core-milliseconds per alert of the pipeline's processes (CPU time of the
  driver and its Python workers over the phase and its drain), and each stage's batch
  milliseconds per alert (its share of the wall time);
- sustained throughput: alerts out of the pipeline (consumer and HBase) per second over a
  steady phase and its drain, and each stage's own rate (from the metrics store);
- the burst's drain time: from its first publish to its last alert through every stage;
- peak memory (RSS) per process tree: each stage, and Kafka, HBase, Thrift;
- in the same run, the plain decode limit: fastavro over the same bytes, one core.

Writes ``bench-results.json`` (repository root, git-ignored) and ``bench-results.png``
(rate and latency over time). Needs the services (`make services`)::

    .venv/bin/python benchmarks/bench_e2e.py [--steady 300:300 --steady 1000:120] [--burst 40000] [--quick]
                                             [--services]

Disk: every alert is kept four times (raw and science Parquet, HBase, the input topic until
its retention), about 200 KB in all; the data is deleted at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import fastavro
import numpy as np
import pandas as pd
import psutil
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig, fink_home
from fink.io import kafka
from fink.ops import demo, runner, services
from fink.runtime import metrics
from fink.sim.simulator import SimulatorConfig, replay
from fink.sim.sources import read_messages
from fink.sim.stamp import fresh_copies

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasim"
STAGES = ("stream2raw", "raw2science", "distribution", "archive")


def decode_limit(messages: list[bytes], count: int = 3000) -> float:
    """Alerts/s of a plain fastavro loop over the same bytes (one core, no Spark, no Kafka):
    container files read with their header's schema, wire-format messages with their id's."""
    from fink.survey import description as survey
    from fink.survey import wire

    batch = list(fresh_copies(messages, count))
    resolver = wire.SchemaResolver(survey.load("rubin"))
    schemas = {int.from_bytes(m[1:5], "big"): resolver.schema(int.from_bytes(m[1:5], "big"))
               for m in batch if m[:1] == wire.MAGIC}
    t0 = time.perf_counter()
    for m in batch:
        if m[:1] == wire.MAGIC:
            fastavro.schemaless_reader(io.BytesIO(m[5:]), schemas[int.from_bytes(m[1:5], "big")], None)
        else:
            next(fastavro.reader(io.BytesIO(m)))
    return round(count / (time.perf_counter() - t0), 1)


class Sampler(threading.Thread):
    """Peak RSS (MB) of process trees, sampled every ``every`` seconds."""

    def __init__(self, pids: dict[str, int], every: float = 2.0):
        super().__init__(daemon=True)
        self.pids, self.every, self.peak = pids, every, {k: 0.0 for k in pids}
        self.total_peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            total = 0.0
            for name, pid in list(self.pids.items()):
                try:
                    proc = psutil.Process(pid)
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0.0), rss)
                total += rss
            self.total_peak = max(self.total_peak, total)


class Receiver(threading.Thread):
    """Reads the distribution topic; keeps (arrival time, Kafka timestamp of the input alert) of
    one message in ``every``, and counts them all.

    Decoding a whole alert costs about a millisecond of a core: every one of them would take
    a sixth of this 2-core machine from the broker at 300 alerts/s (a user's consumer runs
    elsewhere), so the latencies are those of a systematic sample.
    """

    def __init__(self, bootstrap: str, topic: str, every: int = 5):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.every = bootstrap, topic, every
        self.arrivals: list[tuple[float, float]] = []
        self.received = 0
        self.done = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer

        from fink.client import decode

        c = Consumer(kafka.client_config(self.bootstrap, **{"group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                                            "auto.offset.reset": "earliest",
                                                            "isolation.level": "read_committed"}))
        c.subscribe([self.topic])
        while not self.done.is_set():
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            self.received += 1
            if (self.received - 1) % self.every == 0:  # the 1st, then one in every
                now = time.time()
                alert = decode(msg.key(), msg.value())
                self.arrivals.append((now, alert["kafka_timestamp"].timestamp()))
        c.close()


def drained(acc: dict, published: int) -> bool:
    if any(s not in acc for s in STAGES):
        return False
    kept = acc["raw2science"]["out"]
    return (acc["stream2raw"]["in"] >= published and acc["raw2science"]["in"] >= acc["stream2raw"]["out"]
            and acc["distribution"]["in"] >= kept and acc["archive"]["out"] >= kept)


def wait_drained(store, runs, published: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if drained(demo.accounts(store, runs)["stages"], published):
            return time.monotonic()
        dead = [s for s, r in runs.items() if not r.alive()]
        if dead:
            raise RuntimeError(f"stage(s) {dead} stopped: see their log.txt under {fink_home() / 'runs'}")
        time.sleep(1.0)
    stages = demo.accounts(store, runs)["stages"]
    raise RuntimeError(f"not drained after {timeout:.0f} s: {json.dumps(stages)[:2000]}")


def stage_rates(store, runs, since: float, until: float) -> dict[str, float]:
    """Each stage's alerts per second of its busy batches between ``since`` and ``until``."""
    ids = [r.run_id for r in runs.values()]
    df = store.batches(runs=ids)
    df = df[(df["time"] >= pd.Timestamp(since, unit="s", tz="UTC")) &
            (df["time"] <= pd.Timestamp(until, unit="s", tz="UTC")) & (df["input_rows"] > 0)]
    out = {}
    for query, g in df.groupby("query"):
        span = (g["time"].max() - g["time"].min()).total_seconds() + float(g["duration_s"].iloc[-1])
        out[str(query)] = round(float(g["input_rows"].sum()) / max(span, 1e-3), 1)
    return out


def stage_ms(store, runs, since: float, until: float) -> dict[str, float]:
    """Each stage's batch milliseconds per alert between ``since`` and ``until`` (in one pass,
    the stages' shares of each micro-batch's wall time)."""
    ids = [r.run_id for r in runs.values()]
    df = store.batches(runs=ids)
    df = df[(df["time"] >= pd.Timestamp(since, unit="s", tz="UTC")) &
            (df["time"] <= pd.Timestamp(until, unit="s", tz="UTC")) & (df["input_rows"] > 0)]
    return {str(q): round(float(g["duration_s"].sum()) * 1000 / max(float(g["input_rows"].sum()), 1.0), 2)
            for q, g in df.groupby("query")}


def cpu_seconds(runs) -> float:
    """CPU seconds (user + system) used so far by the runs' process trees (drivers, Python workers)
    and, on a standalone cluster, by its executors' (their JVMs and Python workers: the workers'
    children, not the driver's). Every executor JVM on the machine is counted, whichever
    application it serves: run the cluster benchmark on a cluster with no other application."""
    roots = [r.pid for r in runs.values()]
    for proc in psutil.process_iter(["cmdline"]):
        if any("CoarseGrainedExecutorBackend" in a for a in proc.info["cmdline"] or []):
            roots.append(proc.pid)
    total = 0.0
    for pid in roots:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def quantiles(values: list[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": (round(float(np.percentile(arr, q)), 2) if len(arr) else None) for q in (50, 95, 99)}


def plot(arrivals: list[tuple[float, float]], phases: list[dict], path: Path, title: str, every: int = 1) -> None:
    """Rate and latency over time; ``arrivals`` hold one received alert in ``every``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not arrivals:
        return
    a = pd.DataFrame(arrivals, columns=["arrival", "sent"])
    t0 = a["sent"].min()
    a["t"] = (a["arrival"] - t0).round(0)
    a["latency"] = a["arrival"] - a["sent"]
    per_s = a.groupby((a["t"] // 10) * 10).agg(rate=("t", "size"), p50=("latency", "median"),
                                               p95=("latency", lambda x: x.quantile(0.95)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    ax1.plot(per_s.index, per_s["rate"] * every / 10, label="alerts/s received")
    ax2.plot(per_s.index, per_s["p50"], label="latency p50")
    ax2.plot(per_s.index, per_s["p95"], ls="--", label="latency p95")
    for ph in phases:
        for ax in (ax1, ax2):
            ax.axvspan(ph["start"] - t0, ph["end"] - t0, alpha=0.08, color="tab:blue")
        ax1.annotate(ph["name"], (ph["start"] - t0, ax1.get_ylim()[1] * 0.9), fontsize=8)
    ax1.set_ylabel("alerts/s at the consumer")
    ax2.set_ylabel("seconds (publish -> consumer)")
    ax2.set_xlabel("seconds since the first publish")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"fink end to end on this machine: {title}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady", action="append", default=None, metavar="RATE:SECONDS",
                        help="a steady phase (repeatable; default 100:90, 300:90 and 600:60)")
    parser.add_argument("--burst", type=int, default=40000, help="alerts published at once (0: none)")
    parser.add_argument("--quick", action="store_true", help="60 s phases at 100 and 300 alerts/s, 10,000 burst")
    parser.add_argument("--mode", default="one-pass", choices=("one-pass", "queries", "services"),
                        help="one-pass (default): `fink start pipeline`, one query; queries: the pipeline as four "
                             "queries of one driver; services: each stage its own service (own Spark driver)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds at each steady rate before measuring")
    parser.add_argument("--first-warmup", type=float, default=120.0,
                        help="seconds at the first steady rate before measuring it (the JVM's JIT still compiles "
                             "Spark's code in a driver's first minutes)")
    parser.add_argument("--max-offsets", type=int, default=3000, help="stream2raw's max_offsets_per_trigger")
    parser.add_argument("--realtime", default="candidate.magpsf < 18.5",
                        help="the SQL condition of a real-time lane filter, timed by a second consumer ('': no lane)")
    parser.add_argument("--driver-memory", default="6g", help="the pipeline's Spark driver heap")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a Spark setting of the pipeline (repeatable), e.g. spark.ui.enabled=true")
    parser.add_argument("--survey", default="ztf", choices=("ztf", "rubin"),
                        help="real alerts of which survey (../shared/datasim/ztf/native-4.02_* or rubin/)")
    parser.add_argument("--master", default=None, metavar="URL",
                        help="a Spark standalone master (`fink services start spark`: spark://127.0.0.1:7077) "
                             "instead of local mode; executors of 1 core and 1 GB, authenticated")
    parser.add_argument("--executors", type=int, default=2,
                        help="with --master: how many 1-core executors (spark.cores.max), one per worker")
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args()
    if bad := [kv for kv in args.spark_conf if "=" not in kv]:
        parser.error(f"--spark-conf takes KEY=VALUE, got {bad[0]!r}")
    if args.master and args.mode == "services":
        parser.error("--master runs the pipeline (one-pass or queries), not four services")
    steady = args.steady or (["100:60", "300:60"] if args.quick else ["100:90", "300:90", "600:60"])
    phases_spec = [(float(r), float(s)) for r, s in (x.split(":") for x in steady)]
    burst = 10000 if args.quick and args.burst == 40000 else args.burst
    folders = sorted(SHARED.glob("ztf/native-4.02_*")) if args.survey == "ztf" else \
        sorted({p.parent for p in SHARED.glob("rubin/*/*/*.avro")})
    if not folders:
        print(f"bench_e2e: no real {args.survey} alerts under {SHARED}", file=sys.stderr)
        return 2
    messages = [m for f in folders for m in read_messages(f)]
    svc = ServicesConfig.load()
    bootstrap = svc.kafka_bootstrap
    machine = {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    results: dict = {"machine": machine, "survey": args.survey, "source_alerts": len(messages)}
    results["decode_limit_alerts_per_s"] = decode_limit(messages)
    print(f"decode limit (fastavro, one core): {results['decode_limit_alerts_per_s']} alerts/s", flush=True)

    bench_id = uuid.uuid4().hex[:8]
    topic, out_topic, table = f"bench_in_{bench_id}", f"bench_all_{bench_id}", f"bench_{bench_id}"
    rt_topic = f"bench_rt_{bench_id}"
    data = fink_home() / "bench" / bench_id
    common = {"data_dir": str(data), "trigger": "1 seconds", "duration": 7200.0}
    catalogue = ROOT / "datasim" / "sample_night" / "catalogue.csv"  # every built-in module runs
    # every stage's batch is bounded: a backlog (at 1,000/s or in the burst) is read in steps, so
    # the rows a batch holds for its Python workers stay within the driver's heap
    survey = {"survey": args.survey}
    extra = {"stream2raw": {**survey, "topic": topic, "max_offsets_per_trigger": args.max_offsets},
             "raw2science": {**survey, "max_files_per_trigger": 4, "modules": ["builtin"], "module_params": {
                 "crossmatch": {"catalogue_path": str(catalogue)}}},
             "distribution": {**survey, "filters": {out_topic: "fink.filters.builtin:everything",
                                                    **({rt_topic: {"condition": args.realtime, "lane": "realtime"}}
                                                       if args.realtime else {})},
                              "topic_options": {}, "retention_ms": 600000},
             "archive": {**survey, "table": table}}
    results["mode"] = args.mode
    results["master"] = args.master or "local[2]"
    results["executors"] = args.executors if args.master else None
    store = metrics.Store()
    runs: dict[str, runner.Run] = {}
    receiver = Receiver(bootstrap, out_topic)
    fast = Receiver(bootstrap, rt_topic, every=1) if args.realtime and args.mode != "services" else None
    with kafka.temporary_topics(bootstrap):
        # the input topic keeps what the stages have not read yet; older segments go
        kafka.ensure_topic(bootstrap, topic, config={"retention.bytes": str(8 << 30), "segment.bytes": str(256 << 20)})
        kafka.ensure_topic(bootstrap, out_topic, config={"retention.ms": "600000"})  # the consumer's, from the start
        if fast is not None:
            kafka.ensure_topic(bootstrap, rt_topic, config={"retention.ms": "600000"})
        try:
            conf = str(ROOT / "conf" / "local.yaml")
            # the cold start: alerts wait in the topic when the pipeline is started
            cold = replay(SimulatorConfig(topic=topic, rate=0.0, count=100, loop=True), bootstrap,
                          messages=messages, progress=False)
            published, passes = cold["alerts"], cold["passes"]
            receiver.start()
            if fast is not None:
                fast.start()
            launched = time.time()
            if args.mode == "services":
                for stage in STAGES:
                    runs[stage] = runner.start(stage, conf, params={**common, **extra.get(stage, {})})
            else:
                cluster = {} if not args.master else {
                    "spark.authenticate": "true", "spark.executor.cores": "1", "spark.executor.memory": "1g",
                    "spark.cores.max": str(args.executors), "spark.sql.shuffle.partitions": str(args.executors)}
                runs["pipeline"] = runner.start("pipeline", conf, params={
                    **common, **extra, "topic": topic, "mode": args.mode,
                    **({"spark_master": args.master} if args.master else {}),
                    "spark_conf": {"spark.driver.memory": args.driver_memory, **cluster,
                                   **dict(kv.split("=", 1) for kv in args.spark_conf)}})
            deadline = time.monotonic() + 300
            queries = 1 if args.mode == "one-pass" else len(STAGES)

            def started() -> int:
                return sum(e["kind"] == "started" for r in runs.values() for e in store.events(r.run_id))

            while started() < queries:
                if time.monotonic() > deadline or not all(r.alive() for r in runs.values()):
                    raise RuntimeError(f"the stages did not start: see their log.txt under {fink_home() / 'runs'}")
                time.sleep(1.0)
            print("stages started", flush=True)
            pids = {s: r.pid for s, r in runs.items()}
            pids.update({st.name: st.pid for st in services.status() if st.pid})
            sampler = Sampler(pids)
            sampler.start()
            wait_drained(store, runs, published, timeout=600)
            first = min((a for a, _ in receiver.arrivals), default=None)
            results["cold_start_s"] = round(first - launched, 1) if first else None
            print(f"cold start: first alert delivered {results['cold_start_s']} s after `fink start`", flush=True)
            phases = []
            plan = [(f"steady {r:g}/s", r, int(r * s)) for r, s in phases_spec]
            if burst:
                plan.append((f"burst {burst}", 0.0, burst))
            for k, (name, rate, count) in enumerate(plan):
                warmup = max(args.warmup, args.first_warmup) if k == 0 else args.warmup
                if rate and warmup > 0:  # the rate's own warm-up, not measured
                    sent = replay(SimulatorConfig(topic=topic, rate=rate, count=int(rate * warmup), loop=True,
                                                  first_pass=passes + 1), bootstrap, messages=messages, progress=False)
                    passes, published = sent["passes"], published + sent["alerts"]
                cpu0 = cpu_seconds(runs)
                start = time.time()
                sent = replay(SimulatorConfig(topic=topic, rate=rate, count=count, loop=True, first_pass=passes + 1),
                              bootstrap, messages=messages, progress=False)
                passes, published = sent["passes"], published + sent["alerts"]
                end_publish = time.time()
                print(f"{name}: published {sent['alerts']} in {sent['seconds']} s ({sent['alerts_per_s']}/s)",
                      flush=True)
                try:
                    drained_at = wait_drained(store, runs, published, timeout=3600)
                except RuntimeError as exc:  # the figures so far are still written, with the failure
                    print(f"{name}: {exc}", flush=True)
                    phases.append({"name": name, "rate": rate, "alerts": sent["alerts"], "error": str(exc),
                                   "stage_alerts_per_s": stage_rates(store, runs, start, time.time())})
                    break
                end = time.time() - (time.monotonic() - drained_at)
                phase = {"name": name, "rate": rate, "alerts": sent["alerts"], "start": start,
                         "published_s": round(end_publish - start, 1), "end": end,
                         "drained_after_publish_s": round(end - end_publish, 1),
                         "core_ms_per_alert": round((cpu_seconds(runs) - cpu0) * 1000 / sent["alerts"], 2),
                         "stage_alerts_per_s": stage_rates(store, runs, start, end),
                         "stage_ms_per_alert": stage_ms(store, runs, start, end)}
                lat = [a - k for a, k in receiver.arrivals if start <= k <= end_publish + 1]
                phase["latency_s"] = quantiles(lat)
                if fast is not None:
                    phase["realtime_latency_s"] = quantiles([a - k for a, k in fast.arrivals
                                                             if start <= k <= end_publish + 1])
                phase["latency_sample"] = len(lat)  # one received alert in receiver.every
                phase["throughput_alerts_per_s"] = round(sent["alerts"] / (end - start), 1)
                phases.append(phase)
                print(json.dumps({k: v for k, v in phase.items() if k not in ("start", "end")}), flush=True)
                time.sleep(5)
            sampler.done.set()
        finally:
            for r in runs.values():
                if r.alive():
                    r.stop_file.touch()
            for s, r in runs.items():
                if r.alive():
                    print(runner.stop(s, timeout=120), flush=True)
            receiver.done.set()
            if fast is not None:
                fast.done.set()
            from fink.io import hbase

            conn = hbase.connect(*FinkConfig().hbase_host_port)
            try:
                hbase.delete_tables(conn, table)
            finally:
                conn.close()
            shutil.rmtree(data, ignore_errors=True)

    failed = [p for p in phases if "error" in p]
    phases = [p for p in phases if "error" not in p]
    steady_phases = [p for p in phases if p["rate"]]
    at300 = next((p for p in steady_phases if p["rate"] == 300), steady_phases[0] if steady_phases else None)
    at100 = next((p for p in steady_phases if p["rate"] == 100), None)
    fastest = max(steady_phases, key=lambda p: p["rate"]) if steady_phases else None
    burst_phase = next((p for p in phases if not p["rate"]), None)
    results.update({
        "e2e_alerts_per_s": fastest["throughput_alerts_per_s"] if fastest else None,
        "latency_p50_s": at300["latency_s"]["p50"] if at300 else None,
        "latency_p95_s": at300["latency_s"]["p95"] if at300 else None,
        "latency_p99_s": at300["latency_s"]["p99"] if at300 else None,
        "realtime_latency_p50_s": (at100 or {}).get("realtime_latency_s", {}).get("p50"),
        "realtime_latency_p99_s": (at100 or {}).get("realtime_latency_s", {}).get("p99"),
        "realtime_latency_p99_at_300_s": (at300 or {}).get("realtime_latency_s", {}).get("p99"),
        "latency_p50_at_100_s": at100["latency_s"]["p50"] if at100 else None,
        "latency_p99_at_100_s": at100["latency_s"]["p99"] if at100 else None,
        f"burst_{burst // 1000}k_drain_s": round(burst_phase["end"] - burst_phase["start"], 1) if burst_phase else None,
        "received_alerts": receiver.received, "latency_sample_every": receiver.every,
        "peak_rss_mb": {k: round(v) for k, v in sampler.peak.items()},
        "peak_rss_total_mb": round(sampler.total_peak),
        "phases": [{k: v for k, v in p.items() if k not in ("start", "end")} for p in phases],
        "failed_phases": failed,
        "targets": {"e2e_alerts_per_s": ">= 600", "latency_p50_s": "<= 5 (at 300/s)",
                    "latency_p99_s": "<= 15 (at 300/s)", "latency_p50_at_100_s": "<= 2",
                    "latency_p99_at_100_s": "<= 5", "burst_40k_drain_s": "<= 90", "cold_start_s": "<= 30",
                    "realtime_latency_p50_s": "<= 0.1 (at 100/s)", "realtime_latency_p99_s": "<= 1 (at 100/s)",
                    "realtime_latency_p99_at_300_s": "<= 2"},
    })
    if "burst_40k_drain_s" not in results:
        results["burst_40k_drain_s"] = None  # the key the issue names, with a burst of another size
    Path(args.out).write_text(json.dumps(results, indent=1))
    plot(receiver.arrivals, phases, Path(args.out).with_suffix(".png"),
         {"services": "four stages as services", "queries": "four queries in one Spark driver",
          "one-pass": "one pass through every stage (fink start pipeline)"}[args.mode],
         every=receiver.every)
    print(json.dumps(results, indent=1))
    # the same figures as data, for the docs' benchmarks page (docs/benchmarks.md)
    name = "e2e" if (args.survey, args.mode) == ("ztf", "one-pass") else f"e2e-{args.survey}-{args.mode}"
    if args.master:
        name += f"-cluster-{args.executors}x1core"
    lanes = [("latency per phase (micro-batch lane)", "latency_s")]
    if fast is not None:
        lanes.append(("latency per phase (real-time lane)", "realtime_latency_s"))
    save_result(name, results, plots=[
        {"title": title, "table": "phases", "x": "name", "y": [f"{key}.p{q}" for q in (50, 95, 99)],
         "ylabel": "seconds"} for title, key in lanes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
