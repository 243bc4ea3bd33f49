"""The four stages as one service, in one pass (the default) or as four queries of one session.

**One pass** (:func:`one_pass`): one streaming query reads the survey's Kafka topic once,
and each micro-batch goes through every stage in memory: stream2raw decodes it once (and
writes the raw archive and the quarantine), raw2science applies the cuts and the modules
(and writes the science archive), distribution sends each filter's selection in the batch's
Kafka transaction, archive writes HBase. No stage reads the files of the one before; each
does what it does alone, through one interface (:class:`fink.stages.step.Step`: what it
reads, what it hands on, its account of the batch), and the pipeline composes them without
naming them. The stages' accounts are kept per stage as if each were its own query, so
their ``reconcile``, ``fink show`` and the dashboard read a one-pass run as any other.

**Four queries** (:func:`build`): each stage's own streaming query (the same as its own
notebook's, with its checkpoint), in its own FAIR scheduler pool; with a processing-time
trigger they run side by side, with ``availableNow`` one after the other. Each alert then
crosses three file hops: slower, but one stage can be re-run over an archive alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fink.config import FinkConfig
from fink.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamWriter

    from fink.stages.step import Step

STAGES = ("stream2raw", "raw2science", "distribution", "archive")


def _module(stage: str):
    from importlib import import_module

    return import_module(f"fink.stages.{stage}")


def _config_class(stage: str):
    from fink.stages.archive import ArchiveConfig
    from fink.stages.distribution import DistributionConfig
    from fink.stages.raw2science import Raw2ScienceConfig
    from fink.stages.stream2raw import Stream2RawConfig

    return {"stream2raw": Stream2RawConfig, "raw2science": Raw2ScienceConfig,
            "distribution": DistributionConfig, "archive": ArchiveConfig}[stage]


@dataclasses.dataclass
class Stage:
    """One stage of the pipeline: its configuration, and once built its writer (four queries)
    or its step (one pass), and its sink."""

    name: str
    config: Any
    writer: "DataStreamWriter | None" = None
    step: "Step | None" = None
    checkpoint: str = ""  # the checkpoint of the query that runs it (the pipeline's, in one pass)

    @property
    def query_name(self) -> str:
        return _module(self.name).QUERY_NAME

    @property
    def sink(self) -> Any:
        if self.step is not None:
            return self.step.sink
        return getattr(self.writer, "fink_sink", None)


def configure(stages: list[str], topic: str, settings: dict[str, dict] | None = None,
              survey: str = "ztf") -> list[Stage]:
    """The stages' typed configurations, in pipeline order: ``settings[stage]`` are its parameters.

    ``topic`` is stream2raw's input topic (unless its settings name one), ``survey`` every
    stage's survey (unless its settings name one). An unknown stage, or a parameter its
    configuration does not have, is an error naming it.
    """
    if isinstance(stages, str) or not all(isinstance(s, str) for s in stages):
        raise ConfigError(f"pipeline: stages must be a list of stage names, got {stages!r}")
    settings = dict(settings or {})
    unknown = sorted((set(stages) | set(settings)) - set(STAGES))
    if unknown:
        raise ConfigError(f"pipeline: unknown stage(s) {', '.join(unknown)} (stages: {', '.join(STAGES)})")
    out = []
    for name in STAGES:
        if name not in stages:
            continue
        values = dict(settings.get(name) or {})
        values.setdefault("survey", survey)
        if name == "stream2raw" and not values.get("topic_pattern"):
            values.setdefault("topic", topic)
        out.append(Stage(name, _config_class(name).from_mapping(values, source=f"pipeline {name} settings")))
    if not out:
        raise ConfigError("pipeline: no stage to run")
    return out


def paths(stages: list[Stage], fink_cfg: FinkConfig) -> dict[str, dict[str, str]]:
    return {s.name: s.config.paths(fink_cfg) for s in stages}


def input_topic(stages: list[Stage], default: str) -> str:
    """The (first) topic stream2raw reads in this plan: where a simulator should publish."""
    s2r = next((s.config for s in stages if s.name == "stream2raw"), None)
    return (s2r.topic.split(",")[0] if s2r is not None and s2r.topic else "") or default


def build(spark: "SparkSession", stages: list[Stage], fink_cfg: FinkConfig, trigger: str) -> list[Stage]:
    """Each stage's unstarted writer, with ``trigger`` (``availableNow`` or ``"<N> seconds"``).

    Loading errors (filters, modules, tables, topics) are raised here, before any query starts.
    distribution and archive take the science archive's schema from this plan's raw2science
    (its modules), not from the built-in modules, while the archive is still empty.
    """
    _check_trigger(trigger)
    producer = next((s.config for s in stages if s.name == "raw2science"), None)
    for s in stages:
        module = _module(s.name)
        writer = (module.build(spark, s.config, fink_cfg, producer) if s.name in ("distribution", "archive")
                  else module.build(spark, s.config, fink_cfg))
        s.writer = _trigger(writer, trigger)  # trigger() returns the same writer: its fink_sink stays
    return stages


def _check_trigger(trigger: str) -> None:
    if trigger != "availableNow" and not trigger.endswith("seconds"):
        raise ConfigError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")


def _trigger(writer: "DataStreamWriter", trigger: str) -> "DataStreamWriter":
    _check_trigger(trigger)
    return writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)


def checkpoint(stages: list[Stage], fink_cfg: FinkConfig) -> str:
    """Where the one-pass query keeps its checkpoint: ``checkpoints/pipeline`` (under the survey's folder)."""
    return stages[0].config.description().data_uri(fink_cfg, "checkpoints", "pipeline")


def one_pass(spark: "SparkSession", stages: list[Stage], fink_cfg: FinkConfig, trigger: str,
             checkpoint_path: str = "") -> "DataStreamWriter":
    """The one-pass query's unstarted writer (named ``pipeline``); each stage gets its step.

    The query reads the first stage's source (stream2raw's: the survey's Kafka topic) and
    hands each micro-batch to every stage in order. Loading errors (filters, modules,
    tables, topics) are raised here, as is a stage that reads what no stage before it writes.
    Start it with :func:`fink.runtime.streaming.start`; its ``fink_sink`` is the :class:`OnePass`.
    """
    from fink.stages.step import FRAMES, OnePass, attach, source

    _check_trigger(trigger)
    where = checkpoint_path or checkpoint(stages, fink_cfg)
    producer = next((s.config for s in stages if s.name == "raw2science"), None)
    available: set[str] = set()
    for k, s in enumerate(stages):
        s.step = _module(s.name).step(spark, s.config, fink_cfg, checkpoint=where, producer=producer)
        s.checkpoint = where
        if k == 0:
            available.add(s.step.reads)
        elif s.step.reads not in available:
            raise ConfigError(f"pipeline: {s.name} reads the {s.step.reads} alerts, which no stage before it "
                              f"hands on (stages: {', '.join(x.name for x in stages)})")
        if s.step.writes in FRAMES:
            available.add(s.step.writes)
    if stages[0].step.source is None:
        raise ConfigError(f"pipeline: {stages[0].name} cannot start a pipeline (it has no source of its own)")
    attach(spark, [s.step for s in stages], where, ONE_PASS)
    sink = OnePass([s.step for s in stages])
    writer = (source(stages[0].step, where).writeStream.foreachBatch(sink).option("checkpointLocation", where)
              .queryName(ONE_PASS))
    writer = _trigger(writer, trigger)
    writer.fink_sink = sink  # type: ignore[attr-defined]
    return writer


#: the name of the one-pass query
ONE_PASS = "pipeline"


def _lane_configs(stages: list[Stage]):
    dist = next((s.config for s in stages if s.name == "distribution"), None)
    source = next((s.config for s in stages if s.name == "stream2raw"), None)
    if dist is None or not dist.realtime_filters():
        return None, None
    if source is None:
        raise ConfigError("pipeline: the real-time lane reads the survey's topic: it needs stream2raw in the plan")
    return dist, source


def realtime_master(stages: list[Stage], fink_cfg: FinkConfig) -> FinkConfig:
    """``fink_cfg`` with room in a local master for the real-time lane's tasks, if the plan has one
    (:func:`fink.stages.realtime.slots`: one per partition of the survey's topic)."""
    from fink.io import kafka
    from fink.stages import realtime

    dist, source = _lane_configs(stages)
    if dist is None:
        return fink_cfg
    partitions = 1
    if source.topic:
        try:
            partitions = sum(len(kafka.end_offsets(fink_cfg.kafka_bootstrap, t, timeout=10))
                             for t in source.topic.split(","))
        except Exception:  # noqa: BLE001 - a topic not there yet: the simulator creates it with one
            partitions = 1
    master = realtime.slots(fink_cfg.spark_master, partitions, fink_cfg.spark_conf.get("spark.cores.max"))
    return dataclasses.replace(fink_cfg, spark_master=master)


def realtime_lane(spark: "SparkSession", stages: list[Stage], fink_cfg: FinkConfig) -> "DataStreamWriter | None":
    """The unstarted writer of the real-time lane (:mod:`fink.stages.realtime`) of distribution's
    filters that ask for it, reading stream2raw's topic with raw2science's cuts; None if none does."""
    from fink.stages import realtime

    dist, source = _lane_configs(stages)
    if dist is None:
        return None
    science = next((s.config for s in stages if s.name == "raw2science"), None)
    cuts = science.quality_cuts() if science is not None else None
    where = source.description().data_uri(fink_cfg, "checkpoints", "realtime")
    return realtime.build(spark, dist, source, fink_cfg, where, cuts)


def reconcile(spark: "SparkSession", stage: Stage, progress: list[dict], fink_cfg: FinkConfig) -> dict[str, Any]:
    """The stage's own accounts of a run (each has ``balanced``)."""
    module, p = _module(stage.name), stage.config.paths(fink_cfg)
    if stage.name == "stream2raw":
        unread = module.unread(spark, stage.config, fink_cfg.kafka_bootstrap, stage.checkpoint or p["checkpoint"])
        return module.reconcile(spark, progress, p["raw"], unread)
    if stage.name == "raw2science":
        return module.reconcile(spark, progress, p["science"])
    if stage.name == "distribution":
        return module.reconcile(progress, stage.sink)
    return module.reconcile(progress, stage.sink.written)


def flow(totals: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Alerts in and out of each stage, from the stages' accounts (see :func:`reconcile`)."""
    keys = {"stream2raw": ("messages", "archived"), "raw2science": ("alerts", "written"),
            "distribution": ("alerts", "selected"), "archive": ("alerts", "archived")}
    out = {}
    for name, t in totals.items():
        k_in, k_out = keys[name]
        out[name] = {"in": int(t.get(k_in) or 0), "out": int(t.get(k_out) or 0)}
        for extra in ("quarantined", "rejected", "lost"):
            if extra in t:
                out[name][extra] = int(t[extra] or 0)
    return out
