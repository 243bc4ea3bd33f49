"""Per-exposure completeness of a night: where each alert the survey published went.

For every exposure of a night (the survey description's ``exposure`` fields: ZTF's
``candidate.jd``, ``field``, ``rcid``; Rubin's visit) :func:`night_report` counts the alerts

* **published**: the messages of the survey topics stream2raw read (those its alerts came
  from, those named, else the survey's topic of the night), between each partition's
  first and last offset (those neither in the raw archive nor in the quarantine are fetched
  from Kafka by offset and decoded, to find their exposure);
* **quarantined** by stream2raw (their bytes decoded again for their exposure; one that does
  not decode is counted on an exposure-less row), and **ingested** into the raw archive;
* **rejected** by the quality cuts (evaluated again on the raw alerts) and **kept** in the
  science archive;
* **selected** by each distribution filter (run again on the science rows) and **sent** to
  its topic (read back from Kafka, committed messages only);
* **archived** in the HBase table (its night index).

An exposure is balanced when published = ingested + quarantined, ingested = kept + rejected,
each topic got what its filter selects and HBase holds every kept alert; otherwise its
``where`` says what went missing, and at which step.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from fink.config import ConfigError, FinkConfig, fink_home
from fink.log import logger
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: the most missing offsets fetched from Kafka and decoded (the rest are counted, unattributed)
MAX_FETCH = 20000
STEPS = ("published", "quarantined", "ingested", "rejected", "kept", "archived")


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where a night's alerts are: the archives, the topics and their filters, the HBase table."""

    raw: str
    quarantine: str
    science: str
    filters: dict
    filter_params: dict
    table: str
    cuts: dict
    topics: tuple = ()

    @classmethod
    def of(cls, fink_cfg: FinkConfig, survey: str = "ztf", filters: dict | None = None,
           filter_params: dict | None = None, table: str = "", cuts: dict | None = None,
           topics: tuple = ()) -> Sources:
        """A deployment's: its stages' default paths under ``fink_cfg.data_dir``, the survey's
        filters and table unless given; ``topics``: survey topics stream2raw reads, beside those
        of the night's ingested alerts (when there are none: the survey's topic of the night)."""
        from fink.stages.distribution import DistributionConfig
        from fink.stages.raw2science import Raw2ScienceConfig
        from fink.stages.stream2raw import Stream2RawConfig

        raw = Stream2RawConfig(survey=survey).paths(fink_cfg)
        dist = DistributionConfig(survey=survey, filters=filters or {}, filter_params=filter_params or {})
        sci = Raw2ScienceConfig(survey=survey)
        return cls(raw["raw"], raw["quarantine"], sci.paths(fink_cfg)["science"], dist.topic_filters(),
                   dict(filter_params or {}), table or dist.description().table,
                   cuts if cuts is not None else sci.quality_cuts(), tuple(topics))


def exposure_names(survey: surveys.Survey) -> list[str]:
    """The report's exposure columns: the last part of each exposure field's path."""
    return [p.split(".")[-1] for p in survey.exposure]


def _night_of(survey: surveys.Survey, alert: dict[str, Any]) -> str | None:
    jd = survey.jd(alert)
    return None if jd is None else datetime.fromtimestamp((jd - 2440587.5) * 86400, UTC).strftime("%Y%m%d")


def _decoded(survey: surveys.Survey, values: list[bytes | None], night: str) -> list[tuple | None]:
    """Per message: its exposure if it decodes and belongs to ``night``, () if it does not decode,
    None if it is another night's."""
    from fink.survey.wire import decoder

    decode, out = decoder(survey), []
    for value in values:
        try:
            alert = decode(value).alert
        except Exception:  # noqa: BLE001 - any message that does not decode: an exposure unknown
            out.append(())
            continue
        out.append(tuple(surveys.get_path(alert, p) for p in survey.exposure) if _night_of(survey, alert) == night
                   else None)
    return out


