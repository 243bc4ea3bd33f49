"""Benchmarks of the alert sources: generator alerts/s, simulator replay alerts/s and MB/s.

Needs the local Kafka (`make services`). Usage::

    .venv/bin/python benchmarks/bench_datasim.py [--count 20000] \
        [--real ../shared/datasim/ztf/native-4.02_fink-broker-2023-10]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid

from results import save as save_result

from fink.config import ServicesConfig
from fink.io.kafka import temporary_topics
from fink.sim import NightConfig, generate_night
from fink.sim.simulator import SimulatorConfig, replay
from fink.sim.sources import read_messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=120)
    parser.add_argument("--count", type=int, default=20000, help="alerts per replay run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--real", default=None, help="a folder of real ZTF .avro alerts to replay too")
    args = parser.parse_args()
    bootstrap = ServicesConfig.load().kafka_bootstrap
    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}"}

    t0 = time.perf_counter()
    night = generate_night(NightConfig(n_objects=args.objects))
    t1 = time.perf_counter()
    messages = list(night.messages())
    t2 = time.perf_counter()
    results["generator"] = {"alerts": len(messages), "simulate_alerts_per_s": round(len(messages) / (t1 - t0), 1),
                            "simulate_and_encode_alerts_per_s": round(len(messages) / (t2 - t0), 1),
                            "mean_alert_bytes": sum(map(len, messages)) // len(messages)}
    sources = {"generated": messages}
    if args.real:
        sources["real"] = list(read_messages(args.real))
    for name, msgs in sources.items():
        runs = []
        for _ in range(args.runs):
            config = SimulatorConfig(topic=f"bench_{uuid.uuid4().hex[:8]}", count=args.count, loop=True)
            report = replay(config, bootstrap, messages=msgs, progress=False)
            runs.append({k: report[k] for k in ("alerts", "seconds", "alerts_per_s", "mb_per_s")})
        results[f"replay_{name}"] = {"mean_alert_bytes": sum(map(len, msgs)) // len(msgs), "runs": runs}
    print(json.dumps(results, indent=1))
    save_result("datasim", results)


if __name__ == "__main__":
    with temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
