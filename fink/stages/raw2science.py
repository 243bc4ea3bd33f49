"""raw2science: quality cuts and science modules, from the raw archive to the science archive.

Notes
-----
The source is the raw archive as a Parquet file stream, not the survey's Kafka topics:
stream2raw already paid for decoding (most of its cost), set bad messages aside and removed
duplicates, and it moves each batch's files into the archive whole, so a file stream sees
only complete alerts, each once. Reading Kafka again would decode every alert twice for a
latency gain smaller than one stream2raw trigger.

Quality cuts are configuration: named SQL conditions over alert columns (by default the
survey description's: for ZTF Fink's ``nbad == 0``, ``rb >= 0.55``, ``fid != 3``). An
alert failing one is rejected with the first failing cut's name as reason (a null value
fails), and counted per reason in the query's observed metrics; the raw archive keeps it.
Kept alerts go through the science modules (:mod:`fink.science`) and land in the science
archive, exactly once, with their provenance: module versions, and the times of ingest,
processing start and end. The science archive holds what the stage adds, keyed by the
alert's id; the alert itself stays in the raw archive, and :func:`read_science` joins them
(:mod:`fink.stages.science_table`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated
from fink.runtime import metrics
from fink.runtime.streaming import observed
from fink.science.science_api import (
    ModuleColumns,
    ScienceModule,
    add_metrics,
    apply_modules,
    check_inputs,
    load_modules,
    provenance,
)
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
    from pyspark.sql.types import StructType

    from fink.stages.step import Step

QUERY_NAME = "raw2science"
MODULES_METRICS = "raw2science_modules"

@dataclasses.dataclass(frozen=True)
class Raw2ScienceConfig(surveys.OfSurvey, Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    cuts
        Name -> Spark SQL condition an alert must satisfy; the name is the rejection reason.
        Empty: the survey description's cuts (``{"keep_all": "true"}`` for no cut at all).
    modules
        Science modules by dotted path, applied in order; the entry ``builtin`` stands for
        the survey description's built-in modules.
    module_params
        Dotted path (or function name) -> keyword parameters of that module (e.g. the
        cross-match catalogue).
    fail_on_module_error
        Stop the query when a module raises, instead of nulls plus an error count.
    max_files_per_trigger
        Raw archive files read per micro-batch at most (0: all new files).
    files_per_batch
        Parquet files written per night and micro-batch.
    raw_path, science_path, checkpoint
        Empty means under ``data_dir`` (and the survey's folder): ``raw``, ``science``,
        ``checkpoints/raw2science``.
    survey
        A shipped survey (``ztf``, ``rubin``) or a description file: the raw archive's
        layout, the default cuts and the built-in modules.
    """

    cuts: dict = dataclasses.field(default_factory=dict)
    modules: list = dataclasses.field(default_factory=list)
    module_params: dict = dataclasses.field(default_factory=dict)
    fail_on_module_error: bool = False
    max_files_per_trigger: int = 0
    files_per_batch: int = 2
    raw_path: str = ""
    science_path: str = ""
    checkpoint: str = ""
    survey: str = "ztf"

    def validate(self, source: str = "configuration") -> None:
        self.description()  # an unknown survey fails here, by name
        for name, cond in self.cuts.items():
            if not isinstance(name, str) or not name.isidentifier() or not isinstance(cond, str) or not cond.strip():
                raise ConfigError(f"{source}: cut {name!r} must be a name mapped to a SQL condition")
        if not all(isinstance(m, str) for m in self.modules):
            raise ConfigError(f"{source}: 'modules' must be a list of dotted paths")
        if self.max_files_per_trigger < 0 or self.files_per_batch < 1:
            raise ConfigError(f"{source}: max_files_per_trigger >= 0 and files_per_batch >= 1")


    def quality_cuts(self) -> dict[str, str]:
        """The cuts applied: the configured ones, or the survey's."""
        return dict(self.cuts or self.description().cuts)

    def module_paths(self) -> list[str]:
        """The modules' dotted paths, ``builtin`` expanded to the survey's built-in modules."""
        return self.description().module_paths(self.modules)

    def paths(self, fink_cfg: FinkConfig) -> dict[str, str]:
        survey = self.description()
        return {"raw": self.raw_path or survey.data_uri(fink_cfg, "raw"),
                "science": self.science_path or survey.data_uri(fink_cfg, "science"),
                "checkpoint": self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "raw2science")}

    def load_modules(self) -> list[ScienceModule]:
        return load_modules(self.module_paths(), self.module_params)