def _alerts(spark: "SparkSession", src: Sources, survey: surveys.Survey, night: str) -> pd.DataFrame:
    """The raw archive's alerts of the night: key, exposure, Kafka coordinates, cut failed."""
    from pyspark.sql import functions as F

    from fink.stages.raw2science import cut_reason, raw_schema

    path = f"{src.raw.rstrip('/')}/night={night}"
    try:
        raw = spark.read.schema(raw_schema(spark, survey.name)).option("basePath", src.raw).parquet(path)
    except Exception as exc:  # noqa: BLE001 - no such night: an empty table
        logger.info("completeness: no raw archive for night %s (%s)", night, str(exc).splitlines()[0])
        return pd.DataFrame(columns=["_key", *exposure_names(survey), "kafka_topic", "kafka_partition",
                                     "kafka_offset", "_cut"])
    cols = [F.col(survey.alert_id).alias("_key"),
            *[F.col(p).alias(n) for p, n in zip(survey.exposure, exposure_names(survey), strict=True)],
            "kafka_topic", "kafka_partition", "kafka_offset", cut_reason(src.cuts).alias("_cut")]
    return raw.select(*cols).toPandas()


def _ingested_offsets(spark: "SparkSession", raw_path: str, topics: list[str]) -> set[tuple[str, int, int]]:
    from pyspark.sql import functions as F

    try:
        raw = spark.read.parquet(raw_path).select("kafka_topic", "kafka_partition", "kafka_offset")
    except Exception:  # noqa: BLE001 - an empty archive
        return set()
    return {tuple(r) for r in raw.where(F.col("kafka_topic").isin(topics)).collect()}


def _quarantine(spark: "SparkSession", path: str, topics: list[str]) -> pd.DataFrame:
    from pyspark.sql import functions as F

    try:
        rows = spark.read.parquet(path).where(F.col("topic").isin(topics))
    except Exception:  # noqa: BLE001 - nothing quarantined yet
        return pd.DataFrame(columns=["topic", "partition", "offset", "reason", "raw"])
    return rows.select("topic", "partition", "offset", "reason", "raw").toPandas()


def _science_keys(spark: "SparkSession", src: Sources, survey: surveys.Survey, night: str) -> set:
    from fink.stages.science_table import key_of

    try:
        rows = spark.read.option("basePath", src.science).parquet(f"{src.science.rstrip('/')}/night={night}")
    except Exception:  # noqa: BLE001 - no science for the night
        return set()
    return {r[0] for r in rows.select(key_of(survey)[0]).collect()}


def _selected(spark: "SparkSession", src: Sources, survey: surveys.Survey, night: str) -> dict[str, set]:
    """Topic -> the keys of the night's science rows its filter selects (run again here)."""
    from pyspark.sql import functions as F

    from fink.filters.filter_api import SELECTED, apply_filters, load_filters
    from fink.stages.science_table import read_science

    filters = load_filters(src.filters, src.filter_params)
    if not filters:
        return {}
    rows = read_science(spark, src.science, src.raw).where(F.col("night") == night)
    picked = apply_filters(rows, filters, fink_names=survey.fink_columns())
    out: dict[str, set] = {f.topic: set() for f in filters}
    for key, chosen in picked.select(F.col(survey.alert_id), SELECTED).collect():
        for k in chosen:
            out[filters[k].topic].add(key)
    return out


