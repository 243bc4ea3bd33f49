"""Rubin alerts from the simulated night: the same objects and epochs, in Rubin's schema.

:func:`fink.sim.generator.generate_night` draws a night of objects (with its truth
table); this module writes each of its alerts as Rubin would send it: a ``diaSource`` with
difference-image PSF fluxes in nJy, ``prvDiaSources`` (past detections) and
``prvDiaForcedSources`` (forced photometry at every past visit), a ``diaObject``, an
``ssSource`` for moving objects, the three cutouts, framed in the Confluent wire format
with the schema id of the chosen version. Same seed, same bytes.

Notes
-----
Fluxes come from the ZTF-like magnitudes through the AB zero point of nJy (31.4), so a
light curve has the same shape in both surveys. Fields the simulation has no meaning for
are null where the schema allows it, zero otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from fink.sim.generator import Night
from fink.survey import description as surveys
from fink.survey import wire

#: the AB magnitude of 1 nJy
NJY_ZP = 31.4
BANDS = {1: "g", 2: "r"}
SECONDS_PER_DAY = 86400.0


def _njy(mag: float) -> float:
    return float(10 ** (-0.4 * (mag - NJY_ZP)))


def _object_number(object_id: str) -> int:
    """A stable 63-bit diaObjectId (or ssObjectId) for a ZTF-like object name."""
    return int.from_bytes(hashlib.sha256(object_id.encode()).digest()[:8], "big") >> 1


def _blank(schema: Any, named: dict[str, Any]) -> Any:
    """The value a field holds when the simulation has nothing for it: null, or the type's zero."""
    if isinstance(schema, list):
        return None if "null" in schema else _blank(schema[0], named)
    if isinstance(schema, str):
        if schema in named:
            return _blank(named[schema], named)
        return {"long": 0, "int": 0, "float": 0.0, "double": 0.0, "boolean": False, "string": "", "bytes": b""}[schema]
    if schema.get("type") == "record":
        return {f["name"]: _blank(f["type"], named) for f in schema["fields"]}
    if schema.get("type") == "array":
        return []
    return _blank(schema["type"], named)


