"""A deterministic ZTF-like night of alerts, with the truth about every object.

One night is drawn from a :class:`NightConfig`: a population of objects (type Ia-like and
core-collapse supernovae, RR Lyrae-like variables, AGN, moving solar-system objects and
bogus detections), each observed on a survey-like schedule over the previous
``history_days`` and one to three times tonight. Every epoch is measured once (flux,
noise, detection or upper limit), so an object's successive alerts share their history
exactly, as real ZTF alerts do. Each object draws from its own random stream
(``default_rng([seed, index])``): the same seed gives the same alerts, byte for byte.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fink.sim import cutouts, lightcurves
from fink.sim.catalogue import make_catalogue
from fink.sim.lightcurves import CLASSES
from fink.survey import avro
from fink.survey.avro import JD_UNIX_EPOCH

VISIT_SECONDS = 39.0  # ZTF: 30 s exposure + readout and slew
PUBLISHER = "fink.datasim (simulated ZTF-like alerts)"  # the data says so: kept as the sample night has it
ZP = {1: 26.32, 2: 26.20}  # photometric zero points (DN), g and r
LIMIT = {1: 20.6, 2: 20.4}  # median 5-sigma limiting magnitudes


@dataclass(frozen=True)
class NightConfig:
    """What to simulate: the night, the seed and the population.

    Parameters
    ----------
    night
        Observing night, ``YYYYMMDD`` (UTC date of its start).
    seed
        Same seed, same alerts.
    n_objects
        Objects drawn (each gives 0 to 3 alerts tonight).
    mix
        Fraction of each class (normalised).
    history_days
        Depth of ``prv_candidates`` and ``fp_hists``, as ZTF's 30 days.
    cadence_days
        Mean gap between two past visits of a field.
    cutouts
        Draw the three image stamps (most of the generator's time); without them the
        cutout fields are null, which is enough to train on light curves.
    """

    night: str = "20261127"
    seed: int = 42
    n_objects: int = 120
    mix: dict = field(default_factory=lambda: {"snia": 0.2, "sncc": 0.15, "varstar": 0.2, "agn": 0.15,
                                               "sso": 0.15, "bogus": 0.15})
    history_days: float = 30.0
    cadence_days: float = 2.5
    cutouts: bool = True

    @property
    def jd_start(self) -> float:
        """JD of the night's first exposure (03:00 UTC, evening twilight at Palomar)."""
        day = dt.datetime.strptime(self.night, "%Y%m%d").replace(tzinfo=dt.UTC)
        return JD_UNIX_EPOCH + (day.timestamp() + 3 * 3600) / 86400.0


@dataclass
class Night:
    """A simulated night: alert records in time order, and the truth table."""

    config: NightConfig
    alerts: list[dict[str, Any]]
    truth: list[dict[str, Any]]

    def messages(self, version: str = "4.02") -> Iterator[bytes]:
        """The alerts in ZTF's wire format (one container file each), in time order."""
        for record in self.alerts:
            yield avro.encode_container(conform(record, version), version)

    def truth_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.truth[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.truth)
        return buf.getvalue()

    def write_archive(self, folder: Path, version: str = "4.02") -> Path:
        """Write the night compactly: ``alerts.avro`` (one container, schema once, deflate),
        ``truth.csv``, ``catalogue.csv`` (:mod:`fink.sim.catalogue`) and ``night.json``.
        :func:`fink.sim.sources.read_messages` turns each
        record back into its own wire message, identical to :meth:`messages`."""
        import json

        import fastavro

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "alerts.avro"
        with open(path, "wb") as out:
            fastavro.writer(out, avro.parsed_schema(version), (conform(r, version) for r in self.alerts),
                            codec="deflate", sync_marker=avro.sync_marker(self.config.seed))
        (folder / "truth.csv").write_text(self.truth_csv())
        (folder / "catalogue.csv").write_text(make_catalogue(self.truth, self.config.seed))
        (folder / "night.json").write_text(json.dumps({**asdict(self.config), "schema_version": version,
                                                       "alerts": len(self.alerts)}, indent=1) + "\n")
        return path

    def write(self, folder: Path, version: str = "4.02") -> list[Path]:
        """Write ``<candid>.avro`` per alert, ``truth.csv`` and ``night.json``; return the alert files."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for record, data in zip(self.alerts, self.messages(version), strict=True):
            path = folder / f"{record['candid']}.avro"
            path.write_bytes(data)
            paths.append(path)
        (folder / "truth.csv").write_text(self.truth_csv())
        (folder / "catalogue.csv").write_text(make_catalogue(self.truth, self.config.seed))
        (folder / "night.json").write_text(json.dumps({**asdict(self.config), "schema_version": version,
                                                       "alerts": len(self.alerts)}, indent=1) + "\n")
        return paths


def wire_messages(night: Night, version: str = "4.02") -> Iterator[bytes]:
    """The night as ZTF sends it (the survey description's ``simulator.generator``)."""
    return night.messages(version)


def conform(record: dict[str, Any], version: str = "4.02") -> dict[str, Any]:
    """Shape a record to a schema version: keep its fields, drop the others (e.g. ``fp_hists`` for 3.x)."""
    names = {f["name"] for f in avro.load_schema(version)["fields"]}
    out = {k: v for k, v in record.items() if k in names}
    out["schemavsn"] = version
    return out


def _object_id(year: int, number: int) -> str:
    """ZTF-style identifier: 'ZTF', two digits of year, seven lowercase letters."""
    letters = []
    for _ in range(7):
        number, rem = divmod(number, 26)
        letters.append(chr(ord("a") + rem))
    return f"ZTF{year % 100:02d}{''.join(reversed(letters))}"


def _mag(flux: float, zp: float) -> float:
    return float(zp - 2.5 * np.log10(abs(flux)))


class _Object:
    """One simulated object: its class, position, light curve and measured epochs."""

    def __init__(self, night_cfg: NightConfig, index: int, kind: str):
        self.cfg, self.index, self.kind = night_cfg, index, kind
        self.rng = rng = np.random.default_rng([night_cfg.seed, index])
        t_night = night_cfg.jd_start
        self.lc = lightcurves.draw(kind, rng, t_night, night_cfg.history_days)
        self.ra = float(rng.uniform(0.0, 360.0))
        self.dec = float(np.degrees(np.arcsin(rng.uniform(-0.5, 1.0))))  # north of -30 deg
        self.field, self.rcid = int(rng.integers(250, 880)), int(rng.integers(0, 64))
        self.xpos, self.ypos = (float(v) for v in rng.uniform(40, 3030, 2))
        host_offset = rng.uniform(0.3, 2.5) if kind in ("snia", "sncc") else rng.uniform(0.02, 0.25)
        angle = rng.uniform(0, 2 * np.pi)
        self.ranr = self.ra + host_offset / 3600 * np.cos(angle) / max(np.cos(np.radians(self.dec)), 1e-3)
        self.decnr = self.dec + host_offset / 3600 * np.sin(angle)
        self.distnr = float(host_offset) if kind not in ("sso", "bogus") else float(rng.uniform(5, 30))
        # reference flux: the star or nucleus itself for variables, a faint host for supernovae
        host_mag = rng.uniform(19.5, 21.5)
        self.ref_mag = self.lc.ref_mag or {1: host_mag, 2: host_mag - 0.4}
        self.sgscore = float(rng.uniform(0.8, 1.0) if kind == "varstar" else rng.uniform(0.0, 0.3))
        if kind == "sso":
            speed, heading = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)  # deg/day
            self.motion = (speed * np.cos(heading), speed * np.sin(heading))
            self.ssnamenr = str(int(rng.integers(1000, 600000)))
        self.epochs = self._schedule()

    def _schedule(self) -> list[tuple[float, int]]:
        """(jd, fid) of every visit: past nights for persistent objects, then tonight."""
        cfg, rng = self.cfg, self.rng
        epochs = []
        if self.kind not in ("sso", "bogus"):
            t = cfg.jd_start - cfg.history_days + rng.uniform(0, cfg.cadence_days)
            while t < cfg.jd_start - 0.5:
                night_start = np.floor(t - 0.625) + 0.625  # 03:00 UTC of that night
                for fid in (1, 2):
                    k = int(rng.integers(0, 700))
                    epochs.append((float(night_start + k * VISIT_SECONDS / 86400), fid))
                t += rng.exponential(cfg.cadence_days) + 1.0
        n_tonight = 1 if self.kind == "bogus" else int(rng.integers(1, 4))
        visits = np.sort(rng.choice(700, size=n_tonight, replace=False))
        for j, k in enumerate(visits):
            epochs.append((float(cfg.jd_start + k * VISIT_SECONDS / 86400), 1 + (j + self.index) % 2))
        return sorted(epochs)

    def position(self, jd: float) -> tuple[float, float]:
        if self.kind != "sso":
            return self.ra, self.dec
        dt_days = jd - self.cfg.jd_start
        return (self.ra + self.motion[0] * dt_days / max(np.cos(np.radians(self.dec)), 1e-3)) % 360.0, \
            float(np.clip(self.dec + self.motion[1] * dt_days, -89.9, 89.9))


def _night_id(jd: float) -> int:
    return int(jd - 2458000.5) + 1000


def _pid(jd: float, rcid: int) -> int:
    frac = jd - np.floor(jd - 0.5) - 0.5
    return _night_id(jd) * 10**9 + int(frac * 1e5) * 10**4 + rcid


def _measure(obj: _Object, jd: float, fid: int) -> dict[str, Any]:
    """One visit of one object: photometry, detection and the candidate fields."""
    rng = obj.rng
    zp = ZP[fid] + rng.normal(0, 0.03)
    lim = LIMIT[fid] + rng.normal(0, 0.3)
    sigma = 10 ** (0.4 * (zp - lim)) / 5.0
    model = float(obj.lc.mag(np.array([jd]), fid)[0])
    total = 10 ** (0.4 * (zp - model)) if np.isfinite(model) else 0.0
    ref = 10 ** (0.4 * (zp - obj.ref_mag[fid])) if obj.lc.ref_mag else 0.0
    flux = total - ref + rng.normal(0, sigma)
    if obj.kind == "bogus":  # bright enough to pass the detection threshold, but not real
        flux = max(abs(flux), 10 ** (0.4 * (zp - model)))
    detected = abs(flux) >= 5 * sigma
    pid = _pid(jd, obj.rcid)
    ra, dec = obj.position(jd)
    m = {"jd": jd, "fid": fid, "pid": pid, "zp": zp, "lim": lim, "sigma": sigma, "flux": flux,
         "detected": bool(detected), "ra": ra, "dec": dec, "ref_flux": ref,
         "fwhm": float(rng.uniform(1.6, 3.2) * (1.6 if obj.kind == "bogus" else 1.0)),
         "sky": float(rng.uniform(120, 320)), "seeing": float(rng.uniform(1.6, 3.0))}
    if detected:
        m["candid"] = pid * 10**6 + obj.index % 10**6
    return m


def _candidate(obj: _Object, m: dict[str, Any], hist: list[dict[str, Any]], seq: int) -> dict[str, Any]:
    """The ZTF candidate record of a detection (all 4.02 fields that have a meaning here)."""
    rng, kind = obj.rng, obj.kind
    mag = _mag(m["flux"], m["zp"])
    sig = float(1.0857 * m["sigma"] / abs(m["flux"]))
    real = kind != "bogus"
    dets = [h for h in hist if h["detected"]] + [m]
    aimage = float(rng.uniform(0.6, 1.2) * m["fwhm"] / 2)
    elong = float(rng.uniform(1.0, 1.25) if real else rng.uniform(1.6, 3.5))
    night = dt.datetime.fromtimestamp((m["jd"] - JD_UNIX_EPOCH) * 86400, dt.UTC)
    c = {
        "jd": m["jd"], "fid": m["fid"], "pid": m["pid"], "diffmaglim": m["lim"],
        "pdiffimfilename": f"ztf_{night:%Y%m%d}{int((m['jd'] % 1) * 1e6):06d}_{obj.field:06d}_z"
                           f"{'gr'[m['fid'] - 1]}_c{obj.rcid // 4 + 1:02d}_o_q{obj.rcid % 4 + 1}_scimrefdiffimg.fits",
        "programpi": "Kulkarni", "programid": 1, "candid": m["candid"],
        "isdiffpos": "t" if m["flux"] > 0 else "f", "tblid": seq, "nid": _night_id(m["jd"]),
        "rcid": obj.rcid, "field": obj.field, "xpos": obj.xpos, "ypos": obj.ypos,
        "ra": m["ra"], "dec": m["dec"], "magpsf": mag, "sigmapsf": sig,
        "chipsf": float(rng.uniform(0.6, 1.6) if real else rng.uniform(3, 20)),
        "magap": mag + float(rng.normal(0, 0.05)), "sigmagap": sig * 1.1,
        "distnr": obj.distnr, "magnr": float(obj.ref_mag[m["fid"]]), "sigmagnr": 0.02,
        "chinr": float(rng.uniform(0.5, 1.5)), "sharpnr": float(rng.normal(0, 0.05)),
        "sky": float(rng.normal(0, 0.5)), "magdiff": float(rng.normal(0, 0.05)), "fwhm": m["fwhm"],
        "classtar": float(rng.uniform(0.7, 1.0) if real else rng.uniform(0.0, 0.5)),
        "mindtoedge": float(min(obj.xpos, obj.ypos, 3072 - obj.xpos, 3080 - obj.ypos)),
        "magfromlim": m["lim"] - mag, "seeratio": float(rng.uniform(0.8, 1.2)),
        "aimage": aimage, "bimage": aimage / elong, "aimagerat": aimage / m["fwhm"],
        "bimagerat": aimage / elong / m["fwhm"], "elong": elong,
        "nneg": int(rng.integers(0, 4) if real else rng.integers(5, 20)),
        "nbad": int(0 if real else rng.integers(0, 4)),
        "rb": float(rng.uniform(0.65, 0.99) if real else rng.uniform(0.02, 0.35)),
        "ssdistnr": -999.0, "ssmagnr": -999.0, "ssnamenr": None,
        "sumrat": float(rng.uniform(0.85, 1.0)), "magapbig": mag + float(rng.normal(0, 0.05)),
        "sigmagapbig": sig * 1.2, "ranr": float(obj.ranr), "decnr": float(obj.decnr),
        "sgmag1": float(obj.ref_mag[1] + 0.3), "srmag1": float(obj.ref_mag[2]), "simag1": float(obj.ref_mag[2] - 0.2),
        "szmag1": float(obj.ref_mag[2] - 0.3), "sgscore1": obj.sgscore, "distpsnr1": obj.distnr,
        "ndethist": len(dets), "ncovhist": len(hist) + 1,
        "jdstarthist": dets[0]["jd"], "jdendhist": m["jd"],
        "scorr": float(abs(m["flux"]) / m["sigma"]), "tooflag": 0,
        "objectidps1": 100000000000000000 + obj.index, "objectidps2": None, "objectidps3": None,
        "nmtchps": int(rng.integers(1, 12)), "rfid": obj.field * 10**6 + obj.rcid * 10**2 + m["fid"],
        "jdstartref": 2458200.5, "jdendref": 2458600.5, "nframesref": int(rng.integers(15, 40)),
        "rbversion": "t17_f5_c3", "dsnrms": float(rng.uniform(5, 20)), "ssnrms": float(rng.uniform(10, 40)),
        "dsdiff": float(rng.normal(0, 5)), "magzpsci": m["zp"], "magzpsciunc": 1e-5, "magzpscirms": 0.03,
        "nmatches": int(rng.integers(300, 3000)), "clrcoeff": 0.1, "clrcounc": 1e-5, "zpclrcov": -1e-6,
        "zpmed": m["zp"], "clrmed": 0.5, "clrrms": 0.2, "neargaia": float(rng.uniform(1, 30)),
        "neargaiabright": float(rng.uniform(10, 60)), "maggaia": float(obj.ref_mag[2]),
        "maggaiabright": float(rng.uniform(11, 14)), "exptime": 30.0,
        "drb": float(rng.uniform(0.85, 1.0) if real else rng.uniform(0.0, 0.2)), "drbversion": "d6_m7",
    }
    if kind == "sso":
        c["ssnamenr"] = obj.ssnamenr
        c["ssdistnr"] = float(rng.uniform(0.1, 3.0))
        c["ssmagnr"] = float(mag + rng.normal(0, 0.3))
    return c


def _upper_limit(obj: _Object, m: dict[str, Any]) -> dict[str, Any]:
    """A past visit without detection, as ZTF lists it in ``prv_candidates``."""
    return {"jd": m["jd"], "fid": m["fid"], "pid": m["pid"], "diffmaglim": m["lim"], "pdiffimfilename": None,
            "programpi": "Kulkarni", "programid": 1, "candid": None, "isdiffpos": None,
            "nid": _night_id(m["jd"]), "rcid": obj.rcid, "field": obj.field, "rbversion": "t17_f5_c3",
            "magzpsci": m["zp"], "magzpsciunc": 1e-5, "magzpscirms": 0.03, "clrcoeff": 0.1, "clrcounc": 1e-5}


def _forced(obj: _Object, m: dict[str, Any]) -> dict[str, Any]:
    return {"field": obj.field, "rcid": obj.rcid, "fid": m["fid"], "pid": m["pid"],
            "rfid": obj.field * 10**6 + obj.rcid * 10**2 + m["fid"], "sciinpseeing": m["seeing"],
            "scibckgnd": m["sky"], "scisigpix": m["sigma"] / 3.0, "magzpsci": m["zp"], "magzpsciunc": 1e-5,
            "magzpscirms": 0.03, "clrcoeff": 0.1, "clrcounc": 1e-5, "exptime": 30.0, "adpctdif1": 0.08,
            "adpctdif2": 0.09, "diffmaglim": m["lim"], "programid": 1, "jd": m["jd"],
            "forcediffimflux": m["flux"], "forcediffimfluxunc": m["sigma"], "procstatus": "0",
            "distnr": obj.distnr, "ranr": float(obj.ranr), "decnr": float(obj.decnr),
            "magnr": float(obj.ref_mag[m["fid"]]), "sigmagnr": 0.02, "chinr": 1.0, "sharpnr": 0.0}


def _fill(record: dict[str, Any], schema_fields: list[dict]) -> dict[str, Any]:
    """Every schema field present (missing nullable ones as None), in schema order."""
    return {f["name"]: record.get(f["name"]) for f in schema_fields}


def generate_night(config: NightConfig | None = None) -> Night:
    """Simulate one night; see the module docstring."""
    cfg = config or NightConfig()
    schema = avro.load_schema("4.02")
    by_name = {f["name"]: f for f in schema["fields"]}
    cand_fields = by_name["candidate"]["type"]["fields"]
    prv_fields = by_name["prv_candidates"]["type"][1]["items"]["fields"]
    fp_fields = by_name["fp_hists"]["type"][1]["items"]["fields"]
    weights = np.array([cfg.mix.get(k, 0.0) for k in CLASSES], dtype=float)
    kinds = np.random.default_rng([cfg.seed, 10**9]).choice(CLASSES, size=cfg.n_objects, p=weights / weights.sum())
    year = int(cfg.night[:4])
    alerts, truth, seen = [], [], set()
    for index, kind in enumerate(kinds):
        obj = _Object(cfg, index, str(kind))
        measured: list[dict[str, Any]] = []
        prv: list[dict[str, Any]] = []
        for seq, (jd, fid) in enumerate(obj.epochs):
            m = _measure(obj, jd, fid)
            if m["detected"]:
                m["candidate"] = _fill(_candidate(obj, m, measured, seq), cand_fields)
            tonight = jd >= cfg.jd_start
            if tonight and m["detected"]:
                number = (cfg.seed * 7919 + index * 131 + (seq if kind == "sso" else 0)) % 26**7
                object_id = _object_id(year, number)
                # a moving object gets a new objectId at each detection, hence no history
                past = [] if kind == "sso" else [h for h in measured if h["jd"] >= jd - cfg.history_days]
                window = prv[len(measured) - len(past):]
                fwindow = [_fill(_forced(obj, h), fp_fields) for h in past]
                stamps = cutouts.stamps(obj.rng, source_flux=m["flux"], ref_flux=m["ref_flux"], sky=m["sky"],
                                        noise=m["sigma"] / 3.0, fwhm=m["fwhm"], bogus=kind == "bogus") \
                    if cfg.cutouts else {}
                record = {"schemavsn": "4.02", "publisher": PUBLISHER, "objectId": object_id,
                          "candid": m["candid"], "candidate": m["candidate"],
                          "prv_candidates": window or None, "fp_hists": fwindow or None}
                for which, image in stamps.items():
                    record[f"cutout{which}"] = {
                        "fileName": f"candid{m['candid']}_pid{m['pid']}_targ_{which[:3].lower()}.fits.gz",
                        "stampData": cutouts.to_fits_gz(image, {"CANDID": m["candid"], "FILTER": "gr"[fid - 1]})}
                alerts.append(record)
                if object_id not in seen:
                    seen.add(object_id)
                    truth.append(_truth_row(obj, object_id))
            # what later alerts of this object list as its history
            prv.append({k: m["candidate"][k] for k in (f["name"] for f in prv_fields)} if m["detected"]
                       else _fill(_upper_limit(obj, m), prv_fields))
            measured.append(m)
    alerts.sort(key=lambda r: (r["candidate"]["jd"], r["candid"]))
    return Night(cfg, alerts, truth)


def _truth_row(obj: _Object, object_id: str) -> dict[str, Any]:
    p = obj.lc.params
    return {"objectId": object_id, "class": obj.kind, "ra": round(obj.ra, 6), "dec": round(obj.dec, 6),
            "peak_mag": round(p["peak"], 3) if "peak" in p else "",
            "t0": round(p["t0"], 4) if "t0" in p else "",
            "period": round(p["period"], 5) if "period" in p else "",
            "ssnamenr": getattr(obj, "ssnamenr", "")}
