"""archive: the science alerts into HBase as they are processed, with index tables for queries.

Notes
-----
One streaming query reads the science archive as a file stream (as distribution does),
runs the tag filters (the classes of the class index) in one Arrow UDF, and writes each
micro-batch through the HBase Thrift gateway with ``happybase``: the main table first,
then the class, pixel and night indexes (layout in :mod:`fink.io.hbase`).

A batch is done only when HBase has accepted all of its rows: the ``foreachBatch``
function returns after the last write, so Spark commits the batch only then. While the
gateway or HBase is down the writes are retried with backoff, which holds the query (the
science archive waits in its files: backpressure), and the query fails with a clear error
after ``retry_for_s`` seconds. Row keys depend only on the alert, so a batch replayed
after a crash writes the same cells: nothing doubled, nothing lost.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated
from fink.filters.filter_api import AlertFilter, FilterError, load_filters
from fink.io.hbase import DEFAULT_ORDER, INDEXES, ArchiveError, Keys, Layout, Writer, connect, ensure_tables
from fink.log import logger
from fink.runtime import metrics
from fink.runtime.streaming import observed
from fink.science.science_api import ScienceModuleError, add_metrics, check_inputs
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
    from pyspark.sql.types import StructType

    from fink.stages.step import Step

QUERY_NAME = "archive"

@dataclasses.dataclass(frozen=True)
class ArchiveConfig(surveys.OfSurvey, Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    table
        The main HBase table; the indexes are ``<table>_class``, ``_pixel`` and ``_night``.
        Empty: the survey's (``ztf_alerts``, ``rubin_alerts``).
    tags
        Tag (class) -> filter by dotted path: an alert the filter selects is in the class
        index under that tag. Empty: the survey description's tags.
    tag_params
        Tag -> keyword parameters of its filter.
    healpix_order
        Order of the HEALPix pixel index (7: 27 arcmin pixels).
    modules
        Science modules (dotted paths) whose outputs are stored together, one Avro cell per
        module (``d:lightcurve_features``); other added values get one cell each. HBase's
        cost grows with the cells written: the 56 light-curve features as one cell double
        the rate the local HBase takes.
    pool_size, batch_size
        Thrift connections writing in parallel, and rows per Thrift call.
    retry_for_s
        How long a batch waits for an unavailable HBase before the query fails.
    max_files_per_trigger
        Science archive files read per micro-batch at most (0: all new files).
    science_path, checkpoint
        Empty means under ``data_dir`` (and the survey's folder): ``science``, ``checkpoints/archive``.
    survey
        A shipped survey (``ztf``, ``rubin``) or a description file: the science layout, the
        row keys, the default table, tags and modules (``builtin``).
    """

    table: str = ""
    tags: dict = dataclasses.field(default_factory=dict)
    tag_params: dict = dataclasses.field(default_factory=dict)
    healpix_order: int = DEFAULT_ORDER
    modules: list = dataclasses.field(default_factory=lambda: ["builtin"])
    pool_size: int = 4
    batch_size: int = 200
    retry_for_s: float = 600.0
    max_files_per_trigger: int = 8
    science_path: str = ""
    checkpoint: str = ""
    survey: str = "ztf"

    def validate(self, source: str = "configuration") -> None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.table_name() or ""):
            raise ConfigError(f"{source}: 'table' must be an HBase table name (letters, digits, _ . -), "
                              f"got {self.table_name()!r}")
        for tag in self.class_tags():
            if not re.fullmatch(r"[A-Za-z0-9.-][A-Za-z0-9_.-]*", str(tag)):
                raise ConfigError(f"{source}: tag {tag!r} must be letters, digits, _ . - (not starting with _)")
        if not 0 <= self.healpix_order <= 29:
            raise ConfigError(f"{source}: healpix_order must be within 0..29")
        if self.pool_size < 1 or self.batch_size < 1 or self.retry_for_s <= 0 or self.max_files_per_trigger < 0:
            raise ConfigError(f"{source}: pool_size >= 1, batch_size >= 1, retry_for_s > 0 and "
                              f"max_files_per_trigger >= 0")


    def table_name(self) -> str:
        return self.table or self.description().table

    def class_tags(self) -> dict[str, str]:
        """Tag -> filter: the configured ones, or the survey's."""
        return dict(self.tags or self.description().tags)

    def keys(self) -> Keys:
        """The fields (or expressions) keying and placing the rows: the survey's."""
        return Keys(**self.description().keys)

    def paths(self, fink: FinkConfig) -> dict[str, str]:
        survey = self.description()
        return {"science": self.science_path or survey.data_uri(fink, "science"),
                "checkpoint": self.checkpoint or survey.data_uri(fink, "checkpoints", "archive"),
                "quarantine": survey.data_uri(fink, "quarantine_archive")}

    def groups(self, added: list[str]) -> dict[str, list[str]]:
        """Cell groups: per module of ``modules`` with two or more outputs among ``added``."""
        from fink.science.science_api import load_modules

        out = {}
        for m in load_modules(self.description().module_paths(self.modules)):
            members = [c for c in m.outputs if c in added]
            if len(members) > 1:
                out[m.key] = members
        return out

    def load_tags(self) -> list[AlertFilter]:
        return load_filters(self.class_tags(), self.tag_params)


