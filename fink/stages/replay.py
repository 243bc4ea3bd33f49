"""Replays: past alerts of the archives to a topic, resumable, each selected alert sent once.

``fink replay --nights 20261101:20261130 [--where "<SQL>"] --topic T [--user U]`` (or
:func:`run` in a notebook) reads the science archive's nights joined to their raw alerts,
keeps the rows where the SQL condition holds (over the alert's and the science modules'
columns), and sends them to ``T`` in the distribution stage's format (what fink-client
reads), with a progress bar, alerts/s and an ETA.

Notes
-----
A replay is the distribution stage's step (:func:`fink.stages.distribution.step`, one filter
that takes every row) as a streaming query of its own over the chosen nights, with
``availableNow``: its checkpoint is named after the topic, the nights, the condition and the
survey, so the same command finds it again. Each micro-batch's messages go in one Kafka
transaction with the batch's record in the delivery log; interrupted anywhere (Ctrl-C, kill
-9), the next run takes up from the checkpoint, delivers a sealed outbox Kafka had not
committed, and leaves out a batch Kafka had: the topic ends with every selected alert once.
Before its transaction each batch's count per night is written beside the checkpoint
(``nights/<batch>.json``); the alerts sent per night are those of the batches the delivery
log holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import ConfigError, FinkConfig, Validated, fink_home, local_path
from fink.stages.distribution import DistributionConfig, step
from fink.survey import description as surveys

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

QUERY_NAME = "replay"
_NIGHTS = re.compile(r"^(\d{8})(?::(\d{8}))?$")


@dataclasses.dataclass(frozen=True)
class ReplayConfig(surveys.OfSurvey, Validated):
    """What to replay, and where to.

    Parameters
    ----------
    nights
        ``YYYYMMDD`` or ``YYYYMMDD:YYYYMMDD`` (both included).
    topic
        The topic to fill (created if absent, with its ``_schema`` topic).
    where
        A Spark SQL condition over the science rows' columns (``candidate.magpsf < 18 AND
        snia_prob > 0.5``); empty: every alert of the nights.
    user
        Granted the topic when given (a user of ``fink users``).
    cutouts
        False: the alerts without their three cutouts.
    max_files_per_trigger
        Science archive files per micro-batch.
    science_path, checkpoint
        Empty: the survey's science archive under ``data_dir``; the checkpoint under
        ``checkpoints/replay/`` named after the replay (:meth:`name`).
    """

    nights: str = ""
    topic: str = ""
    where: str = ""
    user: str = ""
    cutouts: bool = True
    max_files_per_trigger: int = 8
    partitions: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    science_path: str = ""
    checkpoint: str = ""
    survey: str = "ztf"

    def validate(self, source: str = "configuration") -> None:
        found = _NIGHTS.match(self.nights or "")
        if not found or (found.group(2) and found.group(2) < found.group(1)):
            raise ConfigError(f"{source}: nights must be YYYYMMDD or YYYYMMDD:YYYYMMDD (first <= last), "
                              f"got {self.nights!r}")
        if not self.topic:
            raise ConfigError(f"{source}: a replay needs a topic")
        if self.max_files_per_trigger < 1:
            raise ConfigError(f"{source}: max_files_per_trigger >= 1")

    def span(self) -> tuple[str, str]:
        first, last = _NIGHTS.match(self.nights).groups()  # type: ignore[union-attr]
        return first, last or first

    def name(self) -> str:
        """The replay's identity: its topic and a digest of what it selects."""
        what = json.dumps([self.span(), self.where.strip(), self.survey, self.cutouts])
        return f"{self.topic}-{hashlib.sha256(what.encode()).hexdigest()[:12]}"

    def distribution(self, fink_cfg: FinkConfig) -> DistributionConfig:
        """The distribution stage that sends the replay: one topic, every row it is given."""
        survey = self.description()
        return DistributionConfig(
            filters={self.topic: "fink.filters.builtin:everything"},
            topic_options={} if self.cutouts else {self.topic: {"cutouts": False}},
            partitions=self.partitions, retention_ms=self.retention_ms,
            max_files_per_trigger=self.max_files_per_trigger, survey=self.survey, watchlists="none",
            science_path=self.science_path or survey.data_uri(fink_cfg, "science"),
            checkpoint=self.checkpoint or survey.data_uri(fink_cfg, "checkpoints", "replay", self.name()))