def _record_schemas(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every named record of a parsed schema, by full and short name."""
    named: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                named[node["name"]] = node
                named[node["name"].rsplit(".", 1)[-1]] = node
                for f in node["fields"]:
                    walk(f["type"])
            elif node.get("type") == "array":
                walk(node["items"])

    walk(schema)
    return named


class RubinWriter:
    """Write simulated ZTF-like alerts as Rubin alerts of one schema id (default: 10.0)."""

    def __init__(self, schema_id: int = 1000, resolver: wire.SchemaResolver | None = None):
        self.resolver = resolver or wire.SchemaResolver(surveys.load("rubin"))
        self.schema_id = schema_id
        self.schema = self.resolver.schema(schema_id)
        self.named = _record_schemas(self.schema)
        self.fields = {name: [f["name"] for f in rec["fields"]] for name, rec in self.named.items()}

    def _fill(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        rec = self.named[name]
        return {f["name"]: values[f["name"]] if f["name"] in values else _blank(f["type"], self.named)
                for f in rec["fields"]}

    def _source(self, c: dict[str, Any], object_number: int, sso: bool, visit: int) -> dict[str, Any]:
        """A diaSource from a ZTF-like candidate (a detection)."""
        mjd = c["jd"] - 2400000.5
        sign = 1.0 if c.get("isdiffpos") in ("t", "1") else -1.0
        flux = sign * _njy(c["magpsf"])
        err = abs(flux) * c["sigmapsf"] / 1.0857
        values = {
            "diaSourceId": c["candid"], "visit": visit, "detector": int(c.get("rcid") or 0),
            "diaObjectId": None if sso else object_number, "ssObjectId": object_number if sso else None,
            "midpointMjdTai": mjd, "ra": c["ra"], "dec": c["dec"], "raErr": 2e-5, "decErr": 2e-5,
            "x": float(c.get("xpos") or 0.0), "y": float(c.get("ypos") or 0.0),
            "psfFlux": flux, "psfFluxErr": err, "snr": abs(flux) / err if err else None,
            "apFlux": flux, "apFluxErr": err * 1.1,
            "scienceFlux": flux + _njy(c.get("magnr") or 22.0), "scienceFluxErr": err,
            "band": BANDS.get(c["fid"], "i"), "reliability": c.get("rb"),
            "isDipole": bool((c.get("nbad") or 0) > 0), "pixelFlags_bad": bool((c.get("nbad") or 0) > 0),
            "timeProcessedMjdTai": mjd + 60.0 / SECONDS_PER_DAY,
        }
        return self._fill("diaSource", values)

    def _forced(self, h: dict[str, Any], object_number: int, ra: float, dec: float, visit: int) -> dict[str, Any]:
        """A diaForcedSource from a ZTF-like forced-photometry point (``fp_hists``): DN -> nJy."""
        to_njy = 10 ** (-0.4 * (h["magzpsci"] - NJY_ZP))
        mjd = h["jd"] - 2400000.5
        values = {"diaForcedSourceId": int(h["pid"]) * 1000 + object_number % 1000, "diaObjectId": object_number,
                  "ra": ra, "dec": dec, "visit": visit, "detector": int(h.get("rcid") or 0),
                  "psfFlux": h["forcediffimflux"] * to_njy, "psfFluxErr": h["forcediffimfluxunc"] * to_njy,
                  "midpointMjdTai": mjd, "band": BANDS.get(h["fid"], "i"),
                  "timeProcessedMjdTai": mjd + 60.0 / SECONDS_PER_DAY}
        return self._fill("diaForcedSource", values)

    def record(self, alert: dict[str, Any]) -> dict[str, Any]:
        """One simulated ZTF-like alert as a Rubin alert record."""
        c = alert["candidate"]
        sso = c.get("ssnamenr") is not None
        number = _object_number(alert["objectId"] if not sso else f"sso{c['ssnamenr']}")
        visit = int(c["pid"])
        source = self._source(c, number, sso, visit)
        past = [p for p in (alert.get("prv_candidates") or []) if p.get("candid")]
        prv = [self._source(p, number, sso, int(p["pid"])) for p in past]
        forced = [self._forced(h, number, c["ra"], c["dec"], int(h["pid"])) for h in (alert.get("fp_hists") or [])]
        values: dict[str, Any] = {"diaSourceId": c["candid"], "alertId": c["candid"], "diaSource": source,
                                  "prvDiaSources": prv or None, "prvDiaForcedSources": forced or None}
        if not sso:
            fluxes = [s["psfFlux"] for s in (*prv, source)]
            values["diaObject"] = self._fill("diaObject", {
                "diaObjectId": number, "validityStartMjdTai": source["midpointMjdTai"], "ra": c["ra"],
                "dec": c["dec"], "nDiaSources": len(fluxes)})
        elif "ssSource" in self.fields["alert"]:
            values["ssSource"] = self._fill("ssSource", {"diaSourceId": c["candid"], "ssObjectId": number})
        for which in ("Difference", "Science", "Template"):
            stamp = alert.get(f"cutout{which}")
            values[f"cutout{which}"] = stamp["stampData"] if stamp else None
        return self._fill("alert", values)

    def message(self, alert: dict[str, Any]) -> bytes:
        """One simulated alert in the wire format."""
        return wire.encode(self.record(alert), self.schema_id, self.schema)


def messages(night: Night, schema_id: int = 1000) -> Iterator[bytes]:
    """The night's alerts as Rubin sends them, in time order."""
    writer = RubinWriter(schema_id)
    for alert in night.alerts:
        yield writer.message(alert)


def wire_messages(night: Night, version: str = "10.0") -> Iterator[bytes]:
    """The night as Rubin sends it, schema ``major.minor`` (the survey description's ``simulator.generator``)."""
    major, _, minor = version.partition(".")
    return messages(night, wire.schema_id_of(int(major), int(minor or 0)))


def flux_to_mag(flux_njy: np.ndarray) -> np.ndarray:
    """AB magnitudes of positive fluxes in nJy (NaN elsewhere)."""
    flux = np.asarray(flux_njy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, NJY_ZP - 2.5 * np.log10(flux), np.nan)