def thrift_address(fink: FinkConfig) -> tuple[str, int]:
    host, _, port = fink.hbase_thrift.rpartition(":")
    return host, int(port)


def layout(spark: "SparkSession", cfg: ArchiveConfig, science_path: str, producer: Any = None,
           from_files: bool = True) -> Layout:
    """The table layout for the science alerts: their Arrow schema as batches deliver it,
    the columns modules added (family ``d``: not in the raw archive) and the cutouts."""
    from fink.stages import distribution as dist
    from fink.stages import raw2science as r2s

    schema = dist.science_schema(spark, science_path, producer, cfg.survey, from_files)
    alert = spark.createDataFrame([], schema).drop("night")
    raw = set(r2s.raw_schema(spark, cfg.survey).fieldNames())
    added = [c for c in alert.columns if c not in raw]
    cutouts = [c for c in cfg.description().cutouts if c in alert.columns]
    return Layout(cfg.table_name(), alert.toArrow().schema, added=added, cutouts=cutouts,
                  keys=cfg.keys(), order=cfg.healpix_order, groups=cfg.groups(added))


def inputs_of(tags: list[AlertFilter]) -> list[str]:
    """The columns the tag filters read, in order, each once."""
    out: list[str] = []
    for f in tags:
        out += [c for c in f.module.inputs if c not in out]
    return out


def run_tags(table, tags: list[AlertFilter], columns: dict[str, str]) -> tuple[list[list[str]], dict[str, Any]]:
    """Run the tag filters on an Arrow batch (in the writer task, on columns it already has):
    per alert the tags that selected it, and the metrics of each filter (``<tag>_seconds``,
    ``<tag>_errors``, ``<tag>_error``, as :func:`fink.science.science_api.add_metrics` sums them).

    ``columns`` maps each input path to the batch column holding it. A filter that raises
    tags nothing in the batch (its error is counted); a null answer does not select.
    """
    from fink.science.science_api import run_chain

    n = table.num_rows
    if not tags or not n:
        return [[] for _ in range(n)], {}
    series = {path: table.column(name).to_pandas() for path, name in columns.items()}
    out = run_chain([f.module for f in tags], series)
    metrics: dict[str, Any] = {}
    selected = [[] for _ in range(n)]
    for k, f in enumerate(tags):
        flags = out[f"_sel{k}"].fillna(False).astype(bool).tolist()
        for i in (i for i, hit in enumerate(flags) if hit):
            selected[i].append(f.topic)
        error = out[f"_error_{k}"].iloc[0]
        metrics |= {f"{f.module.key}_seconds": float(out[f"_seconds_{k}"].sum()),
                    f"{f.module.key}_errors": n if error is not None else 0, f"{f.module.key}_error": error}
    return selected, metrics


def extra_columns(layout: Layout, tag_inputs: list[str] = ()) -> dict[str, str]:
    """Columns the writers need besides the encoded alert, by Spark-safe name: the key fields
    inside structs (``{"_key_candidate_jd": "candidate.jd"}``: Spark reads a dot in a name as
    a struct field) and the tag filters' inputs that the batch does not hold as they are."""
    import dataclasses
    import re

    def alias(prefix: str, path: str) -> str:
        return prefix + re.sub(r"\W+", "_", path).strip("_")

    # a key may be a field inside a struct, or a Spark SQL expression (Rubin's object id)
    out = {alias("_key_", path): path for path in dataclasses.astuple(layout.keys) if not path.isidentifier()}
    plain = {c.name for c in layout.columns if c.kind != "avro" and "." not in c.name}
    out |= {alias("_in_", path): path for path in tag_inputs if path not in plain}
    return out


