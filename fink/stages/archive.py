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
from fink.io.hbase import DEFAULT_ORDER, Keys, Layout, Writer, connect, ensure_tables
from fink.runtime.streaming import observed
from fink.science.science_api import ScienceModuleError, add_metrics, check_inputs
from fink.stages.archive_sink import QUERY_NAME, Sink
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
    from pyspark.sql.types import StructType

    from fink.stages.step import Step


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

    def paths(self, fink_cfg: FinkConfig) -> dict[str, str]:
        survey = self.description()
        return {"science": self.science_path or survey.data_uri(fink_cfg, "science"),
                "checkpoint": self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "archive"),
                "quarantine": survey.data_uri(fink_cfg, "quarantine_archive")}

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


def thrift_address(fink_cfg: FinkConfig) -> tuple[str, int]:
    host, _, port = fink_cfg.hbase_thrift.rpartition(":")
    return host, int(port)


def layout(spark: "SparkSession", stage_cfg: ArchiveConfig, science_path: str, producer: Any = None,
           from_files: bool = True) -> Layout:
    """The table layout for the science alerts: their Arrow schema as batches deliver it,
    the columns modules added (family ``d``: not in the raw archive) and the cutouts."""
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    from fink.stages import raw2science as r2s
    from fink.stages.science_stream import science_schema

    schema = science_schema(spark, science_path, producer, stage_cfg.survey, from_files)
    alert = StructType([f for f in schema.fields if f.name != "night"])
    raw = set(r2s.raw_schema(spark, stage_cfg.survey).fieldNames())
    added = [c for c in alert.fieldNames() if c not in raw]
    cutouts = [c for c in stage_cfg.description().cutouts if c in alert.fieldNames()]
    # the Arrow schema of the alerts as Spark hands them over (``toArrow``'s, without running a job)
    large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") == "true"
    arrow = to_arrow_schema(alert, error_on_duplicated_field_names_in_struct=True, timezone="UTC",
                            prefers_large_types=large)
    return Layout(stage_cfg.table_name(), arrow, added=added, cutouts=cutouts,
                  keys=stage_cfg.keys(), order=stage_cfg.healpix_order, groups=stage_cfg.groups(added))


def prepare(spark: "SparkSession", stage_cfg: ArchiveConfig, fink_cfg: FinkConfig, science_path: str,
            schema: "StructType", producer: Any = None, from_files: bool = True) -> Sink:
    """The sink of the stage, its tables created (or their recorded layout checked) and its tag
    filters' inputs checked against ``schema`` (the science alerts'); an unreachable gateway is
    retried for ``retry_for_s`` like a write."""
    from fink.filters.community_filters import resolve_filters

    tags = resolve_filters(stage_cfg.load_tags(), schema, stage_cfg.description().fink_columns())
    host, port = thrift_address(fink_cfg)
    lay = layout(spark, stage_cfg, science_path, producer, from_files)
    probe = Writer(host, port, pool_size=1, retry_for=stage_cfg.retry_for_s)

    def create() -> Layout:
        conn = connect(host, port)
        try:
            return ensure_tables(conn, lay, opener=lambda: connect(host, port))
        finally:
            conn.close()

    lay = probe.retried(f"creating the archive tables {stage_cfg.table_name()}", create)
    probe.close()
    try:
        check_inputs([f.module for f in tags], schema)
    except ScienceModuleError as exc:  # a tag filter's input that is not a column of the alerts
        raise FilterError(str(exc).replace("science module", "tag filter", 1)) from exc
    writer_options = {"pool_size": stage_cfg.pool_size, "batch_size": stage_cfg.batch_size,
                      "retry_for": stage_cfg.retry_for_s}
    return Sink(lay, tags, host, port, writer_options, schema.fieldNames(), stage_cfg.paths(fink_cfg)["quarantine"])


def step(spark: "SparkSession", stage_cfg: ArchiveConfig, fink_cfg: FinkConfig, *, producer: Any = None,
         from_files: bool = False, **context: Any) -> "Step":
    """The stage as a step: the batch's science alerts in (in a pipeline: cached by
    raw2science; alone: the science archive's new rows joined to their alerts), into HBase;
    the batch's step ends when HBase has accepted every row. ``from_files``: the science
    rows' layout from the archive's records (alone), not from ``producer``."""
    from pyspark.sql import functions as F

    from fink.stages import science_stream
    from fink.stages.step import Output, Step, Tally, latency_quantiles, report

    paths = stage_cfg.paths(fink_cfg)
    schema = science_stream.science_schema(spark, paths["science"], producer, stage_cfg.survey, from_files=from_files)
    sink = prepare(spark, stage_cfg, fink_cfg, paths["science"], schema, producer, from_files=from_files)

    def run(science: "DataFrame", batch_id: int, rows: int | None) -> Output:
        def finish() -> dict[str, Any]:  # after the alerts are on their way to the users
            started = time.time()
            # Spark's count, against the rows HBase accepted; the latency: Kafka -> this write
            # (observed by the write's own job, not by a job of their own)
            tally = Tally(QUERY_NAME, F.count(F.lit(1)).alias("n"),
                          latency_quantiles(F.col("kafka_timestamp"), F.current_timestamp()).alias("lat"))
            sink(tally.on(science), batch_id)
            seen = tally.values()
            return report(QUERY_NAME, batch_id, seen["n"], {"alerts": seen["n"]}, list(seen["lat"] or []) or None,
                          started)

        return Output(None, 0, None, finish=finish)

    survey = producer.survey if producer is not None else stage_cfg.survey
    return Step(QUERY_NAME, reads="science", writes=None, run=run, sink=sink,
                source=lambda: science_stream.source(spark, paths["science"], stage_cfg.survey,
                                                     stage_cfg.max_files_per_trigger, producer),
                source_table=paths["science"], expand=science_stream.expander(spark, paths["science"], survey, fink_cfg,
                                                                              schema))


def build(spark: "SparkSession", stage_cfg: ArchiveConfig, fink_cfg: FinkConfig,
          producer: Any = None) -> "DataStreamWriter":
    """The stage's unstarted writer: science archive -> tags -> HBase (main table and indexes).

    The stage's own query runs its step (:func:`step`) on each batch of the science
    archive's new files, joined to their raw alerts. The tables are created (or their
    recorded layout checked) here, before anything starts; an unreachable gateway is retried
    for ``retry_for_s`` like a write. ``producer``: the raw2science configuration that writes
    the science archive (see :func:`fink.stages.science_stream.stored_schema`).
    """
    from fink.stages.step import standalone

    paths = stage_cfg.paths(fink_cfg)
    return standalone(step(spark, stage_cfg, fink_cfg, producer=producer, from_files=True), paths["checkpoint"])


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
