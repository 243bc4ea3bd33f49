"""The ``fink`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fink.config import ServicesConfig, fink_home, local_path, service_password
from fink.errors import FinkError, JvmArtifactsError
from fink.log import logger
from fink.ops import completeness, replays, runner, services, watch
from fink.runtime import jvm

USAGE = """\
Handle the alert stream received by Apache Spark (Kafka in, Kafka and HBase out)

 Usage:
    fink init [-c <conf>] [--project DIR]          create $FINK_HOME, services.yaml and the conf's folders;
                                                   copy the notebooks, conf/ and the sample night into DIR
    fink services start|stop|status [NAME...]      local Kafka, HBase and Thrift [--json]; `spark`: a cluster
    fink start <service> [-c <conf>] [--simulator] run notebooks/<service>.ipynb headless [-p key=value]
    fink stop <service|all>                        stop a service cleanly (forced after a timeout)
    fink show [--json]                             running services: pid, uptime, state, rates, last batch
    fink jvm fetch|archive|versions                resolve the pinned JVM artifacts and compile the
                                                   project's Spark plugin / archive the Spark driver's
                                                   classes (quicker starts) / list them
    fink datasim generate|download ...             simulate a night / fetch a real ZTF night
    fink checkstream <topic> [--from earliest]     watch a topic: counts, rates, lag, latest alerts
    fink compact <YYYYMMDD> [--raw PATH]           compact a finished night of the raw archive
    fink users add|grant|revoke|list|remove ...    users of the distribution topics (SCRAM, ACLs)
    fink watchlist add|list|remove <name> [--user U] a user's positions / object ids -> their own topic, live
    fink replay --nights A[:B] --topic T [--where SQL] past alerts to a topic; run again to resume
    fink report night <YYYYMMDD> [-c <conf>]       per-exposure counts: published .. archived; flags the gaps
    fink demo                                      the whole broker on the sample night, then a report

 Services (notebooks/): {services}
 Configuration: conf/local.yaml (default), conf/ci.yaml, conf/cluster.yaml
 Home: {home}

 To get help for a command:
    fink <command> -h