def cells(df: "DataFrame", layout: Layout, extra: dict[str, str], columns: list[str] | None = None) -> "DataFrame":
    """The batch as the writers take it: every nested column (structs, history arrays, maps)
    already its Avro cell, encoded by Spark in the JVM (far faster than Python), and the key
    fields that sit inside structs (``candidate.jd``, ``candidate.ra``...) and the tag
    filters' inputs as top-level columns (``extra``, from :func:`extra_columns`)."""
    import json

    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    nested = {}
    for col in layout.columns:
        if col.kind == "avro":
            if "." in col.name:
                raise ArchiveError(f"{col.name}: a nested value inside a struct is only archived inside its struct")
            members = layout.groups.get(col.name)
            value = F.struct(*[F.col(m) for m in members]) if members else F.col(col.name)
            nested[col.name] = to_avro(F.struct(value.alias(col.name)), json.dumps(layout.avro[col.name]))
    names = columns if columns is not None else df.columns  # known: no schema asked of the JVM
    return df.select(*[nested.get(c, F.col(c)).alias(c) for c in names if c not in layout.member_of],
                     *[nested[g].alias(g) for g in layout.groups],
                     *[F.expr(path).alias(alias) for alias, path in extra.items()])


#: what each writer task reports (``tags``: JSON of the tag counts and filter metrics)
REPORT = ("alerts long, archived long, class long, pixel long, night long, retries long, encode_s double, "
          "write_s double, tags string, quarantined long, quarantine string")


def writer_task(layout: Layout, tags: list[AlertFilter], host: str, port: int, cfg: ArchiveConfig,
                extra: dict[str, str]):
    """The function each Spark task runs on its Arrow batches (``mapInArrow``): run the tag
    filters, encode the rows and write them, main table first, through its own Thrift
    connections; report counts and the filters' metrics."""
    keys_of = {alias: path for alias, path in extra.items() if alias.startswith("_key_")}
    inputs = {path: next((a for a, p in extra.items() if p == path and a.startswith("_in_")), path)
              for path in inputs_of(tags)}

    def write(batches):
        import json

        import pyarrow as pa

        from fink.io.hbase import Writer
        from fink.science.science_api import add_metrics

        writer = Writer(host, port, pool_size=cfg.pool_size, batch_size=cfg.batch_size, retry_for=cfg.retry_for_s)
        report = dict.fromkeys(("alerts", "archived", *INDEXES, "retries"), 0) | {"encode_s": 0.0, "write_s": 0.0}
        counts, metrics = dict.fromkeys((f.topic for f in tags), 0), {}
        aside: list[dict[str, Any]] = []
        try:
            for rb in batches:
                if not rb.num_rows:
                    continue
                t0 = time.perf_counter()
                table = pa.Table.from_batches([rb])
                tagged, batch_metrics = run_tags(table, tags, inputs)
                add_metrics(metrics, batch_metrics)
                for names in tagged:
                    for name in names:
                        counts[name] += 1
                table = table.rename_columns([keys_of.get(n, n) for n in table.column_names])
                reasons = layout.unkeyable(table)
                if any(reasons):  # set aside, with their reason: the others go on
                    ok = [r is None for r in reasons]
                    ids = [layout.values(table, p).to_pylist() for p in (layout.keys.alert_id, layout.keys.object_id)]
                    aside += [{"alert_id": a, "object_id": o, "reason": r}
                              for a, o, r in zip(*ids, reasons, strict=True) if r is not None]
                    report["alerts"] += len(reasons) - sum(ok)
                    table = table.filter(pa.array(ok))
                    tagged = [t for t, keep in zip(tagged, ok, strict=True) if keep]
                    if not table.num_rows:
                        continue
                keys = layout.row_keys(table)
                main = layout.encode(table.drop_columns(["night"]), keys)
                index = layout.index_rows(table, keys, tagged, table.column("night").to_pylist())
                t1 = time.perf_counter()
                report["archived"] += writer.write({layout.table: main})[layout.table]
                written = writer.write({layout.index_table(i): index[i] for i in INDEXES})
                for i in INDEXES:
                    report[i] += written[layout.index_table(i)]
                report["alerts"] += table.num_rows
                report["encode_s"] += t1 - t0
                report["write_s"] += time.perf_counter() - t1
        finally:
            writer.close()
        report["retries"] = writer.retries
        report["tags"] = json.dumps({"counts": counts, "filters": metrics})
        report["quarantined"], report["quarantine"] = len(aside), json.dumps(aside, default=str)
        yield pa.RecordBatch.from_pylist([report])

    return write