def raw_schema(spark: "SparkSession", survey: str = "ztf") -> "StructType":
    """The raw archive's schema (what stream2raw writes for ``survey``), without reading the archive."""
    from fink.stages import stream2raw as s2r

    return s2r.raw_schema(spark, s2r.Stream2RawConfig(topic="-", survey=survey))


def source(spark: "SparkSession", stage_cfg: Raw2ScienceConfig, raw_path: str) -> "DataFrame":
    """The raw archive as a stream of new files (partition folders ``night=`` included).

    The folder is created if stream2raw has not written yet, so the stages start in any order.
    """
    from fink.io.filestore import FileStore

    store = FileStore(spark, raw_path)
    store.fs.mkdirs(store.path())
    reader = spark.readStream.schema(raw_schema(spark, stage_cfg.survey)).option("basePath", raw_path)
    if stage_cfg.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", stage_cfg.max_files_per_trigger)
    return reader.parquet(raw_path)


def cut_reason(cuts: dict[str, str]) -> "Column":
    """The name of the first cut an alert fails (null or false fails), null when it passes all."""
    from pyspark.sql import functions as F

    reason = None
    for name, cond in cuts.items():
        failed = ~F.coalesce(F.expr(cond).cast("boolean"), F.lit(False))
        reason = F.when(failed, F.lit(name)) if reason is None else reason.when(failed, F.lit(name))
    return reason if reason is not None else F.lit(None).cast("string")


def apply_cuts(df: "DataFrame", cuts: dict[str, str], observe_as: str | None = None) -> "DataFrame":
    """Keep the alerts passing every cut; with ``observe_as``, count alerts, kept and rejected per cut."""
    from pyspark.sql import functions as F

    try:
        df = df.withColumn("_cut", cut_reason(cuts))
    except Exception as exc:  # an unparsable or unknown-column condition: name the cut
        raise ConfigError(f"quality cuts {cuts}: {str(exc).splitlines()[0]}") from exc
    if observe_as:
        cut = F.col("_cut")
        df = df.observe(observe_as, F.count(F.lit(1)).alias("alerts"),
                        F.sum(F.when(cut.isNull(), 1).otherwise(0)).alias("kept"),
                        F.sum(F.when(cut.isNotNull(), 1).otherwise(0)).alias("rejected"),
                        *[F.sum(F.when(cut == name, 1).otherwise(0)).alias(f"rejected_{name}") for name in cuts])
    return df.filter(F.col("_cut").isNull()).drop("_cut")


def transform(df: "DataFrame", stage_cfg: Raw2ScienceConfig, modules: list[ScienceModule] | None = None) -> "DataFrame":
    """Raw alerts -> kept alerts with every module's columns and the provenance columns."""

    modules = stage_cfg.load_modules() if modules is None else modules
    df = apply_cuts(df, stage_cfg.quality_cuts(), observe_as=QUERY_NAME)
    df = add_science(df, stage_cfg, modules, observe_as=MODULES_METRICS)
    return metrics.observe_latency(df, until="processingEnd")  # Kafka timestamp -> end of the modules


def add_science(df: "DataFrame", stage_cfg: Raw2ScienceConfig, modules: list[ScienceModule],
                observe_as: str | None = None, metrics_column: str | None = None) -> "DataFrame":
    """Kept alerts -> the same with the modules' columns and the provenance columns (the
    modules' metrics observed as ``observe_as``, or kept in ``metrics_column``)."""
    from pyspark.sql import functions as F

    df = df.withColumn("processingStart", metrics.now())
    # processingEnd is stamped by the modules' own UDF: a second Python UDF would hold every
    # row (cutouts included) in the JVM once more while it runs
    df = apply_modules(df, modules, fail=stage_cfg.fail_on_module_error, observe_as=observe_as,
                       stamp="processingEnd", metrics_column=metrics_column)
    versions = [F.lit(x) for name, version in provenance(modules).items() for x in (name, version)]
    fink_modules = F.create_map(*versions) if versions else F.create_map().cast("map<string,string>")
    tail = ["processingEnd"] + ([metrics_column] if metrics_column else [])
    return df.select(*[c for c in df.columns if c not in tail], fink_modules.alias("fink_modules"), *tail)


