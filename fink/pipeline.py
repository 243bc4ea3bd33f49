"""The four stages as one service: their streaming queries in one Spark session.

Each stage can run as its own service (its own notebook, process and Spark driver); on a small
machine four drivers compete for the same cores and memory. ``notebooks/pipeline.ipynb`` runs
stream2raw, raw2science, distribution and archive as four queries of one session instead,
each in its own FAIR scheduler pool (:func:`fink.streaming.start`), with the same
checkpoints and outputs as the separate services: a deployment may switch between the two.

With a processing-time trigger the queries run side by side; with ``availableNow`` they run
one after the other, each catching up with what the one before wrote.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fink.config import FinkConfig
from fink.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamWriter

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
    """One stage of the pipeline: its configuration, and once built its writer and sink."""

    name: str
    config: Any
    writer: "DataStreamWriter | None" = None

    @property
    def query_name(self) -> str:
        return _module(self.name).QUERY_NAME

    @property
    def sink(self) -> Any:
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


def paths(stages: list[Stage], fink: FinkConfig) -> dict[str, dict[str, str]]:
    return {s.name: s.config.paths(fink) for s in stages}


def input_topic(stages: list[Stage], default: str) -> str:
    """The (first) topic stream2raw reads in this plan: where a simulator should publish."""
    s2r = next((s.config for s in stages if s.name == "stream2raw"), None)
    return (s2r.topic.split(",")[0] if s2r is not None and s2r.topic else "") or default


def build(spark: "SparkSession", stages: list[Stage], fink: FinkConfig, trigger: str) -> list[Stage]:
    """Each stage's unstarted writer, with ``trigger`` (``availableNow`` or ``"<N> seconds"``).

    Loading errors (filters, modules, tables, topics) are raised here, before any query starts.
    distribution and archive take the science archive's schema from this plan's raw2science
    (its modules), not from the built-in modules, while the archive is still empty.
    """
    if trigger != "availableNow" and not trigger.endswith("seconds"):
        raise ConfigError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
    producer = next((s.config for s in stages if s.name == "raw2science"), None)
    for s in stages:
        module = _module(s.name)
        writer = (module.build(spark, s.config, fink, producer) if s.name in ("distribution", "archive")
                  else module.build(spark, s.config, fink))
        s.writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(
            processingTime=trigger)  # trigger() returns the same writer: its fink_sink stays
    return stages


def reconcile(spark: "SparkSession", stage: Stage, progress: list[dict], fink: FinkConfig) -> dict[str, Any]:
    """The stage's own accounts of a run (each has ``balanced``)."""
    module, p = _module(stage.name), stage.config.paths(fink)
    if stage.name == "stream2raw":
        return module.reconcile(spark, progress, p["raw"])
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
        for extra in ("quarantined", "rejected"):
            if extra in t:
                out[name][extra] = int(t[extra] or 0)
    return out
