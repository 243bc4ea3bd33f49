"""Benchmark of replays: alerts/s sent from the archives to a topic.

The real ZTF 4.02 alerts of ``../shared/datasim/ztf/native-4.02_*`` (looped with new candids) go
through Kafka, stream2raw and raw2science into a science archive once; ``fink.stages.replay.run``
then sends the night to a topic: every alert, then those brighter than magnitude 18. Reported:
alerts selected and sent, seconds (from the query's start to the last commit), alerts/s. Needs the
local Kafka (`make services`)::

    .venv/bin/python benchmarks/bench_replay.py [--alerts 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid

from bench_distribution import science_archive
from bench_stream2raw import SHARED
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.io import kafka
from fink.runtime import streaming
from fink.sim.sources import read_messages
from fink.stages import replay


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=10000)
    args = parser.parse_args()
    messages = [m for folder in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(folder)]
    bootstrap = ServicesConfig.load().kafka_bootstrap
    from fink.runtime.session import get_spark

    spark = get_spark(FinkConfig(kafka_bootstrap=bootstrap, log_level="ERROR"), app_name="bench-replay")
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fink = science_archive(spark, bootstrap, messages, args.alerts, tmp)
            science = spark.read.parquet(f"{tmp}/science")
            nights = sorted(r[0] for r in science.select("night").distinct().collect())
            for where in ("", "candidate.magpsf < 18"):
                topic = f"bench_replay_{uuid.uuid4().hex[:6]}"
                cfg = replay.ReplayConfig(nights=f"{nights[0]}:{nights[-1]}", topic=topic, where=where)
                account = replay.run(spark, cfg, fink, progress=False)
                runs.append({"where": where or "(all)", "selected": sum(account["selected"].values()),
                             "sent": sum(account["sent"].values()), "complete": account["complete"],
                             "seconds": account["seconds"], "alerts_per_s": account["alerts_per_s"]})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        streaming.stop_active(spark)
        spark.stop()
    save_result("replay", {"replay_alerts_per_s_all": runs[0]["alerts_per_s"], "args": vars(args), "runs": runs})


if __name__ == "__main__":
    with kafka.temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