def write_batch(batch: "DataFrame", batch_id: int, stage_cfg: Raw2ScienceConfig, paths: dict[str, str],
                writer: str = "") -> dict[str, Any]:
    """Write one micro-batch of science alerts by night, exactly once; return its commit record.

    ``batch`` holds the archive's columns (:func:`science_table.slim_columns`: the key and what
    the stage added); ``writer`` is the query's id (:func:`fink.io.filestore.batch_key`)."""
    from fink.io import filestore
    from fink.stages.raw_archive import ARCHIVE_OPTIONS

    spark = batch.sparkSession
    name = filestore.batch_key(writer, batch_id)
    done = filestore.begin(spark, paths["science"], name)
    if done is not None:
        return done
    t0 = time.perf_counter()
    folders = filestore.stage(batch, paths["science"], name, "night", stage_cfg.files_per_batch, ARCHIVE_OPTIONS)
    base = f"{paths['science'].rstrip('/')}/{filestore.staging_folder(name)}"
    files = [f"{base}/{rel}" for rels in folders.values() for rel in rels]
    written = filestore.row_count(spark, files)
    filestore.publish(spark, paths["science"], name, folders)
    record = {"alerts": written, "seconds": round(time.perf_counter() - t0, 3)}
    metrics.note(QUERY_NAME, batch_id, record)  # before the commit, as stream2raw's (raw_archive.commit_batch)
    filestore.commit(spark, paths["science"], name, record)
    return record


def science_layout(spark: "SparkSession", stage_cfg: Raw2ScienceConfig, modules: list[ScienceModule]) -> "StructType":
    """The schema of the science rows the stage hands on (every raw column, the added ones,
    ``night`` last), computed once (no batch asks the JVM for it)."""
    from pyspark.sql.types import StructType

    settings = dataclasses.replace(stage_cfg, raw_path="", science_path="", checkpoint="")
    key = (spark.sparkContext.applicationId, repr(settings),
           tuple((m.name, m.version, tuple(m.outputs.items())) for m in modules))
    if key not in _LAYOUTS:
        empty = spark.createDataFrame([], raw_schema(spark, stage_cfg.survey))
        made = add_science(apply_cuts(empty, stage_cfg.quality_cuts()), stage_cfg, modules).schema
        _LAYOUTS[key] = StructType([f for f in made.fields if f.name != "night"] + [made["night"]])
    return _LAYOUTS[key]


#: science layouts already worked out, per session and configuration (see :func:`science_layout`)
_LAYOUTS: dict[tuple, "StructType"] = {}


def table_columns(spark: "SparkSession", stage_cfg: Raw2ScienceConfig, paths: dict[str, str],
                  modules: list[ScienceModule]) -> tuple[list["Column"], "StructType"]:
    """The science archive's columns of a science row (its key and what the stage adds) and
    their schema; the archive's layout is recorded at its root (:mod:`fink.stages.science_table`)."""
    from fink.stages import science_table

    full, raw = science_layout(spark, stage_cfg, modules), raw_schema(spark, stage_cfg.survey)
    slim = science_table.slim_schema(spark, stage_cfg.description(), full, raw)
    science_table.write_layout(spark, paths["science"], paths["raw"], stage_cfg.survey, slim)
    columns = science_table.slim_columns(stage_cfg.description(),
                                         science_table.added(full.fieldNames(), raw.fieldNames()))
    return columns, slim