def build(spark: "SparkSession", replay_cfg: ReplayConfig, fink_cfg: FinkConfig) -> Any:
    """The replay's unstarted writer (run it with ``availableNow``); its ``fink_replay`` holds the
    checkpoint and the topic's sink. A bad condition is raised here, naming the columns."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    from fink.stages.step import standalone

    dist = replay_cfg.distribution(fink_cfg)
    checkpoint = dist.checkpoint
    inner = step(spark, dist, fink_cfg, checkpoint=checkpoint, from_files=True)
    first, last = replay_cfg.span()
    folder = local_path(checkpoint)
    if folder is None:
        raise ConfigError(f"replay: the checkpoint {checkpoint} must be a local folder (its per-night counts)")
    (folder / "nights").mkdir(parents=True, exist_ok=True)

    def expand(batch):
        rows = inner.expand(batch)
        return rows.where(condition) if condition is not None else rows

    condition = None
    if replay_cfg.where.strip():
        try:  # the condition against the rows' columns, before anything runs
            condition = F.expr(replay_cfg.where)
            spark.createDataFrame([], inner_schema(spark, dist)).where(condition).schema  # noqa: B018
        except AnalysisException as exc:
            raise ConfigError(f"replay: --where {replay_cfg.where!r}: {str(exc).splitlines()[0]}") from exc

    def counted(frame, batch_id, rows):
        counts = {r["night"]: int(r["count"]) for r in frame.groupBy("night").count().collect()}
        tmp = folder / "nights" / f".{batch_id}.tmp"
        tmp.write_text(json.dumps(counts))
        tmp.replace(folder / "nights" / f"{batch_id}.json")
        return inner.run(frame, batch_id, sum(counts.values()))

    replay = dataclasses.replace(
        inner, name=QUERY_NAME, run=counted, expand=expand,
        source=lambda: inner.source().where(F.col("night").between(first, last)))
    writer = standalone(replay, checkpoint)
    writer.fink_replay = {"checkpoint": checkpoint, "sink": inner.sink}  # type: ignore[attr-defined]
    return writer


def inner_schema(spark: "SparkSession", dist: DistributionConfig):
    from fink.stages.science_stream import science_schema

    return science_schema(spark, dist.science_path, None, dist.survey)


def selected(spark: "SparkSession", replay_cfg: ReplayConfig, fink_cfg: FinkConfig) -> dict[str, int]:
    """Night -> alerts the replay selects (a batch query over the archives)."""
    from pyspark.sql import functions as F

    from fink.stages.science_table import read_science

    dist = replay_cfg.distribution(fink_cfg)
    first, last = replay_cfg.span()
    rows = read_science(spark, dist.science_path).where(F.col("night").between(first, last))
    if replay_cfg.where.strip():
        rows = rows.where(F.expr(replay_cfg.where))
    return {r["night"]: int(r["count"]) for r in rows.groupBy("night").count().orderBy("night").collect()}


def sent(checkpoint: str, sink: Any) -> dict[str, int]:
    """Night -> alerts the replay's committed transactions hold (its batches' counts that the
    delivery log records as delivered)."""
    folder = local_path(checkpoint)
    out: dict[str, int] = {}
    for path in sorted((folder / "nights").glob("[0-9]*.json"), key=lambda p: int(p.stem)) if folder else []:
        if sink.publisher is not None and sink.publisher.delivered(int(path.stem)):
            for night, n in json.loads(path.read_text()).items():
                out[night] = out.get(night, 0) + n
    return dict(sorted(out.items()))


def run(spark: "SparkSession", replay_cfg: ReplayConfig, fink_cfg: FinkConfig, progress: bool = True,
        duration: float = 0.0) -> dict[str, Any]:
    """Run (or take up) the replay to its end; return and record its account: alerts selected
    and sent per night, seconds, alerts/s (``$FINK_HOME/reports/replay/<name>.json``)."""
    from fink.runtime import streaming

    wanted = selected(spark, replay_cfg, fink_cfg)
    total = sum(wanted.values())
    writer = build(spark, replay_cfg, fink_cfg)
    if replay_cfg.user:
        from fink.io import access

        access.grant(fink_cfg.kafka_bootstrap, replay_cfg.user, replay_cfg.topic)
    state = writer.fink_replay
    sink = state["sink"]
    before = 0
    if (local_path(state["checkpoint"]) / "metadata").exists():  # an earlier run's: what it already sent
        sink._publisher(spark)
        before = sum(sent(state["checkpoint"], sink).values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=before, desc=f"replay -> {replay_cfg.topic}", unit="alert", smoothing=0.1)
    t0 = time.monotonic()

    def show(_queries):
        if bar is not None:
            done = before + sum(sum(v.values()) for v in list(sink.delivered.values()) if v)
            bar.update(done - bar.n)

    query = streaming.start(writer.trigger(availableNow=True), QUERY_NAME)
    try:
        try:
            reason = streaming.run_until([query], duration=duration, poll=0.5, on_poll=show).reason
        except KeyboardInterrupt:  # Ctrl-C: the query stopped at a batch boundary; its last transaction ends
            reason = "interrupted"
        sink.flush()
        show(None)
    finally:
        if bar is not None:
            bar.close()
    done = sent(state["checkpoint"], sink)
    seconds = time.monotonic() - t0
    account = {"replay": replay_cfg.name(), "topic": replay_cfg.topic, "nights": replay_cfg.nights,
               "where": replay_cfg.where,
               "selected": wanted, "sent": done, "complete": done == wanted and reason == "finished",
               "resumed_from": before, "seconds": round(seconds, 1),
               "alerts_per_s": round((sum(done.values()) - before) / seconds, 1) if seconds else None,
               "stopped_because": reason, "checkpoint": state["checkpoint"]}
    path = report_path(replay_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(account, indent=1))
    return account


def table(account: dict[str, Any]) -> str:
    """The account's nights as text: selected, sent, and what is missing."""
    lines = [f"{'night':10s} {'selected':>9s} {'sent':>9s}"]
    for night in sorted(set(account["selected"]) | set(account["sent"])):
        a, b = account["selected"].get(night, 0), account["sent"].get(night, 0)
        lines.append(f"{night:10s} {a:9d} {b:9d}" + ("" if a == b else f"   {a - b} not sent"))
    lines.append(f"{'total':10s} {sum(account['selected'].values()):9d} {sum(account['sent'].values()):9d}")
    return "\n".join(lines)


def report_path(replay_cfg: ReplayConfig) -> Path:
    return fink_home() / "reports" / "replay" / f"{replay_cfg.name()}.json"
