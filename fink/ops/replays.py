"""``fink replay``: past nights of the archives to a topic (:mod:`fink.stages.replay`), resumable.

The same command, run again after an interruption, takes up where the first stopped; it
prints how many alerts each night selected and sent, and where the account is recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fink.config import FinkConfig, ServicesConfig


def add_parser(sub: Any) -> None:
    """The ``replay`` command's arguments, under the ``fink`` parser's subcommands ``sub``."""
    r = sub.add_parser("replay", help="past alerts of the archives to a topic (resumable, each alert once)")
    r.add_argument("--nights", required=True, help="YYYYMMDD or YYYYMMDD:YYYYMMDD (both included)")
    r.add_argument("--topic", required=True)
    r.add_argument("--where", default="", help="Spark SQL over the alert's and science columns")
    r.add_argument("--user", default="", help="grant the topic to this user (fink users add)")
    r.add_argument("--no-cutouts", action="store_true", help="send the alerts without their cutouts")
    r.add_argument("--survey", default="ztf")
    r.add_argument("--max-files", type=int, default=8, help="science archive files per micro-batch (default 8)")
    r.add_argument("-c", "--conf", help="parameters file (conf/*.yaml): data_dir, Kafka, Spark")
    r.add_argument("--data-dir", default=None, help="archive root, over the conf file's")
    r.add_argument("--json", action="store_true", help="print the account as JSON")


def command(args: argparse.Namespace) -> int:
    """Run ``fink replay ...``; 0 when every selected alert is on the topic."""
    import yaml

    from fink.runtime import streaming
    from fink.runtime.session import get_spark
    from fink.stages import replay

    conf = {}
    if args.conf:
        with open(args.conf) as fh:
            conf = {k: v for k, v in (yaml.safe_load(fh) or {}).items() if k in FinkConfig.field_names()}
    conf.setdefault("kafka_bootstrap", ServicesConfig.load().kafka_bootstrap)
    if args.data_dir is not None:
        conf["data_dir"] = args.data_dir
    fink = FinkConfig.from_mapping({**conf, "log_level": "ERROR"}, args.conf or "fink replay")
    cfg = replay.ReplayConfig.from_mapping({"nights": args.nights, "topic": args.topic, "where": args.where,
                                            "user": args.user, "cutouts": not args.no_cutouts,
                                            "survey": args.survey, "max_files_per_trigger": args.max_files},
                                           "fink replay")
    spark = get_spark(fink, app_name="fink-replay")
    try:
        account = replay.run(spark, cfg, fink, progress=not args.json)
    finally:
        streaming.stop_active(spark)
        spark.stop()
    interrupted = account["stopped_because"] == "interrupted"
    if args.json:
        print(json.dumps(account, indent=1))
    else:
        print(replay.table(account))
        taken = f", taken up after {account['resumed_from']} sent before" if account["resumed_from"] else ""
        print(f"{sum(account['sent'].values())} alerts on {cfg.topic} ({account['alerts_per_s']} alerts/s{taken}); "
              f"account in {replay.report_path(cfg)}")
    if interrupted:
        print("interrupted: run the same command again to take up where it stopped", file=sys.stderr)
    return 0 if account["complete"] else 130 if interrupted else 1