def build(spark: "SparkSession", stage_cfg: Raw2ScienceConfig, fink_cfg: FinkConfig) -> "DataStreamWriter":
    """The stage's unstarted writer: raw archive -> cuts -> modules -> science archive.

    Module loading errors (missing module, wrong signature, undeclared column) are raised
    here, before anything starts.
    """
    from fink.io import filestore, table_use

    paths = stage_cfg.paths(fink_cfg)
    modules = stage_cfg.load_modules()
    table_use.attach(spark, paths["raw"], "read", paths["checkpoint"], QUERY_NAME)
    table_use.attach(spark, paths["science"], "write", paths["checkpoint"], QUERY_NAME)
    stream = table_use.skip_compacted(spark, source(spark, stage_cfg, paths["raw"]), paths["raw"], paths["checkpoint"])
    rows = transform(stream, stage_cfg, modules)
    kept, _ = table_columns(spark, stage_cfg, paths, modules)
    writer: list[str] = []  # the query's id, once it has started

    def sink(batch, batch_id):
        writer[:] = writer or [filestore.writer_id(spark, paths["checkpoint"])]
        write_batch(batch.select(*kept), batch_id, stage_cfg, paths, writer[0])

    return (rows.writeStream.foreachBatch(sink).option("checkpointLocation", paths["checkpoint"])
            .queryName(QUERY_NAME))


