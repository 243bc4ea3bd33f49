"""``fink demo`` (``make demo``): the whole broker on the sample night, then a report.

What it does, in order:

1. starts the local services (Kafka, HBase, Thrift) that are not running;
2. starts the broker as one service (``fink start pipeline``: one pass through every stage,
   1 s triggers, and a real-time lane), on a fresh topic, data folder, HBase table and
   distribution topics;
3. starts the simulator service, which replays the bundled sample night into the topic,
   while two consumers time each alert's way to a topic of each lane;
4. watches the metrics store until every alert published is accounted for in every stage;
5. reads one distributed topic as a user of the SASL listener (``fink.client``);
6. stops the pipeline (``fink stop pipeline``), runs the dashboard headless for the report
   (HTML page, plots, summary), prints the summary with each lane's latency, and stops the
   services it started.

Nothing stays running: a failure on the way still stops what the demo started.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import FinkConfig, ServicesConfig, fink_home, project_dir
from fink.errors import FinkError
from fink.io import kafka
from fink.ops import dashboard, runner, services
from fink.runtime import metrics
from fink.stages.pipeline import STAGES

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

TABLE = "demo_ztf_alerts"
USER = "demo"


class DemoError(FinkError, RuntimeError):
    """The demo could not account for every alert in time."""


def _say(text: str = "") -> None:
    print(text, flush=True)


def _wait_started(runs: dict[str, runner.Run], store: metrics.Store, timeout: float) -> None:
    """Until each stage's streaming query has started (its first event in the store)."""
    deadline = time.monotonic() + timeout
    pending = dict(runs)
    while pending and time.monotonic() < deadline:
        for service, run in list(pending.items()):
            if not run.alive():
                raise DemoError(f"{service} ended while starting: see {run.run_dir}/log.txt")
            if any(e["kind"] == "started" for e in store.events(run.run_id)):
                _say(f"  {service}: query started after {time.monotonic() - deadline + timeout:.0f} s")
                del pending[service]
        time.sleep(1.0)
    if pending:
        raise DemoError(f"not started within {timeout:.0f} s: {', '.join(pending)}")


def _listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port`` (a service of another FINK_HOME)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def accounts(store: metrics.Store, runs: dict[str, runner.Run]) -> dict[str, Any]:
    """Alerts published, and each stage's accounts so far (from the metrics store)."""
    ids = [r.run_id for r in runs.values()]
    published = sum(int(n["value"].get("alerts", 0)) for n in store.notes(ids, "simulator"))
    return {"published": published, "stages": dashboard.summary(store.batches(runs=ids))}


def complete(acc: dict[str, Any]) -> bool:
    """Every alert published went through every stage, or was set aside with a reason."""
    s = acc["stages"]
    if not acc["published"] or any(name not in s for name in STAGES):
        return False
    kept = s["raw2science"]["out"]
    return (s["stream2raw"]["in"] == acc["published"]
            and s["raw2science"]["in"] == s["stream2raw"]["out"]
            and s["raw2science"]["in"] == kept + s["raw2science"]["rejected"]
            and s["distribution"]["in"] == kept and s["archive"]["in"] == kept and s["archive"]["out"] == kept)


def _delivered(store: metrics.Store, run: str, topic: str, timeout: float = 60.0) -> int:
    """Alerts distribution's ``run`` delivered to ``topic``, once each batch it ran has noted its
    delivery (a batch's transaction commits on its own thread, after the batch)."""
    deadline = time.monotonic() + timeout
    while True:
        batches = store.batches(runs=[run])
        notes = list(batches.loc[(batches["query"] == "distribution") & (batches["input_rows"] > 0), "note"])
        if all(notes) or time.monotonic() > deadline:
            return sum(int((n.get("delivered") or {}).get(topic, 0)) for n in notes if n)
        time.sleep(1.0)


def _progress_line(acc: dict[str, Any]) -> str:
    s = acc["stages"]
    parts = [f"published {acc['published']}"]
    parts += [f"{name} {s[name]['in']}->{s[name]['out']}" if name in s else f"{name} -" for name in STAGES]
    return ", ".join(parts)


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 2) if values else None


def receive(topic: str, expected: int, idle: float = 20.0) -> dict[str, Any]:
    """Read ``topic`` as the demo user (SASL/SCRAM): count, end-to-end latency, best candidate."""
    from fink.client import AlertStream

    received, latencies, best = 0, [], None
    with AlertStream(topic, group_id=f"{USER}-{uuid.uuid4().hex[:6]}", user=USER) as stream:
        for _, alert in stream.alerts(limit=expected, idle=idle):
            now = time.time()
            received += 1
            sent = alert.get("kafka_timestamp")  # when the alert entered the input topic
            if sent is not None:
                latencies.append(now - (sent.timestamp() if hasattr(sent, "timestamp") else sent / 1e6))
            if best is None or (alert.get("snia_prob") or 0) > (best.get("snia_prob") or 0):
                best = alert
    return {"received": received, "expected": expected, "latency_p50_s": _percentile(latencies, 50),
            "latency_p95_s": _percentile(latencies, 95), "best": best}


