"""The archive stage's sink: the Spark tasks tag, encode and write each batch's alerts to
HBase through their own Thrift connections (``mapInArrow``), and report what HBase accepted.

Notes
-----
Nested values (structs, history arrays, maps) are encoded to their Avro cells by Spark in
the JVM (:func:`cells`), far faster than Python; the tasks only key the rows, run the tag
filters and send the cells (:func:`writer_task`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fink.filters.filter_api import AlertFilter
from fink.io.hbase import INDEXES, ArchiveError, Layout
from fink.log import logger
from fink.runtime import metrics
from fink.science.science_api import add_metrics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

QUERY_NAME = "archive"


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



def writer_task(layout: Layout, tags: list[AlertFilter], host: str, port: int, writer_options: dict[str, Any],
                extra: dict[str, str]):
    """The function each Spark task runs on its Arrow batches (``mapInArrow``): run the tag
    filters, encode the rows and write them, main table first, through its own Thrift
    connections (:class:`fink.io.hbase.Writer` with ``writer_options``: ``pool_size``,
    ``batch_size``, ``retry_for``); report counts and the filters' metrics."""
    keys_of = {alias: path for alias, path in extra.items() if alias.startswith("_key_")}
    inputs = {path: next((a for a, p in extra.items() if p == path and a.startswith("_in_")), path)
              for path in inputs_of(tags)}

    def write(batches):
        import json

        import pyarrow as pa

        from fink.io.hbase import Writer
        writer = Writer(host, port, **writer_options)
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

    def __init__(self, layout: Layout, tags: list[AlertFilter], host: str, port: int, writer_options: dict[str, Any],
                 columns: list[str] | None = None, quarantine: str = ""):
        self.layout, self.columns = layout, columns  # the batches' columns, when known
        self.quarantine = quarantine  # where the alerts that cannot be keyed are listed, per batch
        self.extra = extra_columns(layout, inputs_of(tags))
        self.task = writer_task(layout, tags, host, port, writer_options, self.extra)
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