def step(spark: "SparkSession", stage_cfg: Raw2ScienceConfig, fink_cfg: FinkConfig, **context: Any) -> "Step":
    """The stage as a step of the one-pass pipeline: the batch's raw alerts in (from memory),
    the science alerts out, cached: the cuts, the modules and the science archive's write
    each see them once, and the steps after read the cache."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from fink.io import filestore
    from fink.science.science_api import module_metrics
    from fink.stages import science_table
    from fink.stages.step import Output, Step, Tally, count_where, latency_quantiles, report

    paths = stage_cfg.paths(fink_cfg)
    modules = stage_cfg.load_modules()
    cuts = stage_cfg.quality_cuts()
    try:
        cut_reason_column = cut_reason(cuts)
        apply_cuts(spark.createDataFrame([], raw_schema(spark, stage_cfg.survey)), cuts)
    except Exception as exc:  # an unparsable or unknown-column condition: name the cut, before anything runs
        raise ConfigError(f"quality cuts {cuts}: {str(exc).splitlines()[0]}") from exc
    writer: list[str] = []  # the pipeline query's id, once it has started
    kept, slim = table_columns(spark, stage_cfg, paths, modules)
    layout = science_layout(spark, stage_cfg, modules)
    stored = science_table.stored_schema(slim, stage_cfg.description())
    columns = [f.name for f in raw_schema(spark, stage_cfg.survey).fields]
    plain = [F.col(f"`{c}`") for c in columns]
    made = ModuleColumns(modules, stage_cfg.fail_on_module_error, "processingEnd", "_metrics")
    first = [*plain, metrics.now().alias("processingStart"), *([made.call] if made.call is not None else [])]
    versions = [F.lit(x) for name, version in provenance(modules).items() for x in (name, version)]
    fink_modules = F.create_map(*versions) if versions else F.create_map().cast("map<string,string>")
    second = [*[F.col(f"`{c}`") for c in columns if c != "night"], F.col("processingStart"), *made.values,
              fink_modules.alias("fink_modules"), *made.stamp, F.col("night"), *made.metrics]
    handed = [c for c in (*columns, "processingStart", *[c for m in modules for c in m.outputs], "fink_modules",
                          "processingEnd") if c != "night"] + ["night"]
    check_inputs(modules, raw_schema(spark, stage_cfg.survey))  # a module's input not in the alerts: here, by name

    def run(raw: "DataFrame", batch_id: int, rows: int | None) -> Output:
        nonlocal layout
        started = time.time()
        writer[:] = writer or [filestore.writer_id(spark, context["checkpoint"])]
        done = filestore.committed(spark, paths["science"], filestore.batch_key(writer[0], batch_id))
        if done is not None:  # committed before a crash: what it wrote, from the archive, joined to the batch
            from fink.stages.raw_archive import batch_files

            written = int(done.get("alerts", 0))
            out = science_table.join_raw(
                batch_files(spark, paths["science"], filestore.batch_key(writer[0], batch_id), stored), raw,
                stage_cfg.description(), layout, broadcast=True) if written else None
            return Output(out, written, report(QUERY_NAME, batch_id, 0, {}, None, started,
                                               replayed=True, id=writer[0]))
        clock = metrics.Clock()
        flagged = raw.select(*plain, cut_reason_column.alias("_cut"))
        cut = F.col("_cut")
        # the cuts' and the modules' counts, observed as the cache is built
        cuts_tally = Tally(f"{QUERY_NAME}_cuts", F.count(F.lit(1)).alias("alerts"),
                           count_where(cut.isNull()).alias("kept"), count_where(cut.isNotNull()).alias("rejected"),
                           *[count_where(cut == name).alias(f"rejected_{name}") for name in cuts])
        modules_tally = Tally(f"{QUERY_NAME}_modules", F.count(F.lit(1)).alias("_n"),
                              latency_quantiles(F.col("kafka_timestamp"), F.col("processingEnd")).alias("_lat"),
                              *module_metrics(modules, "_metrics"))
        # add_science's columns, built once (no schema asked of the JVM per batch), in the science
        # archive's order (night last, as a read of its files gives it); the modules run once,
        # into the cache, when the first step after reads it (or this step's write)
        science = modules_tally.on(cuts_tally.on(flagged).where(cut.isNull()).select(*first).select(*second)).persist(
            StorageLevel.MEMORY_AND_DISK_DESER)
        out = science.select(*handed)

        def finish() -> dict[str, Any]:
            record = write_batch(science.select(*kept), batch_id, stage_cfg, paths, writer[0])
            clock.lap("write")
            summary = modules_tally.values()
            clock.lap("modules")
            observed = {k: int(v or 0) for k, v in cuts_tally.values().items()}
            clock.lap("cuts")
            lat = list(summary["_lat"] or []) or None
            account = report(QUERY_NAME, batch_id, observed["alerts"], observed, lat, started, written=record["alerts"],
                             laps=clock.laps, id=writer[0])
            account["observedMetrics"][MODULES_METRICS] = {k: v for k, v in summary.items() if not k.startswith("_")}
            return account

        return Output(out, None, None, [science], finish)

    return Step(QUERY_NAME, reads="raw", writes="science", run=run,
                source=lambda: source(spark, stage_cfg, paths["raw"]), source_table=paths["raw"],
                tables=[paths["science"]])


def reconcile(spark: "SparkSession", progress: list[dict], science_path: str) -> dict[str, Any]:
    """Account for every alert of a run: alerts = kept + rejected (per cut), kept = written.

    The first three come from the query's observed metrics, ``written`` from the commit
    records of the science archive; module costs and errors are summed alongside.
    """
    from fink.io import filestore

    totals: dict[str, Any] = {"batches": 0, "alerts": 0, "kept": 0, "rejected": 0, "written": 0,
                              "reasons": {}, "modules": {}}
    for p in progress:
        values = observed(p, QUERY_NAME)
        if not values or not values.get("alerts"):
            continue
        totals["batches"] += 1
        for key in ("alerts", "kept", "rejected"):
            totals[key] += int(values.get(key) or 0)
        for key, n in values.items():
            if key.startswith("rejected_") and n:
                totals["reasons"][key[len("rejected_"):]] = totals["reasons"].get(key[len("rejected_"):], 0) + int(n)
        add_metrics(totals["modules"], observed(p, MODULES_METRICS))
        record = filestore.committed(spark, science_path, filestore.batch_key(p.get("id") or "", int(p["batchId"])))
        if record is not None:
            totals["written"] += record["alerts"]
    totals["balanced"] = (totals["alerts"] == totals["kept"] + totals["rejected"]
                          and totals["kept"] == totals["written"])
    return totals


def read_science(spark: "SparkSession", path: str, raw_path: str = "") -> "DataFrame":
    """The science archive as a table: one row per kept alert, its raw columns joined to what
    the stage added (:func:`fink.stages.science_table.read_science`)."""
    from fink.stages import science_table

    return science_table.read_science(spark, path, raw_path)