def run(conf: str | None = None, keep_services: bool = False, timeout: float = 420.0, rate: float = 25.0) -> int:
    """Run the demo; return 0 when every alert is accounted for (raises :class:`DemoError` otherwise)."""
    t0 = time.monotonic()
    conf_path = str(Path(conf) if conf else project_dir() / "conf" / "local.yaml")
    home = fink_home()
    started_services: list[str] = []
    _say("== services")
    for status in services.status():
        if status.state != "running" and not any(_listening(port) for port in status.ports.values()):
            started_services.append(status.name)  # neither ours in this FINK_HOME nor another's
    for line in services.start(started_services) if started_services else ["  all running already"]:
        _say(f"  {line}")
    runs: dict[str, runner.Run] = {}
    try:
        return _pipeline(conf_path, home, t0, timeout, rate, runs)
    finally:
        for name, r in runs.items():  # after a failure: what the demo started, and only that
            if r.alive():
                _say(f"  {runner.stop(name, timeout=60)}")
        if started_services and not keep_services:
            _say("== stopping the services the demo started")
            for line in services.stop(started_services):
                _say(f"  {line}")
        left = runner.running()
        _say(f"== done in {time.monotonic() - t0:.0f} s; services of fink still running: "
             f"{', '.join(r.service for r in left) or 'none'}")