def _sent(spark: "SparkSession", bootstrap: str, topic: str, key_path: str) -> pd.Series:
    """The alert keys of every committed message of ``topic`` (one per message, repeats kept)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    from fink.io import kafka

    if topic not in kafka.topics(bootstrap):
        return pd.Series([], dtype=object)
    msgs = (spark.read.format("kafka").options(**kafka.spark_options(bootstrap)).option("subscribe", topic)
            .option("startingOffsets", "earliest").option("endingOffsets", "latest")
            .option("kafka.isolation.level", "read_committed").load())
    keys = [r[0] for r in msgs.select("key").distinct().collect()]
    out = []
    for schema in keys:  # one Avro layout per key (the key is the schema's JSON)
        decoded = msgs.where(F.col("key") == schema).select(from_avro("value", schema.decode()).alias("a"))
        out += [r[0] for r in decoded.select(F.col(f"a.{key_path}")).collect()]
    return pd.Series(out, dtype=object)


def _archived(thrift: str, table: str, survey: surveys.Survey, night: str) -> set:
    from fink.client.explorer import Archive

    try:
        with Archive(thrift, table, survey=survey.name) as archive:
            rows = archive.night(night, columns=[survey.alert_id])
    except Exception as exc:  # noqa: BLE001 - no such table: nothing archived
        logger.info("completeness: HBase table %s not read (%s)", table, str(exc).splitlines()[0])
        return set()
    return set(rows[survey.alert_id]) if len(rows) else set()


def night_report(spark: "SparkSession", night: str, fink_cfg: FinkConfig, survey: str = "ztf",
                 sources: Sources | None = None) -> pd.DataFrame:
    """One row per exposure of ``night`` (and one without exposure for messages that did not
    decode): the counts of :data:`STEPS`, ``selected:<topic>`` and ``sent:<topic>`` per topic,
    ``balanced`` and ``where`` (what does not balance)."""
    from fink.io import kafka

    desc = surveys.load(survey)
    if not desc.exposure:
        raise ConfigError(f"survey {desc.name}: no 'exposure' fields in its description")
    src = sources or Sources.of(fink_cfg, survey)
    names = exposure_names(desc)
    alerts = _alerts(spark, src, desc, night)
    # the topics stream2raw read (those of the night's alerts, and those named), else the survey's
    topics = sorted(set(alerts["kafka_topic"]) | set(src.topics)) or [desc.topic_for(night)]
    quarantined = _quarantine(spark, src.quarantine, topics)
    q_exp = _decoded(desc, list(quarantined["raw"]), night)
    quarantined = quarantined.assign(_exp=q_exp)
    quarantined = quarantined[pd.Series([e is not None for e in q_exp], index=quarantined.index, dtype=bool)]
    # the published offsets that are neither ingested nor quarantined: fetched and decoded
    known = _ingested_offsets(spark, src.raw, topics) | set(zip(quarantined["topic"], quarantined["partition"],
                                                                 quarantined["offset"], strict=True))
    missing, existing = [], kafka.topics(fink_cfg.kafka_bootstrap)
    for topic in topics:
        if topic not in existing:  # deleted since (retention): published = what was ingested or quarantined
            logger.warning("completeness: topic %s is gone: its offsets are not checked", topic)
            continue
        ends = kafka.end_offsets(fink_cfg.kafka_bootstrap, topic)
        starts = kafka.start_offsets(fink_cfg.kafka_bootstrap, [(topic, p) for p in ends])
        missing += [(topic, p, o) for p, end in ends.items() for o in range(starts[(topic, p)], end)
                    if (topic, p, o) not in known]
    fetched = kafka.fetch(fink_cfg.kafka_bootstrap, missing[:MAX_FETCH]) if missing else {}
    lost = [(coords, e) for coords, e in zip(fetched, _decoded(desc, list(fetched.values()), night), strict=True)
            if fetched[coords] is not None and e is not None]  # None: a transaction marker, or another night
    unfetched = len(missing) - min(len(missing), MAX_FETCH)

    kept = _science_keys(spark, src, desc, night)
    selected = _selected(spark, src, desc, night)
    sent = {t: _sent(spark, fink_cfg.kafka_bootstrap, t, desc.alert_id) for t in selected}
    archived = _archived(fink_cfg.hbase_thrift, src.table, desc, night)

    keys = alerts.set_index("_key")
    exposure = {k: tuple(row) for k, row in zip(keys.index, keys[names].itertuples(index=False), strict=True)}
    rows: dict[tuple, dict[str, Any]] = {}

    def add(exp: tuple, column: str, n: int = 1) -> None:
        row = rows.setdefault(exp, {c: 0 for c in STEPS})
        row[column] = row.get(column, 0) + n

    for key, exp in exposure.items():
        add(exp, "published")
        add(exp, "ingested")
        add(exp, "rejected", int(keys.at[key, "_cut"] is not None))
        add(exp, "kept", int(key in kept))
        add(exp, "archived", int(key in archived))
        add(exp, "_kept_rejected", int(key in kept and keys.at[key, "_cut"] is not None))
    for exp in quarantined["_exp"]:
        add(exp, "published")
        add(exp, "quarantined")
    for (topic, part, off), exp in lost:
        add(exp, "published")
        add(exp, "_lost")
        rows[exp].setdefault("_offsets", []).append(f"{topic}:{part}:{off}")
    if unfetched:
        add((), "published", unfetched)
        add((), "_lost", unfetched)
    orphans = len((kept | archived) - set(exposure))  # in an archive, not in the raw archive: no exposure
    if orphans:
        add((), "_orphans", orphans)
    for topic in selected:
        for key in selected[topic]:
            add(exposure.get(key, ()), f"selected:{topic}")
        for key, n in sent[topic][sent[topic].isin(set(exposure))].value_counts().items():
            add(exposure[key], f"sent:{topic}", int(n))
    return _table(rows, names, list(selected))


def _table(rows: dict[tuple, dict[str, Any]], names: list[str], topics: list[str]) -> pd.DataFrame:
    records = []
    for exp, row in rows.items():
        where = []
        if row.get("_lost"):
            where.append(f"{row['_lost']} published, neither ingested nor quarantined"
                         + (f" ({', '.join(row['_offsets'][:5])})" if row.get("_offsets") else ""))
        passed = row["ingested"] - row["rejected"]
        if row["kept"] - row.get("_kept_rejected", 0) < passed:
            where.append(f"{passed - row['kept'] + row.get('_kept_rejected', 0)} passed the cuts, "
                         "not in the science archive")
        if row.get("_kept_rejected"):
            where.append(f"{row['_kept_rejected']} in the science archive that the cuts reject")
        if row["archived"] != row["kept"]:
            gap = row["kept"] - row["archived"]
            where.append(f"{gap} kept, not in HBase" if gap > 0 else f"{-gap} in HBase, not kept")
        for t in topics:
            a, b = row.get(f"selected:{t}", 0), row.get(f"sent:{t}", 0)
            if a != b:
                where.append(f"{t}: {a} selected, {b} sent")
        if row.get("_orphans"):
            where.append(f"{row['_orphans']} archived alerts not in the raw archive")
        if exp == () and row["quarantined"]:
            where.append(f"{row['quarantined']} quarantined messages that do not decode (exposure unknown)")
        record = dict(zip(names, exp, strict=False)) if exp else dict.fromkeys(names)
        record.update({c: row[c] for c in STEPS})
        for t in topics:
            record[f"selected:{t}"], record[f"sent:{t}"] = row.get(f"selected:{t}", 0), row.get(f"sent:{t}", 0)
        record["balanced"] = not [w for w in where if "exposure unknown" not in w]
        record["where"] = "; ".join(where)
        records.append(record)
    out = pd.DataFrame(records, columns=[*names, *STEPS, *[f"{s}:{t}" for t in topics for s in ("selected", "sent")],
                                         "balanced", "where"])
    return out.sort_values(names, na_position="last", kind="stable").reset_index(drop=True)


def save(report: pd.DataFrame, night: str, folder: str | None = None) -> str:
    """Write the report as CSV (``$FINK_HOME/reports/completeness/<night>.csv``); return its path."""
    from pathlib import Path

    out = Path(folder) if folder else fink_home() / "reports" / "completeness"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{night}.csv"
    report.to_csv(path, index=False)
    (out / f"{night}.json").write_text(json.dumps(summary(report), indent=1))
    return str(path)


def summary(report: pd.DataFrame) -> dict[str, Any]:
    """The night's totals per step and topic, the exposures, and those flagged."""
    counts = [c for c in report.columns if c in STEPS or c.startswith(("selected:", "sent:"))]
    return {"exposures": int(report[report.columns[0]].notna().sum()),
            "totals": {c: int(report[c].sum()) for c in counts},
            "flagged": int((~report["balanced"]).sum()), "balanced": bool(report["balanced"].all())}