class Sink:
    """The ``foreachBatch`` function: the Spark tasks write the batch's rows to HBase (the main
    table, then the indexes), each with its own connections; the batch ends when all have.

    ``written`` keeps, per batch id, the alerts read, the rows HBase accepted per table, the
    write retries and the times (``encode_s``, ``write_s``: summed over the tasks).
    """

    def __init__(self, layout: Layout, tags: list[AlertFilter], host: str, port: int, cfg: ArchiveConfig,
                 columns: list[str] | None = None, quarantine: str = ""):
        self.layout, self.columns = layout, columns  # the batches' columns, when known
        self.quarantine = quarantine  # where the alerts that cannot be keyed are listed, per batch
        self.extra = extra_columns(layout, inputs_of(tags))
        self.task = writer_task(layout, tags, host, port, cfg, self.extra)
        self.written: dict[int, dict[str, Any]] = {}

    def __call__(self, batch: "DataFrame", batch_id: int) -> None:
        import json

        t0 = time.perf_counter()
        reports = cells(batch, self.layout, self.extra, self.columns).mapInArrow(self.task, REPORT).collect()
        total = {key: sum(r[key] for r in reports) for key in REPORT_KEYS if key not in ("tags", "quarantine")}
        aside = [a for r in reports for a in json.loads(r["quarantine"])]
        if aside:
            self._set_aside(batch.sparkSession, batch_id, aside)
        tags: dict[str, int] = {}
        filters: dict[str, dict[str, Any]] = {}
        for r in reports:
            found = json.loads(r["tags"])
            for name, n in found["counts"].items():
                tags[name] = tags.get(name, 0) + n
            for name, m in found["filters"].items():
                add_metrics(filters, {f"{name}_{k}": v for k, v in m.items()})
        self.written[batch_id] = {
            "alerts": total["alerts"], "archived": total["archived"], "retries": total["retries"],
            "quarantined": total["quarantined"],
            "rows": {self.layout.table: total["archived"], **{self.layout.index_table(i): total[i] for i in INDEXES}},
            "tags": tags, "filters": filters,
            "encode_s": round(total["encode_s"], 3), "write_s": round(total["write_s"], 3),
            "seconds": round(time.perf_counter() - t0, 3)}
        metrics.note(QUERY_NAME, batch_id, self.written[batch_id])


    def _set_aside(self, spark: "SparkSession", batch_id: int, aside: list[dict[str, Any]]) -> None:
        """List the batch's alerts that cannot be keyed, with their reason (again, the same, on a
        replay); the alerts themselves stay in the raw and science archives."""
        import json

        from fink.io.filestore import FileStore

        logger.warning("archive: batch %d: %d alert(s) cannot be keyed, listed in %s (first: %s)", batch_id,
                       len(aside), self.quarantine, aside[0])
        if self.quarantine:
            store = FileStore(spark, self.quarantine)
            store.fs.mkdirs(store.path())
            record = {"table": self.layout.table, "batch": batch_id, "alerts": aside}
            store.replace_text(json.dumps(record, default=str), f"{self.layout.table}-{batch_id:010d}.json")


REPORT_KEYS = [part.split()[0] for part in REPORT.split(", ")]


def prepare(spark: "SparkSession", cfg: ArchiveConfig, fink: FinkConfig, science_path: str, schema: "StructType",
            producer: Any = None, from_files: bool = True) -> Sink:
    """The sink of the stage, its tables created (or their recorded layout checked) and its tag
    filters' inputs checked against ``schema`` (the science alerts'); an unreachable gateway is
    retried for ``retry_for_s`` like a write."""
    tags = cfg.load_tags()
    host, port = thrift_address(fink)
    lay = layout(spark, cfg, science_path, producer, from_files)
    probe = Writer(host, port, pool_size=1, retry_for=cfg.retry_for_s)

    def create() -> Layout:
        conn = connect(host, port)
        try:
            return ensure_tables(conn, lay, opener=lambda: connect(host, port))
        finally:
            conn.close()

    lay = probe.retried(f"creating the archive tables {cfg.table_name()}", create)
    probe.close()
    try:
        check_inputs([f.module for f in tags], schema)
    except ScienceModuleError as exc:  # a tag filter's input that is not a column of the alerts
        raise FilterError(str(exc).replace("science module", "tag filter", 1)) from exc
    return Sink(lay, tags, host, port, cfg, schema.fieldNames(), cfg.paths(fink)["quarantine"])