class LaneWatch:
    """Times each alert's way to a topic: arrival at this consumer - the alert's Kafka
    timestamp on the input topic (``kafka_timestamp``, carried by every distributed alert)."""

    def __init__(self, bootstrap: str, topic: str):
        import threading

        self.bootstrap, self.topic, self.latencies = bootstrap, topic, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from confluent_kafka import Consumer

        from fink.client import decode

        c = Consumer(kafka.client_config(self.bootstrap, **{
            "group.id": f"demo-watch-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "topic.metadata.refresh.interval.ms": 1000}))
        c.subscribe([self.topic])
        try:
            while not self.done.is_set():
                msg = c.poll(0.2)
                if msg is None or msg.error():
                    continue
                now, sent = time.time(), decode(msg.key(), msg.value()).get("kafka_timestamp")
                if sent is not None:
                    self.latencies.append(now - (sent.timestamp() if hasattr(sent, "timestamp") else sent / 1e6))
        finally:
            c.close()

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.thread.join(timeout=10)
        return {"alerts": len(self.latencies), "latency_p50_s": _percentile(self.latencies, 50),
                "latency_p95_s": _percentile(self.latencies, 95)}


def _pipeline(conf_path: str, home: Path, t0: float, timeout: float, rate: float,
              runs: dict[str, runner.Run]) -> int:
    from fink.io import access, hbase

    cfg = FinkConfig()
    svc = ServicesConfig.load(home)
    demo_id = time.strftime("%Y%m%d%H%M%S")
    topic = f"demo_{demo_id}"
    prefix = f"demo_{demo_id}"
    out = home / "reports" / "demo"
    data = home / "demo" / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    fast = f"{prefix}_bright_now"
    filters = {f"{prefix}_early_snia": "fink.filters.builtin:early_snia",
               f"{prefix}_sso": "fink.filters.builtin:solar_system",
               f"{prefix}_catalogued": "fink.filters.builtin:catalogued",
               fast: {"condition": "candidate.magpsf < 18.5", "lane": "realtime"}}
    params = {"data_dir": str(data), "topic": topic, "trigger": "1 seconds", "duration": timeout,
              "distribution": {"filters": filters, "topic_options": {f"{prefix}_catalogued": {"cutouts": False}}},
              "archive": {"table": TABLE}}
    store = metrics.Store()
    with kafka.temporary_topics(svc.kafka_bootstrap):  # the demo's topics go at the end: no disk filled
        kafka.ensure_topic(svc.kafka_bootstrap, topic)
        conn = hbase.connect(*cfg.hbase_host_port)
        try:
            dropped = hbase.delete_tables(conn, TABLE)  # a fresh archive table each time
        finally:
            conn.close()
        _say(f"== fink start pipeline -c {Path(conf_path).name} (one pass through every stage, 1 s triggers, "
             f"and a real-time lane), input topic {topic}"
             + (f"; dropped the previous demo's tables {', '.join(dropped)}" if dropped else ""))
        runs["pipeline"] = runner.start("pipeline", conf_path, params=params)
        _say(f"  pipeline: started (pid {runs['pipeline'].pid}), {runs['pipeline'].run_dir}")
        _wait_started(runs, store, timeout=240)
        snia_topic = f"{prefix}_early_snia"
        watches = {"micro-batch": LaneWatch(svc.kafka_bootstrap, f"{prefix}_catalogued"),
                   "real-time": LaneWatch(svc.kafka_bootstrap, fast)}

        _say(f"== simulator: the sample night into {topic} at {rate:g} alerts/s")
        runs["simulator"] = runner.start("simulator", conf_path, params={"topic": topic, "rate": rate})
        deadline = t0 + timeout
        acc = accounts(store, runs)
        last = ""
        while not complete(acc):
            if time.monotonic() > deadline:
                raise DemoError(f"not every alert accounted for after {timeout:.0f} s: {_progress_line(acc)}")
            if not runs["pipeline"].alive():
                raise DemoError(f"the pipeline stopped before the end: see {runs['pipeline'].run_dir}/log.txt")
            line = _progress_line(acc)
            if line != last:
                _say(f"  {time.monotonic() - t0:5.0f} s  {line}")
                last = line
            time.sleep(2.0)
            acc = accounts(store, runs)
        _say(f"  {time.monotonic() - t0:5.0f} s  {_progress_line(acc)}: all accounted for")

        delivered = _delivered(store, runs["pipeline"].run_id, snia_topic)
        time.sleep(3.0)  # the lanes' last messages to their watches
        lanes = {name: w.stop() for name, w in watches.items()}
        _say(f"== user client: {USER} reads {snia_topic} on the SASL listener ({delivered} alerts delivered)")
        access.add_user(svc.kafka_bootstrap, USER)
        access.grant(svc.kafka_bootstrap, USER, snia_topic)
        try:
            got = receive(snia_topic, delivered)
        finally:
            access.remove_user(svc.kafka_bootstrap, USER)
        got["lanes"] = lanes

        _say("== fink stop pipeline (the query ends at a batch boundary)")
        for r in runs.values():
            if r.alive():
                r.stop_file.touch()
        for name, r in runs.items():
            _say(f"  {runner.stop(name, timeout=90) if r.alive() else f'{name}: finished'}")
        top_candidates(data / "science", out / "top_candidates.csv")
        night = completeness_report(data, topic, params, out)
        ids = [r.run_id for r in runs.values()]
        runs["dashboard"] = board = runner.start("dashboard", conf_path, params={
            "runs": ids, "report_dir": str(out), "completeness_night": night})
        if not runner.wait(board, timeout=180):
            raise DemoError(f"the dashboard did not finish its report: see {board.run_dir}/log.txt")
        status = json.loads((Path(board.run_dir) / "status.json").read_text())
        if status.get("html"):
            shutil.copy(status["html"], out / "dashboard.html")
    return _print_summary(store, runs, got, out, t0)


def completeness_report(data: Path, topic: str, params: dict[str, Any], out: Path) -> str:
    """``fink report night`` on the demo's night (before its topics go): per exposure, where each
    alert went; the CSV beside the demo's report, and in the dashboard's. Returns the night."""
    import subprocess
    import sys

    import yaml

    night = sorted(p.name.split("=", 1)[1] for p in (data / "raw").glob("night=*"))[-1]
    conf = out / "deployment.yaml"
    conf.write_text(yaml.safe_dump({k: v for k, v in params.items() if k in ("data_dir", "topic", "distribution",
                                                                             "archive")}))
    _say(f"== fink report night {night} (per exposure: published, ingested, kept, sent, archived)")
    done = subprocess.run([sys.executable, "-m", "fink.ops.cli", "report", "night", night, "-c", str(conf)],
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    _say("\n".join(f"  {line}" for line in (lines[-12:] if done.returncode else lines[-2:])))
    if done.returncode not in (0, 1):
        raise DemoError(f"fink report night {night} failed: {done.stderr[-2000:]}")
    shutil.copy(fink_home() / "reports" / "completeness" / f"{night}.csv", out / "completeness.csv")
    return night


def top_candidates(science: Path, path: Path, n: int = 10) -> None:
    """The ``n`` alerts of the science archive most likely SN Ia, as CSV (read with pyarrow: the
    science archive's values, the object's id from the raw archive beside it)."""
    import pyarrow.parquet as pq

    cols = ["candid", "night", "snia_prob", "roid", "xm_type", "lc_amplitude_r", "lc_observation_count_r"]
    table = pq.read_table(str(science), columns=cols).to_pandas()
    objects = pq.read_table(str(science.parent / "raw"), columns=["objectId", "candid", "night"]).to_pandas()
    table = objects.merge(table, on=["candid", "night"]).drop(columns="night")
    table.sort_values("snia_prob", ascending=False, na_position="last").head(n).to_csv(path, index=False)


def _print_summary(store: metrics.Store, runs: dict[str, runner.Run], got: dict[str, Any], out: Path,
                   t0: float) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fink.client import plot_alert

    acc = accounts(store, runs)
    s = acc["stages"]
    summary = {"published": acc["published"], "stages": s,
               "client": {k: v for k, v in got.items() if k != "best"}, "seconds": round(time.monotonic() - t0, 1)}
    if got["best"] is not None:
        fig = plot_alert(got["best"])
        fig.savefig(out / "best_candidate.png", dpi=100)
        plt.close(fig)
        summary["best_candidate"] = {"objectId": got["best"].get("objectId"),
                                     "snia_prob": got["best"].get("snia_prob")}
    (out / "demo.json").write_text(json.dumps(summary, indent=1, default=str))

    _say("\n== The sample night through the broker")
    _say(f"  simulator published {acc['published']} alerts")
    header = f"  {'stage':13s} {'in':>6s} {'out':>6s} {'set aside':>22s} {'latency p50':>12s} {'p95':>7s}"
    _say(header)
    aside = {"stream2raw": ("quarantined", "quarantined"), "raw2science": ("rejected", "rejected by cuts")}
    for name in STAGES:
        row = s[name]
        key, label = aside.get(name, ("", ""))
        extra = f"{row.get(key, 0)} {label}" if key else ("messages out" if name == "distribution" else "")
        _say(f"  {name:13s} {row['in']:6d} {row['out']:6d} {extra:>22s} "
             f"{row.get('latency_p50_s', '-')!s:>10s} s {row.get('latency_p95_s', '-')!s:>5s} s")
    _say("  (latency: seconds from the alert's arrival in Kafka to the stage handling it)")
    for lane, w in got.get("lanes", {}).items():
        _say(f"  {lane} lane: {w['alerts']} alerts timed from the input topic to their topic: "
             f"latency p50 {w['latency_p50_s']} s, p95 {w['latency_p95_s']} s")
    _say(f"  user client: {got['received']} of {got['expected']} alerts received")
    if "best_candidate" in summary:
        _say(f"  most likely SN Ia received: {summary['best_candidate']['objectId']} "
             f"(snia_prob {summary['best_candidate']['snia_prob']:.3f})")
    _say(f"\n== Report: {out}")
    for name in ("dashboard.html", "rates.png", "latency.png", "completeness.png", "completeness.csv",
                 "best_candidate.png", "top_candidates.csv",
                 "summary.json", "demo.json"):
        if (out / name).exists():
            _say(f"  {out / name}")
    ok = complete(acc) and got["received"] == got["expected"]
    if not ok:
        raise DemoError(f"accounts do not balance: {_progress_line(acc)}; client {got['received']}/{got['expected']}")
    return 0


def fill_from_simulator(spark: "SparkSession", fink_cfg: FinkConfig, topic: str, science_path: str = "",
                        duration: float = 600.0, stop_file: str = "", survey: str = "ztf") -> dict[str, Any]:
    """Fill the science archive from the survey's bundled night replayed by the simulator
    (the description's ``simulator.sample``, relative to ``notebooks/``, and its catalogue)
    into ``topic``, then stream2raw and raw2science with every built-in module, each caught
    up (``availableNow``). For the notebooks of the stages that read the science archive,
    run with ``simulator``."""
    from fink.runtime import streaming
    from fink.sim.simulator import SimulatorConfig, replay
    from fink.stages import raw2science, stream2raw
    from fink.survey import description as surveys

    sample = surveys.load(survey).simulator
    sent = replay(SimulatorConfig(source=sample["sample"], topic=topic, survey=survey), fink_cfg.kafka_bootstrap,
                  progress=False)
    raw_stage = stream2raw.Stream2RawConfig(topic=topic, survey=survey)
    science_stage = raw2science.Raw2ScienceConfig(
        modules=["builtin"], science_path=science_path, survey=survey,
        module_params={"crossmatch": {"catalogue_path": sample["catalogue"]}})
    for make, conf, name in ((stream2raw.build, raw_stage, stream2raw.QUERY_NAME),
                             (raw2science.build, science_stage, raw2science.QUERY_NAME)):
        query = streaming.start(make(spark, conf, fink_cfg).trigger(availableNow=True), name)  # one after the other
        streaming.run_until([query], duration=duration, stop_file=stop_file)
    return {"alerts": sent["alerts"], "science": science_stage.paths(fink_cfg)["science"]}
