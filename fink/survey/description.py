"""What differs between surveys, held as data: one description per survey, read by every stage.

A description (``fink/data/surveys/<name>.yaml``, or any YAML file of the same keys) says
how the survey's messages are framed on Kafka, where its schemas come from, which fields
identify an alert and its object, which give the time, the band, the position and the
photometry, which hold the history and the cutouts, the default quality cuts and the
topic naming. Stage code asks the description; it never tests a survey's name, so a third
survey is a new YAML file.

Notes
-----
Paths are dotted field paths into the alert record (``diaSource.midpointMjdTai``): the
same strings serve as Spark column paths and, through :func:`get_path`, on decoded dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any

from fink.config import ConfigError, Validated

#: how messages are framed on Kafka -> what that means (fink.survey.wire holds the codecs)
WIRE_FORMATS = {
    "container": "one Avro Object Container File per message, the writer schema in its header",
    "confluent": "schemaless Avro after a zero byte and a 4-byte big-endian schema id (Confluent wire format)",
}

#: where a survey's schemas come from
SCHEMA_SOURCES = ("package", "lsst-alert-packet")


#: Fink's names that alerts of every survey carry when they have the column behind them (the
#: community client displays ``cdsxmatch``); a survey's ``fink_names`` add to them
FINK_NAMES = {"cdsxmatch": {"column": "xm_type", "missing": "Unknown"}}


@dataclasses.dataclass(frozen=True)
class Survey(Validated):
    """One survey's description (the keys of ``fink/data/surveys/<name>.yaml``).

    Parameters
    ----------
    name, description
        Short name (``ztf``, ``rubin``) and a line for people.
    wire
        A key of :data:`WIRE_FORMATS`.
    record_names
        Names the writer schema's alert record may have (the last dotted part is compared).
    schemas
        ``{"source": "package"}`` (``fink/data/schemas/<name>/<version>.avsc``) or
        ``{"source": "lsst-alert-packet", "min_id": 700}`` (ids ``MAJOR*100+MINOR``).
    alert_id, alert_id_check
        The alert's identity; an optional second path that must hold the same value.
    alert_id_min
        The smallest alert id the survey issues (ZTF's candids are positive; Rubin's ids may
        be negative: the smallest 64-bit integer), below which an alert is set aside as
        ``bad_identifier``.
    object_id
        Paths of the object's identity, the first one set wins.
    time
        ``{"path": ..., "to_jd": offset}``: the observation time and what turns it into a
        Julian date (0 for a JD, 2400000.5 for an MJD).
    band, ra, dec
        Paths of the band (filter) and the position in degrees.
    photometry
        ``{"kind": "magnitude" | "flux", "value": path, "error": path}``.
    history, cutouts
        The alert's history arrays and its image cutouts (top-level fields).
    cuts
        Default quality cuts: name -> Spark SQL condition that keeps an alert.
    modules
        The built-in science modules on this survey's columns, by dotted path, in order
        (``builtin`` in raw2science's module list).
    filters, tags
        Distribution's default topics (topic -> filter) and the archive's default class
        tags (tag -> filter), by dotted path.
    table, keys
        The archive's main HBase table, and the fields (or Spark SQL expressions) keying its
        rows: ``object_id``, ``time``, ``alert_id``, ``ra``, ``dec`` (:class:`fink.io.hbase.Keys`).
    topic, topic_pattern
        The survey's topic naming (``{night}`` is ``YYYYMMDD``) and a regex of its topics.
    simulator
        ``{"generator": "module:function", "schema_version": default, "versions": [...]}``:
        the function writing a simulated night (:class:`fink.sim.Night`, a version) as
        wire messages, and the versions it can write.
    fink_names
        Fink's name of a column -> ``{"column": <this broker's column>, "missing": <value when
        null>}``, for the columns this broker computes under other names (Fink's filters read
        ``cdsxmatch``; the cross-match module writes ``xm_type``).
    folder
        Where the stages keep this survey's archives under ``data_dir`` ("" for the root),
        so that two surveys run side by side in one deployment.
    """

    name: str = ""
    description: str = ""
    wire: str = "container"
    record_names: list = dataclasses.field(default_factory=list)
    schemas: dict = dataclasses.field(default_factory=dict)
    alert_id: str = ""
    alert_id_check: str = ""
    alert_id_min: int = -(2 ** 63)
    object_id: list = dataclasses.field(default_factory=list)
    time: dict = dataclasses.field(default_factory=dict)
    band: str = ""
    ra: str = ""
    dec: str = ""
    photometry: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)
    cutouts: list = dataclasses.field(default_factory=list)
    cuts: dict = dataclasses.field(default_factory=dict)
    modules: list = dataclasses.field(default_factory=list)
    filters: dict = dataclasses.field(default_factory=dict)
    tags: dict = dataclasses.field(default_factory=dict)
    table: str = ""
    keys: dict = dataclasses.field(default_factory=dict)
    topic: str = ""
    topic_pattern: str = ""
    folder: str = ""
    fink_names: dict = dataclasses.field(default_factory=dict)
    exposure: list = dataclasses.field(default_factory=list)
    simulator: dict = dataclasses.field(default_factory=dict)

    def validate(self, source: str = "configuration") -> None:
        if not self.name or not self.alert_id or not self.object_id or not self.band or not self.ra or not self.dec:
            raise ConfigError(f"{source}: a survey needs name, alert_id, object_id, band, ra and dec")
        if self.wire not in WIRE_FORMATS:
            raise ConfigError(f"{source}: wire {self.wire!r} is not one of {', '.join(WIRE_FORMATS)}")
        if self.schemas.get("source") not in SCHEMA_SOURCES:
            raise ConfigError(f"{source}: schemas.source must be one of {', '.join(SCHEMA_SOURCES)}, "
                              f"got {self.schemas.get('source')!r}")
        if not isinstance(self.time.get("path"), str) or not isinstance(self.time.get("to_jd", 0.0), int | float):
            raise ConfigError(f"{source}: time must be {{path: <field path>, to_jd: <offset to a Julian date>}}")
        if self.photometry.get("kind") not in ("magnitude", "flux"):
            raise ConfigError(f"{source}: photometry.kind must be 'magnitude' or 'flux'")
        for name, entry in self.fink_names.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("column"), str) or set(entry) - {"column",
                                                                                                        "missing"}:
                raise ConfigError(f"{source}: fink_names['{name}'] must be {{column: <column>, missing: <value>}}, "
                                  f"got {entry!r}")
        if "{night}" not in self.topic:
            raise ConfigError(f"{source}: topic must contain '{{night}}' (e.g. ztf_{{night}}_programid1)")

    def fink_columns(self) -> dict[str, dict[str, Any]]:
        """Fink's name -> ``{"column", "missing"}``: :data:`FINK_NAMES` and this survey's ``fink_names``."""
        return {**FINK_NAMES, **self.fink_names}

    def required_fields(self) -> set[str]:
        """The top-level fields an alert schema of this survey must have (identities and time)."""
        paths = [self.alert_id, self.alert_id_check, self.time["path"], *self.object_id]
        return {p.split(".")[0] for p in paths if p}

    # -- reading a decoded alert (a dict) ----------------------------------------------

    def alert_key(self, alert: dict[str, Any]) -> Any:
        """The alert's identity (``candid``, ``diaSourceId``), or None."""
        return get_path(alert, self.alert_id)

    def object_key(self, alert: dict[str, Any]) -> Any:
        """The object's identity: the first of :attr:`object_id` that is set (not null, 0 or "")."""
        for path in self.object_id:
            value = get_path(alert, path)
            if value not in (None, 0, ""):
                return value
        return None

    def jd(self, alert: dict[str, Any]) -> float | None:
        """The observation's Julian date, or None when the field is missing or not a number."""
        value = get_path(alert, self.time["path"])
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            return None
        return float(value) + float(self.time.get("to_jd", 0.0))

    def topic_for(self, night: str) -> str:
        """The survey's topic of a night (``YYYYMMDD``)."""
        return self.topic.format(night=night)

    def data_uri(self, fink_cfg: Any, *parts: str) -> str:
        """A location under ``fink_cfg``'s archive root and this survey's ``folder``."""
        return fink_cfg.data_uri(*[p for p in (self.folder, *parts) if p])

    def module_paths(self, modules: list[str]) -> list[str]:
        """``modules`` with each ``builtin`` entry replaced by this survey's built-in modules."""
        return [p for m in modules for p in (self.modules if m == "builtin" else [m])]