def add_parser(sub: Any) -> None:
    """The ``report`` command's arguments, under the ``fink`` parser's subcommands ``sub``."""
    r = sub.add_parser("report", help="per-exposure completeness of a night (CSV, and the flagged exposures)")
    r.add_argument("what", choices=["night"])
    r.add_argument("night", help="YYYYMMDD")
    r.add_argument("-c", "--conf", help="parameters file of the deployment (data_dir, services, filters, table)")
    r.add_argument("--data-dir", default=None, help="archive root, over the conf file's")
    r.add_argument("--survey", default=None, help="ztf | rubin | a description file (default: the conf's, or ztf)")
    r.add_argument("--table", default="", help="the HBase table (default: the conf's, or the survey's)")
    r.add_argument("--out", default=None, help="folder of the CSV (default $FINK_HOME/reports/completeness)")
    r.add_argument("--topic", action="append", default=None, help="a survey topic stream2raw read (repeatable; "
                   "default: the conf's topic, or the survey's topic of the night)")
    r.add_argument("--all", action="store_true", help="print every exposure, not only the flagged ones")


def command(args: Any) -> int:
    """Run ``fink report night ...``: 0 when every exposure balances."""
    import yaml

    from fink.config import ServicesConfig
    from fink.runtime.session import get_spark

    conf: dict[str, Any] = {}
    if args.conf:
        with open(args.conf) as fh:
            conf = yaml.safe_load(fh) or {}
    services = ServicesConfig.load()
    fink = FinkConfig.from_mapping({
        "kafka_bootstrap": conf.get("kafka_bootstrap", services.kafka_bootstrap),
        "hbase_thrift": conf.get("hbase_thrift", services.hbase_thrift),
        "data_dir": args.data_dir if args.data_dir is not None else conf.get("data_dir", ""),
        "log_level": "ERROR"}, "fink report")
    survey = args.survey or conf.get("survey", "ztf")
    dist, arch = conf.get("distribution") or {}, conf.get("archive") or {}
    sources = Sources.of(fink, survey, filters=conf.get("filters") or dist.get("filters"),
                         filter_params=conf.get("filter_params") or dist.get("filter_params"),
                         table=args.table or conf.get("table") or arch.get("table", ""),
                         topics=tuple(args.topic or ([conf["topic"]] if conf.get("topic") else [])))
    spark = get_spark(fink, app_name="fink-report")
    try:
        report = night_report(spark, args.night, fink, survey, sources)
    finally:
        spark.stop()
    path = save(report, args.night, args.out)
    facts = summary(report)
    shown = report if args.all else report[~report["balanced"]]
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_colwidth", 80):
        if len(shown):
            print(shown.to_string(index=False))
    totals = ", ".join(f"{k} {v}" for k, v in facts["totals"].items())
    print(f"night {args.night}: {facts['exposures']} exposures, {facts['flagged']} flagged; {totals}\nCSV: {path}")
    return 0 if facts["balanced"] else 1