"""


def _usage() -> str:
    names = sorted(p.stem for p in runner.notebooks_dir().glob("*.ipynb"))
    return USAGE.format(services=", ".join(names) or "(none)", home=fink_home())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fink", usage=argparse.SUPPRESS, add_help=False)
    sub = p.add_subparsers(dest="command")
    ini = sub.add_parser("init", help="create $FINK_HOME, a default services.yaml and the folders of a conf")
    ini.add_argument("-c", "--conf", help="parameters file whose data_dir and paths to create")
    ini.add_argument("--project", metavar="DIR", help="copy the notebooks, conf/ and the sample night into DIR "
                     "(a work folder for an installed package; files already there are kept)")
    st = sub.add_parser("start", help="run a service notebook headless in the background")
    st.add_argument("service")
    st.add_argument("-c", "--conf", help="papermill parameters file (conf/*.yaml)")
    st.add_argument("--simulator", action="store_true", help="read the simulator's stream")
    st.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a notebook parameter (YAML value), over the conf file; repeatable")
    sp = sub.add_parser("stop", help="stop a service notebook")
    sp.add_argument("service", help="a service name, or 'all'")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds before forcing (default 60)")
    sub.add_parser("show", help="list running services").add_argument("--json", action="store_true")
    j = sub.add_parser("jvm", help="JVM artifacts")
    j.add_argument("action", choices=["fetch", "archive", "versions"])
    j.add_argument("--force", action="store_true", help="archive: write the class archive again")
    ds = sub.add_parser("datasim", help="simulated and real alert data")
    dsub = ds.add_subparsers(dest="datasim_command", required=True)
    gen = dsub.add_parser("generate", help="write a simulated night (one container file, truth.csv)")
    gen.add_argument("--out", required=True, help="folder to write")
    gen.add_argument("--night", default="20261127", help="YYYYMMDD")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--objects", type=int, default=120, help="objects drawn (about 2 alerts each)")
    gen.add_argument("--schema", default="4.02", choices=["3.3", "4.02"])
    gen.add_argument("--files", action="store_true", help="one <candid>.avro per alert instead of one archive")
    dl = dsub.add_parser("download", help="download and unpack a public ZTF night", add_help=False)
    dl.add_argument("args", nargs=argparse.REMAINDER)
    cs = sub.add_parser("checkstream", help="watch a topic")
    cs.add_argument("topic")
    cs.add_argument("--bootstrap", default="127.0.0.1:9092")
    cs.add_argument("--from", dest="start", default="earliest", help="earliest | latest | <offset>")
    cs.add_argument("--max", type=int, default=0, help="stop after this many messages")
    cs.add_argument("--idle", type=float, default=10.0, help="stop after this many seconds without a message")
    cs.add_argument("--json", action="store_true", help="print the final summary as JSON")
    cs.add_argument("--survey", default="ztf", help="ztf | rubin | a survey description file (what the messages are)")
    cp = sub.add_parser("compact", help="compact a finished night of the raw archive")
    cp.add_argument("night", help="YYYYMMDD")
    cp.add_argument("--raw", default="", help="raw archive (default: $FINK_HOME/data/raw)")
    cp.add_argument("--files", type=int, default=1, help="files to write for the night (default 1)")
    us = sub.add_parser("users", help="users of the distribution topics (SASL/SCRAM and ACLs)")
    usub = us.add_subparsers(dest="users_command", required=True)
    ua = usub.add_parser("add", help="create a user (password generated, or read from stdin)")
    ua.add_argument("name")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for verb in ("grant", "revoke"):
        ug = usub.add_parser(verb, help=f"{verb} read access to a distribution topic")
        ug.add_argument("name")
        ug.add_argument("topic")
    usub.add_parser("list", help="users and the topics they may read").add_argument("--json", action="store_true")
    usub.add_parser("remove", help="delete a user and their grants").add_argument("name")
    watch.add_parser(sub)
    replays.add_parser(sub)
    completeness.add_parser(sub)
    d = sub.add_parser("demo", help="the whole broker on the sample night, then a report")
    d.add_argument("-c", "--conf", default=None, help="parameters file (default conf/local.yaml)")
    d.add_argument("--keep-services", action="store_true", help="leave Kafka and HBase running at the end")
    d.add_argument("--timeout", type=float, default=420.0, help="seconds to account for every alert")
    d.add_argument("--rate", type=float, default=25.0, help="alerts/s the simulator publishes")
    return p


def _services_parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(prog="fink services", description="local Kafka / HBase / Thrift")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.add_argument("names", nargs="*", help=f"services among {', '.join([*services.SERVICES, *services.GROUPS])} "
                   f"(default: {', '.join(services.DEFAULT)}; spark: a standalone master and two workers)")
    s.add_argument("--json", action="store_true", help="status as JSON")
    return s


def _copy_project(dest: Path) -> None:
    """Copy the project's notebooks, conf files and sample night into ``dest`` (what is there stays)."""
    import shutil

    from fink.config import PROJECT_FILES, project_dir

    source = project_dir()
    if source == dest.resolve():
        raise FinkError(f"{dest} is the project folder itself: nothing to copy")
    copied = kept = 0
    for folder, pattern in PROJECT_FILES.items():
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / folder).glob(pattern)):
            target = dest / folder / path.name
            if target.exists():
                kept += 1
                continue
            shutil.copyfile(path, target)
            copied += 1
    print(f"project: {dest} ({copied} files copied from {source}, {kept} already there kept); "
          f"run `fink start` from there, or set FINK_PROJECT={dest}")


