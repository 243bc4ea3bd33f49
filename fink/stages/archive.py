"""archive: the science alerts into HBase as they are processed, with index tables for queries.

Notes
-----
One streaming query reads the science archive as a file stream (as distribution does),
runs the tag filters (the classes of the class index) in one Arrow UDF, and writes each
micro-batch through the HBase Thrift gateway with ``happybase``: the main table first,
then the class, pixel and night indexes (layout in :mod:`fink.hbase`).

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
from fink.filters.api import SELECTED, AlertFilter, load_filters
from fink.hbase import DEFAULT_ORDER, INDEXES, Keys, Layout, Writer, connect, ensure_tables
from fink.science.api import add_metrics
from fink.streaming import observed

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter

QUERY_NAME = "archive"
TAGS_METRICS = "archive_tags"
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")

DEFAULT_TAGS = {"early_snia": "fink.filters.builtin:early_snia",
                "sso": "fink.filters.builtin:solar_system",
                "catalogued": "fink.filters.builtin:catalogued"}


@dataclasses.dataclass(frozen=True)
class ArchiveConfig(Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    table
        The main HBase table; the indexes are ``<table>_class``, ``_pixel`` and ``_night``.
    tags
        Tag (class) -> filter by dotted path: an alert the filter selects is in the class
        index under that tag.
    tag_params
        Tag -> keyword parameters of its filter.
    healpix_order
        Order of the HEALPix pixel index (7: 27 arcmin pixels).
    pool_size, batch_size
        Thrift connections writing in parallel, and rows per Thrift call.
    retry_for_s
        How long a batch waits for an unavailable HBase before the query fails.
    max_files_per_trigger
        Science archive files read per micro-batch at most (0: all new files).
    science_path, checkpoint
        Empty means under ``data_dir``: ``science``, ``checkpoints/archive``.
    """

    table: str = "ztf_alerts"
    tags: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_TAGS))
    tag_params: dict = dataclasses.field(default_factory=dict)
    healpix_order: int = DEFAULT_ORDER
    pool_size: int = 4
    batch_size: int = 200
    retry_for_s: float = 600.0
    max_files_per_trigger: int = 8
    science_path: str = ""
    checkpoint: str = ""

    def validate(self, source: str = "configuration") -> None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.table or ""):
            raise ConfigError(f"{source}: 'table' must be an HBase table name (letters, digits, _ . -), "
                              f"got {self.table!r}")
        for tag in self.tags:
            if not re.fullmatch(r"[A-Za-z0-9.-][A-Za-z0-9_.-]*", str(tag)):
                raise ConfigError(f"{source}: tag {tag!r} must be letters, digits, _ . - (not starting with _)")
        if not 0 <= self.healpix_order <= 29:
            raise ConfigError(f"{source}: healpix_order must be within 0..29")
        if self.pool_size < 1 or self.batch_size < 1 or self.retry_for_s <= 0 or self.max_files_per_trigger < 0:
            raise ConfigError(f"{source}: pool_size >= 1, batch_size >= 1, retry_for_s > 0 and "
                              f"max_files_per_trigger >= 0")

    def paths(self, fink: FinkConfig) -> dict[str, str]:
        return {"science": self.science_path or fink.data_uri("science"),
                "checkpoint": self.checkpoint or fink.data_uri("checkpoints", "archive")}

    def load_tags(self) -> list[AlertFilter]:
        return load_filters(self.tags, self.tag_params)


def thrift_address(fink: FinkConfig) -> tuple[str, int]:
    host, _, port = fink.hbase_thrift.rpartition(":")
    return host, int(port)


def layout(spark: "SparkSession", cfg: ArchiveConfig, science_path: str) -> Layout:
    """The table layout for the science alerts: their Arrow schema as batches deliver it,
    the columns modules added (family ``d``: not in the raw archive) and the cutouts."""
    from fink.stages import distribution as dist
    from fink.stages import raw2science as r2s

    schema = dist.science_schema(spark, science_path)
    alert = spark.createDataFrame([], schema).drop("night")
    raw = set(r2s.raw_schema(spark).fieldNames())
    added = [c for c in alert.columns if c not in raw]
    return Layout(cfg.table, alert.toArrow().schema, added=added, cutouts=[c for c in CUTOUTS if c in alert.columns],
                  keys=Keys(), order=cfg.healpix_order)


def tag(df: "DataFrame", tags: list[AlertFilter]) -> "DataFrame":
    """Run the tag filters (:data:`SELECTED` per alert) and count alerts and tags in the metrics."""
    from pyspark.sql import functions as F

    from fink.filters.api import apply_filters

    df = apply_filters(df, tags, observe_as=TAGS_METRICS)
    counts = [F.sum(F.array_contains(F.col(SELECTED), k).cast("int")).alias(f"tag_{f.topic}")
              for k, f in enumerate(tags)]
    return df.observe(QUERY_NAME, F.count(F.lit(1)).alias("alerts"), *counts)