def figure(report: pd.DataFrame, night: str = ""):
    """The night's counts, cumulated over its exposures in time order (published, ingested, kept,
    archived, sent per topic), the flagged exposures marked in red with what went missing."""
    import matplotlib.pyplot as plt

    rows = report[report[report.columns[0]].notna()].reset_index(drop=True)
    fig, (ax, ax_gap) = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True, height_ratios=[3, 1],
                                     constrained_layout=True)
    x = range(1, len(rows) + 1)
    for column in ["published", "ingested", "kept", "archived",
                   *[c for c in rows.columns if c.startswith("sent:")]]:
        ax.step(x, rows[column].cumsum(), where="post", label=column)
    gap = rows["published"] - rows["ingested"] - rows["quarantined"] + (rows["ingested"] - rows["rejected"]
                                                                      - rows["kept"]).abs() \
        + (rows["kept"] - rows["archived"]).abs()
    for t in [c[len("sent:"):] for c in rows.columns if c.startswith("sent:")]:
        gap = gap + (rows[f"selected:{t}"] - rows[f"sent:{t}"]).abs()
    flagged = rows.index[~rows["balanced"]]
    for k in flagged:
        ax.axvline(k + 1, color="red", alpha=0.35, lw=1)
    ax_gap.bar(x, gap, color=["red" if not b else "0.7" for b in rows["balanced"]])
    ax.set_ylabel("alerts, cumulated")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    ax_gap.set_ylabel("unaccounted")
    ax_gap.set_xlabel(f"exposure, in time order ({', '.join(exposure_names_of(report))})")
    facts = summary(report)
    ax.set_title(f"Completeness of night {night}: {facts['exposures']} exposures, {facts['flagged']} flagged")
    ax_gap.set_ylim(0, max(1, int(gap.max()) if len(gap) else 1) * 1.15)
    ax_gap.yaxis.get_major_locator().set_params(integer=True)
    for j, k in enumerate(list(flagged)[:4]):  # what went missing, for the first few
        ax.text(0.99, 0.05 + 0.06 * j, f"#{k + 1}: {str(rows.at[k, 'where'])[:80]}", transform=ax.transAxes,
                ha="right", fontsize=7, color="darkred")
    return fig


def exposure_names_of(report: pd.DataFrame) -> list[str]:
    """The exposure columns of a report (those before the first step's)."""
    return list(report.columns[:list(report.columns).index(STEPS[0])])