def _init(conf: str | None = None, project: str | None = None) -> int:
    import yaml

    from fink.config import FinkConfig

    home = fink_home()
    for sub in ("data", "logs", "runs", "run", "services", "metrics", "reports"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    params = {}
    if conf:
        try:
            params = yaml.safe_load(Path(conf).read_text()) or {}
        except OSError as exc:
            raise FinkError(f"{conf}: cannot read parameters file ({exc.strerror})") from exc
    cfg = FinkConfig.from_mapping({k: v for k, v in params.items() if k in FinkConfig.field_names()},
                                  source=conf or "defaults")
    folders = [cfg.data_uri(part) for part in ("raw", "quarantine", "science", "checkpoints")]
    folders += [str(v) for k, v in params.items() if k.endswith("_path") and v]  # raw_path, science_path...
    for folder in folders:
        local = local_path(folder)
        if local is None:
            print(f"not a local path, created by the stage that writes it: {folder}")
            continue
        local.mkdir(parents=True, exist_ok=True)
        print(f"folder: {folder}")
    conf = home / "services.yaml"
    if not conf.exists():
        lines = ["# Local services of `fink services` (loopback only). Edit ports if taken."]
        lines += [f"{k}: {json.dumps(v)}" for k, v in ServicesConfig().to_dict().items()]
        conf.write_text("\n".join(lines) + "\n")
    ServicesConfig.load(home)  # validate an existing one
    secrets = home / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    service_password(home, create=True)  # the local broker's service account (fink.ops.services.kafka_server)
    print(f"FINK_HOME: {home}\nservices configuration: {conf}\nsecrets (mode 0600 files): {secrets}")
    if project:
        _copy_project(Path(project))
    return 0


def _services(args: argparse.Namespace) -> int:
    if args.action == "status":
        rows = services.status(args.names)
        if args.json:
            print(json.dumps([r.to_dict() for r in rows], indent=1))
        else:
            for r in rows:
                ports = ",".join(str(p) for p in r.ports.values())
                print(f"{r.name:8s} {r.state:8s} pid={r.pid or '-':<8} ports={ports:18s} log={r.log}")
        return 0 if all(r.state == "running" for r in rows) else 3
    action = services.start if args.action == "start" else services.stop
    for line in action(args.names):
        print(line)
    return 0


def _show(as_json: bool = False) -> int:
    rows = [runner.describe(r) for r in runner.running()]
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no service running")
    else:
        print(f"{'service':14s} {'pid':>8s} {'started':19s} {'uptime':>8s} {'state':10s} {'in/s':>7s} "
              f"{'batches':>7s} {'last batch':19s} {'lag':>6s}")
    for r in rows:
        uptime = f"{int(r['uptime_s']) // 3600}:{int(r['uptime_s']) % 3600 // 60:02d}:{int(r['uptime_s']) % 60:02d}"
        print(f"{r['service']:14s} {r['pid']:8d} {r['started_at'][:19]:19s} {uptime:>8s} {r['state']:10s} "
              f"{r.get('input_rate', '-')!s:>7s} {r.get('batches', '-')!s:>7s} {r.get('last_batch', '-'):19s} "
              f"{r.get('lag') if r.get('lag') is not None else '-'!s:>6s}")
    ended = _ended_runs({r["service"] for r in rows})
    if ended:
        print("\nlast run of each service not running:")
        for r in ended:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ended"] or r["started"] or 0))
            error = f"  {(r.get('error') or '').splitlines()[0][:160]}" if r["state"] == "failed" else ""
            print(f"  {r['service']:14s} {r['state'] or 'unknown':10s} ended {when}  {r['run_dir'] or ''}{error}")
    print("\n fink start <service> [-c conf/local.yaml]  |  fink stop <service|all>  |  fink show [--json]")
    return 0


def _ended_runs(running: set[str], days: float = 7.0) -> list[dict]:
    """The latest run of each service that is not running, if it ended in the last ``days``
    (a failed run says so, with its error, until the service runs again)."""
    from fink.runtime import metrics

    try:
        runs = metrics.Store().runs(since=time.time() - days * 86400)
    except Exception:  # noqa: BLE001 - no metrics store yet: nothing ended
        return []
    latest: dict[str, dict] = {}
    for r in runs:  # newest first
        if r["service"] not in running and r["service"] not in latest and r["ended"] is not None:
            latest[r["service"]] = r
    return sorted(latest.values(), key=lambda r: r["service"])


def _params(pairs: list[str]) -> dict:
    """``-p key=value`` pairs, each value read as YAML (``-p trigger="2 seconds" -p duration=60``)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FinkError(f"-p {pair!r}: expected key=value")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def _datasim(args: argparse.Namespace) -> int:
    if args.datasim_command == "download":
        from fink.sim import download

        return download.main(args.args, prog="fink datasim download")
    import time

    from fink.sim import NightConfig, generate_night

    t0 = time.perf_counter()
    night = generate_night(NightConfig(night=args.night, seed=args.seed, n_objects=args.objects))
    out = Path(args.out)
    written = night.write(out, args.schema) if args.files else [night.write_archive(out, args.schema)]
    seconds = time.perf_counter() - t0
    print(f"{len(night.alerts)} alerts of {len(night.truth)} objects (seed {args.seed}, night {args.night}) "
          f"in {seconds:.1f} s ({len(night.alerts) / seconds:.0f} alerts/s): "
          f"{sum(p.stat().st_size for p in written) / 1e6:.2f} MB in {out}")
    return 0


def _checkstream(args: argparse.Namespace) -> int:
    from fink.ops import checkstream

    start = int(args.start) if args.start.lstrip("-").isdigit() else args.start

    def show(stats):
        print(stats.text(), flush=True)

    stats = checkstream.watch(args.bootstrap, args.topic, start=start, max_messages=args.max, idle=args.idle,
                              on_update=None if args.json else show, every=2.0, survey=args.survey)
    if args.json:
        print(json.dumps(stats.summary(), indent=1))
    else:
        for partition, offset, reason, detail in stats.examples:
            print(f"  partition {partition} offset {offset}: {reason} ({detail})")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from fink.config import FinkConfig
    from fink.io import filestore
    from fink.io.table_use import TableInUse
    from fink.runtime.session import get_spark
    from fink.stages.raw_archive import ARCHIVE_OPTIONS

    raw = args.raw or FinkConfig().data_uri("raw")
    spark = get_spark(FinkConfig(log_level="ERROR"), app_name="fink-compact")
    try:
        report = filestore.compact(spark, raw, f"night={args.night}", files=args.files, options=ARCHIVE_OPTIONS)
    except (FileNotFoundError, TableInUse) as exc:
        print(f"fink: error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps(report, indent=1))
    return 0


def _users(args: argparse.Namespace) -> int:
    from fink.io import access

    bootstrap = ServicesConfig.load().kafka_bootstrap
    if args.users_command == "add":
        password = sys.stdin.readline().strip() if args.password_stdin else None
        if args.password_stdin and not password:
            raise access.AccessError("--password-stdin: standard input held no password")
        path = access.add_user(bootstrap, args.name, password)
        print(f"user {args.name}: created; password in {path} (mode 0600): hand it over, never paste it in a notebook")
    elif args.users_command == "grant":
        access.grant(bootstrap, args.name, args.topic)
        print(f"user {args.name}: may read {args.topic}")
    elif args.users_command == "revoke":
        access.revoke(bootstrap, args.name, args.topic)
        print(f"user {args.name}: may no longer read {args.topic}")
    elif args.users_command == "remove":
        access.remove_user(bootstrap, args.name)
        print(f"user {args.name}: removed")
    else:
        found = access.grants(bootstrap)
        if args.json:
            print(json.dumps(found, indent=1))
        for name, topics in found.items():
            if not args.json:
                print(f"{name:20s} {', '.join(topics) or '(no topic)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fink`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if argv[0] == "services":
        # intermixed: `status --json kafka` and `status kafka --json` alike
        args = _services_parser().parse_intermixed_args(argv[1:])
        args.command = "services"
    else:
        args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args.conf, args.project)
        if args.command == "services":
            return _services(args)
        if args.command == "start":
            run = runner.start(args.service, args.conf, args.simulator, params=_params(args.param))
            print(f"{run.service}: started (pid {run.pid}); executed notebook and log in {run.run_dir}")
            return 0
        if args.command == "stop":
            print(runner.stop(args.service, args.timeout))
            return 0
        if args.command == "show":
            return _show(args.json)
        if args.command == "jvm":
            if args.action == "fetch":
                done = jvm.fetch()
                print(f"resolved: {', '.join(done)}" if done else f"JVM artifacts up to date in {jvm.cache_dir()}")
                from fink.runtime import plugin

                try:  # an optimisation: sessions run without it, slower
                    built = plugin.build()
                    print(f"Spark plugin compiled: {built}" if built else f"Spark plugin up to date: {plugin.jar()}")
                except JvmArtifactsError as exc:
                    print(f"warning: Spark sessions will run without the project's plugin: {exc}", file=sys.stderr)
            elif args.action == "archive":
                from fink.runtime import class_archive

                written = class_archive.build(force=args.force)
                print(f"class archive written: {written}" if written else
                      f"class archive up to date: {class_archive.archive_path()}")
            else:
                for component, artifacts in jvm.versions().items():
                    for name, version in sorted(artifacts.items()):
                        print(f"{component:6s} {name} {version}")
            return 0
        if args.command == "demo":
            from fink.ops import demo

            return demo.run(args.conf, keep_services=args.keep_services, timeout=args.timeout, rate=args.rate)
        if args.command == "datasim":
            return _datasim(args)
        if args.command == "checkstream":
            return _checkstream(args)
        if args.command == "compact":
            return _compact(args)
        if args.command == "users":
            return _users(args)
        if args.command == "watchlist":
            return watch.command(args)
        if args.command == "replay":
            return replays.command(args)
        if args.command == "report":
            return completeness.command(args)
    except FinkError as exc:
        print(f"fink: error: {exc}", file=sys.stderr)
        return 1
    print(_usage())
    return 2


if __name__ == "__main__":
    sys.exit(main())