def avro_cells(df: "DataFrame", layout: Layout) -> "DataFrame":
    """Encode the nested columns (history arrays, maps) as their Avro cells in Spark: the
    JVM executors do it in parallel, far faster than Python (see :mod:`fink.hbase`)."""
    import json

    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    cells = {}
    for col in layout.columns:
        if col.kind == "avro":
            leaf = col.name.rpartition(".")[2]
            cells[col.name] = to_avro(F.struct(F.col(col.name).alias(leaf)), json.dumps(layout.avro[col.name]))
    top = [name for name in cells if "." not in name]
    out = df.withColumns({name: value for name, value in cells.items() if name in top})
    nested = {name: value for name, value in cells.items() if name not in top}
    return out.select("*", *[value.alias(name) for name, value in nested.items()]) if nested else out


class Sink:
    """The ``foreachBatch`` function: the batch's rows into the main table, then the indexes.

    ``written`` keeps, per batch id, the rows HBase accepted per table, and ``seconds`` the
    time the writes took (retries included).
    """

    def __init__(self, layout: Layout, tags: list[str], host: str, port: int, cfg: ArchiveConfig):
        self.layout, self.tags, self.host, self.port, self.cfg = layout, tags, host, port, cfg
        self.writer: Writer | None = None
        self.written: dict[int, dict[str, Any]] = {}

    def __call__(self, batch: "DataFrame", batch_id: int) -> None:
        if self.writer is None:
            self.writer = Writer(self.host, self.port, pool_size=self.cfg.pool_size,
                                 batch_size=self.cfg.batch_size, retry_for=self.cfg.retry_for_s)
        t0 = time.perf_counter()
        table = avro_cells(batch, self.layout).toArrow()
        t1 = time.perf_counter()
        record: dict[str, Any] = {"alerts": table.num_rows, "archived": 0, "rows": {}, "retries": 0}
        if table.num_rows:
            retries = self.writer.retries
            keys = self.layout.row_keys(table)
            main = self.layout.encode(table.drop_columns([SELECTED, "night"]), keys)
            tags = [[self.tags[k] for k in sel or ()] for sel in table.column(SELECTED).to_pylist()]
            index = self.layout.index_rows(table, keys, tags, table.column("night").to_pylist())
            t2 = time.perf_counter()
            record["rows"] = self.writer.write({self.layout.table: main})
            record["rows"].update(self.writer.write({self.layout.index_table(i): index[i] for i in INDEXES}))
            record["archived"] = record["rows"][self.layout.table]
            record["retries"] = self.writer.retries - retries
            record["encode_s"] = round(t2 - t1, 3)
        record["collect_s"] = round(t1 - t0, 3)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.written[batch_id] = record


def build(spark: "SparkSession", cfg: ArchiveConfig, fink: FinkConfig) -> "DataStreamWriter":
    """The stage's unstarted writer: science archive -> tags -> HBase (main table and indexes).

    The tables are created (or their recorded layout checked) here, before anything starts;
    an unreachable gateway is retried for ``retry_for_s`` like a write.
    """
    from fink.stages import distribution as dist

    paths = cfg.paths(fink)
    tags = cfg.load_tags()
    host, port = thrift_address(fink)
    lay = layout(spark, cfg, paths["science"])
    probe = Writer(host, port, pool_size=1, retry_for=cfg.retry_for_s)

    def create() -> Layout:
        conn = connect(host, port)
        try:
            return ensure_tables(conn, lay)
        finally:
            conn.close()

    lay = probe.retried(f"creating the archive tables {cfg.table}", create)
    probe.close()
    stream = dist.source(spark, dist.DistributionConfig(max_files_per_trigger=cfg.max_files_per_trigger),
                         paths["science"])
    sink = Sink(lay, [f.topic for f in tags], host, port, cfg)
    writer = (tag(stream, tags).writeStream.foreachBatch(sink)
              .option("checkpointLocation", paths["checkpoint"]).queryName(QUERY_NAME))
    writer.fink_sink = sink  # type: ignore[attr-defined]  # what each batch wrote, for reconcile
    return writer


def reconcile(progress: list[dict], written: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Account for a run: alerts read (observed) against main-table rows HBase accepted.

    ``balanced`` when every batch that read alerts wrote exactly one main row per alert.
    """
    totals: dict[str, Any] = {"batches": 0, "alerts": 0, "archived": 0, "tags": {}, "rows": {},
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
        balanced &= record.get("archived", 0) == int(values["alerts"])
        for table, n in record.get("rows", {}).items():
            totals["rows"][table] = totals["rows"].get(table, 0) + n
        for key, n in values.items():
            if key.startswith("tag_"):
                totals["tags"][key[4:]] = totals["tags"].get(key[4:], 0) + int(n or 0)
        totals["retries"] += record.get("retries", 0)
        totals["write_seconds"] += record.get("seconds", 0.0)
        add_metrics(totals["filters"], observed(p, TAGS_METRICS))
    totals["balanced"] = balanced and totals["alerts"] == totals["archived"]
    totals["write_seconds"] = round(totals["write_seconds"], 2)
    return totals