def step(spark: "SparkSession", cfg: ArchiveConfig, fink: FinkConfig, *, producer: Any = None,
         from_files: bool = False, **context: Any) -> "Step":
    """The stage as a step: the batch's science alerts in (in a pipeline: cached by
    raw2science; alone: the science archive's new rows joined to their alerts), into HBase;
    the batch's step ends when HBase has accepted every row. ``from_files``: the science
    rows' layout from the archive's records (alone), not from ``producer``."""
    from pyspark.sql import functions as F

    from fink.stages import distribution as dist
    from fink.stages.step import Output, Step, latency_quantiles, report

    paths = cfg.paths(fink)
    schema = dist.science_schema(spark, paths["science"], producer, cfg.survey, from_files=from_files)
    sink = prepare(spark, cfg, fink, paths["science"], schema, producer, from_files=from_files)

    def run(science: "DataFrame", batch_id: int, rows: int | None) -> Output:
        def finish() -> dict[str, Any]:  # after the alerts are on their way to the users
            started = time.time()
            # Spark's count, against the rows HBase accepted; the latency: Kafka -> this write
            seen = science.agg(F.count(F.lit(1)).alias("n"),
                               latency_quantiles(F.col("kafka_timestamp"), F.current_timestamp()).alias("lat")).first()
            sink(science, batch_id)
            return report(QUERY_NAME, batch_id, seen["n"], {"alerts": seen["n"]}, list(seen["lat"] or []) or None,
                          started)

        return Output(None, 0, None, finish=finish)

    files = dist.DistributionConfig(max_files_per_trigger=cfg.max_files_per_trigger, survey=cfg.survey)
    survey = producer.survey if producer is not None else cfg.survey
    return Step(QUERY_NAME, reads="science", writes=None, run=run, sink=sink,
                source=lambda: dist.source(spark, files, paths["science"], producer), source_table=paths["science"],
                expand=dist.expander(spark, paths["science"], survey, fink, schema))


def build(spark: "SparkSession", cfg: ArchiveConfig, fink: FinkConfig, producer: Any = None) -> "DataStreamWriter":
    """The stage's unstarted writer: science archive -> tags -> HBase (main table and indexes).

    The stage's own query runs its step (:func:`step`) on each batch of the science
    archive's new files, joined to their raw alerts. The tables are created (or their
    recorded layout checked) here, before anything starts; an unreachable gateway is retried
    for ``retry_for_s`` like a write. ``producer``: the raw2science configuration that writes
    the science archive (see ``distribution.stored_schema``).
    """
    from fink.stages.step import standalone

    paths = cfg.paths(fink)
    return standalone(step(spark, cfg, fink, producer=producer, from_files=True), paths["checkpoint"])


def reconcile(progress: list[dict], written: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Account for a run: alerts read (observed) against main-table rows HBase accepted.

    ``balanced`` when every batch that read alerts wrote exactly one main row per alert, but
    for the alerts it set aside (``quarantined``: they cannot be keyed).
    """
    totals: dict[str, Any] = {"batches": 0, "alerts": 0, "archived": 0, "quarantined": 0, "tags": {}, "rows": {},
                              "retries": 0, "filters": {}, "write_seconds": 0.0}
    balanced = True
    for p in progress:
        values = observed(p, QUERY_NAME)
        if not values or not values.get("alerts"):
            continue
        batch = int(p["batchId"])
        record = written.get(batch) or {}
        totals["batches"] += 1
        totals["alerts"] += int(values["alerts"])
        totals["archived"] += record.get("archived", 0)
        totals["quarantined"] += record.get("quarantined", 0)
        balanced &= record.get("archived", 0) + record.get("quarantined", 0) == int(values["alerts"])
        for table, n in record.get("rows", {}).items():
            totals["rows"][table] = totals["rows"].get(table, 0) + n
        for name, n in record.get("tags", {}).items():
            totals["tags"][name] = totals["tags"].get(name, 0) + n
        totals["retries"] += record.get("retries", 0)
        totals["write_seconds"] += record.get("seconds", 0.0)
        for name, m in record.get("filters", {}).items():
            add_metrics(totals["filters"], {f"{name}_{k}": v for k, v in m.items()})
    totals["balanced"] = balanced and totals["alerts"] == totals["archived"] + totals["quarantined"]
    totals["write_seconds"] = round(totals["write_seconds"], 2)
    return totals