class OfSurvey:
    """For a stage's configuration with a ``survey`` field (a shipped name or a description file)."""

    survey: str

    def description(self) -> Survey:
        """The survey's description (:func:`load`)."""
        return load(self.survey)


def get_path(record: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a nested dict, or None where a part is missing."""
    for part in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def detect(alert: dict[str, Any]) -> Survey:
    """The shipped survey whose identity and time fields a decoded alert has."""
    for name in shipped():
        survey = load(name)
        if survey.required_fields() <= set(alert) and survey.alert_key(alert) is not None:
            return survey
    raise ConfigError(f"an alert with fields {sorted(alert)[:8]}... matches no shipped survey ({', '.join(shipped())})")


def shipped() -> tuple[str, ...]:
    """The names of the descriptions shipped with fink."""
    root = resources.files("fink") / "data" / "surveys"
    return tuple(sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")))


@functools.cache
def load(name_or_path: str = "ztf") -> Survey:
    """A shipped description by name (``ztf``, ``rubin``), or one read from a YAML file path."""
    if name_or_path in shipped():
        path = Path(str(resources.files("fink") / "data" / "surveys" / f"{name_or_path}.yaml"))
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise ConfigError(f"survey {name_or_path!r}: not a shipped survey ({', '.join(shipped())}) "
                              "nor a YAML description file")
    return Survey.from_yaml(path)
