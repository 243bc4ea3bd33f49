"""distribution: user filters over the science archive, each selection to its own Kafka topic.

Notes
-----
One streaming query serves every filter: the science archive is read as a file stream,
all filters run in one Arrow UDF per micro-batch (:func:`fink.filters.apply_filters`),
each selected alert becomes one row per topic that wants it, and the batch goes to Kafka
in one transaction (:class:`fink.io.delivery.BatchPublisher`): after a crash and restart no
alert reaches a topic twice.

The wire format is the Fink community client's: the message value is the alert with its
added values as schemaless Avro (Spark's ``to_avro``), the key the JSON of that Avro
schema; the schema is also published on ``<topic>_schema``. A topic may drop the cutouts
or keep only chosen fields; topics with the same choice share one encoding per alert.
Topics are created with their partitions and retention when the stage is built, before
any write.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated
from fink.filters.filter_api import SELECTED, AlertFilter, label, load_filters
from fink.runtime import metrics
from fink.runtime.streaming import observed
from fink.science.science_api import add_metrics
from fink.stages.distribution_sink import QUERY_NAME, Sink
from fink.stages.science_stream import expander, science_schema, source
from fink.stages.topics import alert_columns, derived, encodings, prepare_topics
from fink.stages.watching import WATCH, WATCH_TYPE, Watcher
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter

    from fink.stages.step import Step

FILTERS_METRICS = "distribution_filters"
#: where a filter runs: in the micro-batch pass (any filter), or in the real-time lane (SQL conditions)
LANES = ("microbatch", "realtime")

@dataclasses.dataclass(frozen=True)
class DistributionConfig(surveys.OfSurvey, Validated):
    """Settings of the stage (the notebook's parameters of the same names).

    Parameters
    ----------
    filters
        Topic -> filter by dotted path (``package.module:function``), or a mapping
        ``{"condition": "<Spark SQL over the alert's fields>", "lane": "realtime"}``: a filter of
        the real-time lane (:mod:`fink.stages.realtime`: sub-second, at least once, no
        science module). Empty: the survey description's topics and filters.
    filter_params
        Topic -> keyword parameters of its filter.
    topic_options
        Topic -> ``{"cutouts": false}`` to drop the three cutouts, and/or
        ``{"fields": [...]}`` to send only these top-level fields.
    partitions, retention_ms
        Of each topic created (and of its ``_schema`` topic).
    max_files_per_trigger
        Science archive files read per micro-batch at most (0: all new files).
    science_path, checkpoint
        Empty means under ``data_dir`` (and the survey's folder): ``science``,
        ``checkpoints/distribution``.
    survey
        A shipped survey (``ztf``, ``rubin``) or a description file: the science archive's
        layout and the default filters.
    watchlists
        The registry of users' watchlists (:mod:`fink.filters.watchlists`), read again at each
        micro-batch when it changed: ``""`` means ``$FINK_HOME/watchlists``, ``"none"`` none.
    """

    filters: dict = dataclasses.field(default_factory=dict)
    filter_params: dict = dataclasses.field(default_factory=dict)
    topic_options: dict = dataclasses.field(default_factory=dict)
    partitions: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    max_files_per_trigger: int = 8
    science_path: str = ""
    checkpoint: str = ""
    survey: str = "ztf"
    watchlists: str = ""

    def validate(self, source: str = "configuration") -> None:
        for topic, entry in self.filters.items():
            if isinstance(entry, str):
                continue
            if not isinstance(entry, dict) or set(entry) - {"condition", "lane"} or \
                    entry.get("lane", "realtime") not in LANES or not isinstance(entry.get("condition"), str):
                raise ConfigError(f"{source}: filter of topic '{topic}' must be a dotted path, or "
                                  f"{{condition: <SQL>, lane: realtime}}, got {entry!r}")
            if entry.get("lane", "realtime") != "realtime":
                raise ConfigError(f"{source}: filter of topic '{topic}': a SQL condition runs in the real-time "
                                  "lane (lane: realtime); for the micro-batch lane write it as a filter function")
        if not self.topic_filters() and not self.realtime_filters():
            raise ConfigError(f"{source}: no filter: map at least one topic to a filter")
        for topic, opts in self.topic_options.items():
            if topic not in self.topic_filters():
                raise ConfigError(f"{source}: topic_options for '{topic}', which has no filter")
            if not isinstance(opts, dict) or set(opts) - {"cutouts", "fields"}:
                raise ConfigError(f"{source}: topic_options['{topic}'] takes only 'cutouts' and 'fields'")
            if "fields" in opts and (not isinstance(opts["fields"], list) or not opts["fields"]):
                raise ConfigError(f"{source}: topic_options['{topic}']['fields'] must be a non-empty list")
        if self.partitions < 1 or self.retention_ms < 1 or self.max_files_per_trigger < 0:
            raise ConfigError(f"{source}: partitions >= 1, retention_ms >= 1 and max_files_per_trigger >= 0")


    def topic_filters(self) -> dict[str, str]:
        """Topic -> filter of the micro-batch lane: the configured ones, or the survey's."""
        return {t: f for t, f in (self.filters or self.description().filters).items() if isinstance(f, str)}

    def realtime_filters(self) -> dict[str, str]:
        """Topic -> SQL condition of the real-time lane's filters (:mod:`fink.stages.realtime`)."""
        return {t: f["condition"] for t, f in self.filters.items() if isinstance(f, dict)}

    def paths(self, fink_cfg: FinkConfig) -> dict[str, str]:
        survey = self.description()
        return {"science": self.science_path or survey.data_uri(fink_cfg, "science"),
                "checkpoint": self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "distribution")}

    def load_filters(self) -> list[AlertFilter]:
        return load_filters(self.topic_filters(), self.filter_params)

    def watchlist_registry(self) -> str | None:
        """The watchlists' registry folder, None when they are off."""
        from fink.filters.watchlists import registry

        return None if self.watchlists == "none" else str(registry(self.watchlists))


# -- the science archive as a stream ---------------------------------------------------------


# -- what each topic receives ----------------------------------------------------------------


def select(df: "DataFrame", filters: list[AlertFilter]) -> "DataFrame":
    """Run every filter; count alerts and selections per topic in the query's metrics."""
    from pyspark.sql import functions as F

    from fink.filters.filter_api import apply_filters

    df = apply_filters(df, filters, observe_as=FILTERS_METRICS)
    counts = [F.sum(F.array_contains(F.col(SELECTED), k).cast("int")).alias(f"selected_{f.module.key}")
              for k, f in enumerate(filters)]
    df = df.observe(QUERY_NAME, F.count(F.lit(1)).alias("alerts"),
                    F.sum((F.size(F.col(SELECTED)) > 0).cast("int")).alias("selected"), *counts)
    return metrics.observe_latency(df)  # Kafka timestamp -> start of the batch that sends it


# -- the stage -------------------------------------------------------------------------------

def build(spark: "SparkSession", stage_cfg: DistributionConfig, fink_cfg: FinkConfig,
          producer: Any = None) -> "DataStreamWriter":
    """The stage's unstarted writer: science archive -> filters -> one Kafka topic per filter.

    The stage's own query runs its step (:func:`step`) on each batch of the science archive's
    new files, joined to their raw alerts. Filter loading errors and bad topic options are
    raised here; the topics exist when it returns. ``producer``: the raw2science
    configuration that writes the science archive, for its layout while the archive is still
    empty (:func:`stored_schema`).
    """
    from fink.stages.step import standalone

    paths = stage_cfg.paths(fink_cfg)
    return standalone(step(spark, stage_cfg, fink_cfg, checkpoint=paths["checkpoint"], producer=producer,
                           from_files=True), paths["checkpoint"])


def step(spark: "SparkSession", stage_cfg: DistributionConfig, fink_cfg: FinkConfig, *, checkpoint: str,
         producer: Any = None, from_files: bool = False, **context: Any) -> "Step":
    """The stage as a step: the batch's science alerts in (in a pipeline: cached by
    raw2science; alone: the science archive's new rows joined to their alerts), each
    filter's selection to its topic in the batch's transaction.

    The filters run on the columns they read alone (with the alerts' Kafka coordinates); the
    selected alerts are then joined back to the full rows and encoded once per encoding. The
    transactions and outboxes are keyed by ``checkpoint`` (the pipeline's, or the stage's).
    ``from_files``: the science rows' layout from the archive's records (alone), not from
    ``producer`` (a pipeline's raw2science).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from fink.filters.community_filters import resolve_filters
    from fink.filters.filter_api import FilterError, selected
    from fink.science.science_api import ModuleColumns, ScienceModuleError, check_inputs, module_metrics
    from fink.stages.step import Output, Step, Tally, count_where, latency_quantiles, report

    paths = stage_cfg.paths(fink_cfg)
    filters = stage_cfg.load_filters()
    topics = [f.topic for f in filters]
    schema = science_schema(spark, paths["science"], producer, stage_cfg.survey, from_files=from_files)
    fink_names = stage_cfg.description().fink_columns()  # this broker's columns under Fink's names
    filters = resolve_filters(filters, schema, fink_names)  # Fink's filters' arguments, as Fink resolves them
    encs = encodings(alert_columns(spark.createDataFrame([], schema), fink_names).schema, stage_cfg.topic_options,
                     topics)
    prepare_topics(fink_cfg.kafka_bootstrap, encs, topics, stage_cfg.partitions, stage_cfg.retention_ms)
    sink = Sink(fink_cfg.kafka_bootstrap, topics, encs, checkpoint, derived(schema, fink_names))
    sink.recover(spark)
    root = stage_cfg.watchlist_registry()
    watcher = None if root is None else Watcher(
        root, stage_cfg.description(), alert_columns(spark.createDataFrame([], schema), fink_names).schema,
        fink_cfg.kafka_bootstrap, stage_cfg.partitions, stage_cfg.retention_ms)
    ids = ["kafka_topic", "kafka_partition", "kafka_offset"]
    heads = list(dict.fromkeys(c.split(".")[0] for f in filters for c in f.module.inputs))
    heads += [c.split(".")[0] for c in (watcher.inputs if watcher else []) if c.split(".")[0] not in heads]
    try:
        check_inputs([f.module for f in filters], schema)
    except ScienceModuleError as exc:  # an input column that is not in the alerts, named before anything runs
        raise FilterError(str(exc).replace("science module", "filter", 1)) from exc
    made = ModuleColumns([f.module for f in filters], metrics_column="_metrics")
    narrow = [F.col(c) for c in dict.fromkeys([*ids, "kafka_timestamp", *heads])]
    flags = [selected([F.col(ModuleColumns.TMP).getField(f"_sel{k}") for k in range(len(filters))]).alias(SELECTED)
             if filters else F.array().cast("array<int>").alias(SELECTED), *made.metrics, metrics.now().alias("_at")]
    answers = [*[F.col(c) for c in ids], F.col("kafka_timestamp"), *flags]

    def run(science: "DataFrame", batch_id: int, rows: int | None) -> Output:
        started = time.time()
        if watcher is not None and watcher.refresh():  # the lists changed since the last batch
            sink.route([*topics, *watcher.topics()], watcher.encoding(len(topics)))
        lists = watcher.topics() if watcher is not None else []
        if not filters and not lists:  # every filter runs in the real-time lane
            alerts = rows if rows is not None else science.count()
            return Output(None, 0, report(QUERY_NAME, batch_id, alerts, {"alerts": alerts, "selected": 0}, None,
                                          started))
        clock = metrics.Clock()
        # the filters on the columns they read alone, their UDF built once (apply_filters' columns),
        # and the watchlists' matches
        watch = [watcher.column(len(topics))] if watcher is not None else [F.array().cast(WATCH_TYPE).alias(WATCH)]
        picked, matched = F.col(SELECTED), F.col(f"{WATCH}._k")
        # counted as the flags are cached (by the selection's job)
        tally = Tally(QUERY_NAME, F.count(F.lit(1)).alias("alerts"), count_where(F.size(picked) > 0).alias("selected"),
                      *[count_where(F.array_contains(picked, k)).alias(f"selected_{f.module.key}")
                        for k, f in enumerate(filters)],
                      count_where(F.size(WATCH) > 0).alias("watched"),
                      *[count_where(F.array_contains(matched, len(topics) + k)).alias(f"selected_{label(t)}")
                        for k, t in enumerate(lists)],
                      latency_quantiles(F.col("kafka_timestamp"), F.col("_at")).alias("_lat"),
                      *module_metrics([f.module for f in filters], "_metrics"))
        calls = [*([made.call] if made.call is not None else []), *watch]
        released: list["DataFrame"] = []
        if sink.writes_outbox and not lists:
            # one job: the filters beside the whole alerts, the flags counted as the outbox's job
            # reads them and the selected alerts encoded once per encoding into the outbox (by a
            # selection of the flags, then a join, the filters' job and the join's planning took
            # 0.3 to 0.9 s of a batch, whatever its size); the batch's transaction then runs on
            # the sink's thread while the pipeline goes on
            sink(tally.on(science.select("*", *calls).select("*", *flags)), batch_id)
        else:
            # the flags cached beside the alerts' keys: read twice by the union of the filters' and
            # the watchlists' messages, or counted after the rows went through the driver
            cached = tally.on(science.select(*narrow, *calls).select(*answers, WATCH),
                              observe=sink.writes_outbox).persist(StorageLevel.MEMORY_AND_DISK_DESER)
            released.append(cached)
            chosen = cached.where((F.size(picked) > 0) | (F.size(WATCH) > 0)).select(*ids, SELECTED, WATCH)
            try:
                sink(science.join(F.broadcast(chosen), ids, "inner"), batch_id)
            except BaseException:
                cached.unpersist()  # not handed to the pipeline yet: released here
                raise
        clock.lap("select_encode")

        def finish() -> dict[str, Any]:
            counted = tally.values()
            clock.lap("counts")
            observed = {k: int(counted[k] or 0) for k in ["alerts", "selected", "watched"] + [
                f"selected_{f.module.key}" for f in filters] + [f"selected_{label(t)}" for t in lists]}
            account = report(QUERY_NAME, batch_id, observed["alerts"], observed, list(counted["_lat"] or []) or None,
                             started, laps=clock.laps)
            account["observedMetrics"][FILTERS_METRICS] = {
                k: v for k, v in counted.items() if k not in observed and not k.startswith("_")}
            return account

        return Output(None, 0, None, released, finish)

    return Step(QUERY_NAME, reads="science", writes=None, run=run, sink=sink,
                source=lambda: source(spark, paths["science"], stage_cfg.survey, stage_cfg.max_files_per_trigger,
                                      producer),
                source_table=paths["science"],
                expand=expander(spark, paths["science"], producer.survey if producer is not None else stage_cfg.survey,
                                fink_cfg, schema))


def reconcile(progress: list[dict], sink: Sink) -> dict[str, Any]:
    """Account for a run: alerts read, per topic selected (observed) and delivered (Kafka,
    once the sink's last transaction has ended).

    ``balanced`` when every topic got exactly what its filter selected (replayed batches,
    already delivered, are left out of both sides).
    """
    sink.flush()
    delivered = sink.delivered
    totals: dict[str, Any] = {"batches": 0, "alerts": 0, "selected": 0, "topics": {}, "filters": {},
                              "replayed": sum(1 for v in delivered.values() if v is None)}
    for p in progress:
        values = observed(p, QUERY_NAME)
        batch = int(p["batchId"])
        if not values or not values.get("alerts"):
            continue
        if batch in delivered and delivered[batch] is None:
            continue
        totals["batches"] += 1
        totals["alerts"] += int(values["alerts"])
        totals["selected"] += int(values.get("selected") or 0)
        sent = delivered.get(batch) or {}
        for key, n in values.items():
            if key.startswith("selected_"):
                entry = totals["topics"].setdefault(key[len("selected_"):], {"selected": 0, "delivered": 0})
                entry["selected"] += int(n or 0)
        for topic, n in sent.items():
            totals["topics"].setdefault(label(topic), {"selected": 0, "delivered": 0})["delivered"] += n
        add_metrics(totals["filters"], observed(p, FILTERS_METRICS))
    totals["balanced"] = all(t["selected"] == t["delivered"] for t in totals["topics"].values())
    return totals
