"""Replay alerts into Kafka in the survey's wire format, at a chosen pace, with chosen faults.

Sources: the generator (:mod:`fink.sim`), a folder of ``.avro`` files, one ``.avro``
file, or a ZTF night tarball. Messages are encoded before publishing starts, so the
publish loop only paces and sends bytes.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fink.config import ConfigError, Validated
from fink.io import kafka
from fink.log import logger
from fink.sim import NightConfig, faults, generate_night
from fink.sim.sources import read_messages
from fink.sim.stamp import PASS_OFFSET, Stamper
from fink.survey import description as surveys


@dataclasses.dataclass(frozen=True)
class SimulatorConfig(surveys.OfSurvey, Validated):
    """How to replay.

    Parameters
    ----------
    source
        ``generator``, or the path of a folder of ``.avro`` files, an ``.avro`` file or a ``.tar.gz``.
    topic
        Kafka topic; empty means ZTF's naming, ``ztf_<night>_programid1``.
    survey
        A shipped survey (``ztf``, ``rubin``) or a description file: what the generator
        writes, and the topic's default name.
    night, seed, n_objects, schema_version
        For the generator (``schema_version`` empty: the survey's default, ZTF 4.02, Rubin 10.0).
    rate
        Steady alerts per second; 0 means as fast as possible.
    burst
        If > 0, survey-like visits: ``burst`` alerts at once every ``visit_seconds``.
    count
        Stop after this many alerts (0: the whole source, once or with ``loop`` until ``duration``).
    duration
        Stop after this many seconds (0: no limit).
    loop
        Start the source again when it runs out.
    fresh_ids
        With ``loop``, each pass after the first adds ``pass * 10**15`` to every ``candid``
        (:mod:`fink.sim.stamp`), so the broker sees new alerts, not duplicates.
    first_pass
        Count passes from here (a replay continuing an earlier one gives ``first_pass`` =
        the earlier report's ``passes`` + 1, and its alerts are new too).
    faults
        Fraction of malformed messages of each kind (see :data:`fink.sim.faults.KINDS`),
        sent in addition to the good alerts.
    """

    source: str = "generator"
    topic: str = ""
    night: str = "20261127"
    seed: int = 42
    n_objects: int = 120
    schema_version: str = ""
    rate: float = 0.0
    burst: int = 0
    visit_seconds: float = 39.0
    count: int = 0
    duration: float = 0.0
    loop: bool = False
    fresh_ids: bool = True
    first_pass: int = 0
    faults: dict = dataclasses.field(default_factory=dict)
    survey: str = "ztf"

    def validate(self, source: str = "configuration") -> None:
        for kind, fraction in self.faults.items():
            if kind not in faults.KINDS:
                raise ConfigError(f"{source}: unknown fault kind '{kind}' (known: {', '.join(faults.KINDS)})")
            if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ConfigError(f"{source}: faults['{kind}'] must be a fraction in [0, 1], got {fraction!r}")
        if self.rate < 0 or self.burst < 0 or self.count < 0 or self.duration < 0 or self.first_pass < 0:
            raise ConfigError(f"{source}: rate, burst, count, duration and first_pass must not be negative")
        if self.rate and self.burst:
            raise ConfigError(f"{source}: choose a steady 'rate' or survey-like 'burst', not both")
        writes = self.description().simulator.get("versions", [])
        if self.schema_version and self.schema_version not in writes:
            raise ConfigError(f"{source}: the generator writes {self.survey} schema {' or '.join(writes)}, "
                              f"not {self.schema_version!r}")


    @property
    def version(self) -> str:
        """The schema version the generator writes."""
        return self.schema_version or self.description().simulator["schema_version"]

    @property
    def topic_name(self) -> str:
        return self.topic or self.description().topic_for(self.night)


def load_messages(config: SimulatorConfig, progress: bool = False) -> list[bytes]:
    """Encode (generator) or read (files) every message of the source, in order."""
    if config.source == "generator":
        night = generate_night(NightConfig(night=config.night, seed=config.seed, n_objects=config.n_objects))
        messages = _generator(config.description())(night, config.version)
        if progress:
            from tqdm.auto import tqdm

            messages = tqdm(messages, total=len(night.alerts), desc="encoding alerts", unit="alert")
        return list(messages)
    return list(read_messages(config.source))


def _generator(survey: surveys.Survey) -> Callable[..., Iterator[bytes]]:
    """The survey's generator function (``simulator.generator``, ``module:function``)."""
    import importlib

    module, _, name = survey.simulator["generator"].partition(":")
    return getattr(importlib.import_module(module), name)


def _plan(good: list[bytes], config: SimulatorConfig, fault_seed: int) -> list[tuple[str, bytes]]:
    """Interleave faults with the good alerts: after each alert, each kind with its probability."""
    rng = np.random.default_rng(fault_seed)
    plan: list[tuple[str, bytes]] = []
    for data in good:
        plan.append(("alert", data))
        for kind, fraction in sorted(config.faults.items()):
            if fraction and rng.random() < fraction:
                plan.append((kind, faults.make(kind, data, rng, config.survey)))
    return plan


def replay(config: SimulatorConfig, bootstrap: str, messages: list[bytes] | None = None, progress: bool = True,
           stop: Callable[[], bool] | None = None, fault_seed: int = 0) -> dict[str, Any]:
    """Publish the source to ``config.topic_name``; return what was sent and how fast.

    Returns
    -------
    dict
        ``alerts`` (good alerts sent), ``faults`` (per kind), ``messages``, ``bytes``,
        ``seconds``, ``alerts_per_s``, ``mb_per_s``, ``topic`` and ``stopped_because``.
    """
    from confluent_kafka import Producer

    good = messages if messages is not None else load_messages(config, progress)
    if not good:
        raise ConfigError(f"source {config.source!r} holds no alert")
    plan = _plan(good, config, fault_seed)
    topic = config.topic_name
    kafka.ensure_topic(bootstrap, topic)
    producer = Producer(kafka.client_config(bootstrap, **{
        "linger.ms": 20, "batch.size": 8 << 20, "queue.buffering.max.kbytes": 1 << 20,
        "queue.buffering.max.messages": 1_000_000, "message.max.bytes": 10 << 20, "acks": "all",
        "enable.idempotence": True, "compression.type": "none"}))
    errors: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))

    total = config.count or (None if config.loop else len(plan))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"-> {topic}", unit="msg", mininterval=0.5)
    sent: Counter[str] = Counter()
    nbytes, reason = 0, "source exhausted"
    t0 = time.perf_counter()
    i, passes = 0, config.first_pass
    stampers: dict[int, Stamper] = {}
    try:
        while True:
            if i == len(plan):
                if not config.loop:
                    break
                i, passes = 0, passes + 1
            kind, data = plan[i]
            if passes and kind == "alert" and config.fresh_ids:
                stamper = stampers.get(i) or stampers.setdefault(i, Stamper(data))
                data = stamper.copy(stamper.candid + passes * PASS_OFFSET)
            i += 1
            if config.count and sent["alert"] >= config.count and kind == "alert":
                reason = "count reached"
                break
            elapsed = time.perf_counter() - t0
            if config.duration and elapsed >= config.duration:
                reason = "duration reached"
                break
            if stop is not None and sent.total() % 500 == 0 and stop():
                reason = "stop requested"
                break
            if kind == "alert" and (config.rate or config.burst):
                n = sent["alert"]
                due = n / config.rate if config.rate else (n // config.burst) * config.visit_seconds
                if due > elapsed:
                    producer.poll(0)
                    time.sleep(due - elapsed)
            while True:
                try:
                    producer.produce(topic, value=data, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent[kind] += 1
            if i % 64 == 0:  # serve delivery callbacks without paying a poll per message
                producer.poll(0)
            nbytes += len(data)
            if bar is not None:
                bar.update(1)
    finally:
        remaining = producer.flush(120)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if errors or remaining:
        raise kafka.KafkaError(f"{len(errors) + remaining} message(s) to {topic!r} not delivered"
                               + (f": {errors[0]}" if errors else ""))
    report = {
        "topic": topic, "alerts": sent["alert"], "faults": {k: sent[k] for k in faults.KINDS if sent[k]},
        "messages": sent.total(), "bytes": nbytes, "seconds": round(seconds, 3),
        "alerts_per_s": round(sent["alert"] / seconds, 1) if seconds else None,
        "mb_per_s": round(nbytes / 1e6 / seconds, 2) if seconds else None, "stopped_because": reason,
        "passes": passes,
    }
    logger.info("simulator: %s", report)
    return report
