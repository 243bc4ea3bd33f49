"""Queries of the enriched archive in HBase, as pandas DataFrames, with the client's plots.

::

    from fink.client.explorer import Archive

    archive = Archive("127.0.0.1:9090", table="ztf_alerts")
    archive.light_curve("ZTF26aaaaabc")         # every point of the object, history merged
    archive.latest("early_snia", limit=20)       # newest alerts of a class
    archive.cone(ra=150.1, dec=2.2, radius_arcsec=30)
    archive.plot_cutouts("ZTF26aaaaabc")         # the three stamps of its latest alert
    archive.identify(archive.latest("sso", columns=archive.key_columns))  # ids, jd, ra, dec

Every query reads the layout recorded in the table (:mod:`fink.io.hbase`) and returns the
columns of the science archive with their types, so results compare equal to a direct
computation over the science Parquet. The survey (its description: :mod:`fink.survey.description`)
is the shipped one whose identity and time fields the table has, unless named: it says
where an alert's ids, time, position and photometry are (ZTF: magnitudes with upper
limits; Rubin: fluxes in nJy with forced photometry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from fink.io.hbase import ArchiveError, Layout, connect, read_layout, time_key
from fink.survey import description as surveys

if TYPE_CHECKING:
    import pandas as pd

#: light-curve columns of a history point (ZTF's candidate / prv_candidates fields)
#: a row key's time part (:func:`fink.io.hbase.time_key`) and the "_" after it
_TIMED = re.compile(rb"-?\d+\.\d{7}_")
POINT_COLUMNS = ("jd", "fid", "magpsf", "sigmapsf", "diffmaglim", "isdiffpos", "candid", "ra", "dec")


class ArchiveReader:
    """The connection to one archive table through the Thrift gateway, its layout and survey,
    and the scans every query is made of (:class:`Archive` adds the queries)."""

    def __init__(self, thrift: str = "127.0.0.1:9090", table: str = "ztf_alerts", timeout_ms: int = 30000,
                 survey: str = ""):
        host, _, port = thrift.rpartition(":")
        self.table_name = table
        try:
            self.conn = connect(host, int(port), timeout_ms)
            self.layout: Layout = read_layout(self.conn, table)
        except ArchiveError:
            raise
        except Exception as exc:
            raise ArchiveError(f"cannot read the archive {table!r} through {thrift}: {exc}") from exc
        self.survey: surveys.Survey = surveys.load(survey) if survey else table_survey(self.layout)

    @property
    def key_columns(self) -> list[str]:
        """The top-level columns holding an alert's ids, time and position (what :meth:`identify` reads)."""
        paths = [self.survey.alert_id, *self.survey.object_id, self.survey.time["path"], self.survey.ra,
                 self.survey.dec]
        return list(dict.fromkeys(p.split(".")[0] for p in paths))

    def identify(self, alerts: pd.DataFrame) -> pd.DataFrame:
        """``alerts`` (with :attr:`key_columns`) with the survey's ``object_id``, ``alert_id``,
        ``jd``, ``ra`` and ``dec`` in front, whatever the survey calls them."""
        import pandas as pd

        records = alerts.to_dict("records")
        s = self.survey
        ids = pd.DataFrame({"object_id": [s.object_key(r) for r in records],
                            "alert_id": pd.array([s.alert_key(r) for r in records], dtype="Int64"),
                            "jd": [s.jd(r) for r in records],
                            "ra": [surveys.get_path(r, s.ra) for r in records],
                            "dec": [surveys.get_path(r, s.dec) for r in records]}, index=alerts.index)
        return pd.concat([ids, alerts.drop(columns=[c for c in ids.columns if c in alerts.columns])], axis=1)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _frame(self, rows: Sequence[tuple[bytes, dict]], columns: Iterable[str] | None) -> pd.DataFrame:
        return frame(self.layout.decode(rows, columns))

    def _fetch(self, keys: Sequence[bytes], columns: Iterable[str] | None) -> list[tuple[bytes, dict]]:
        """Main rows by key, in the order of ``keys``."""
        qualifiers = self.layout.qualifiers(columns) if columns is not None else None
        table = self.conn.table(self.layout.table)
        found: dict[bytes, dict] = {}
        for i in range(0, len(keys), 500):
            found.update(table.rows(list(keys[i:i + 500]), columns=qualifiers))
        return [(k, found[k]) for k in keys if k in found]

    def _scan(self, index: str, **scan: Any) -> list[tuple[bytes, dict]]:
        return list(self.conn.table(self.layout.index_table(index)).scan(**scan))

    def count(self) -> int:
        """Alerts in the main table (a full key-only scan: slow on big tables)."""
        scan = self.conn.table(self.layout.table).scan(filter=b"KeyOnlyFilter() AND FirstKeyOnlyFilter()")
        return sum(1 for key, _ in scan if key != b"~schema")

    def tags(self) -> dict[str, int]:
        """How many alerts each tag (class) has."""
        counts: dict[str, int] = {}
        for key, _ in self._scan("class", filter=b"KeyOnlyFilter()"):
            name = key.decode().rsplit("_", 4)[0]  # <tag>_<time>_<object>_<time>_<alert id>
            counts[name] = counts.get(name, 0) + 1
        return counts

    def nights(self) -> dict[str, int]:
        """How many alerts each night has (a key-only scan of the night index)."""
        counts: dict[str, int] = {}
        for key, _ in self._scan("night", filter=b"KeyOnlyFilter()"):
            night = key.decode().partition("_")[0]
            counts[night] = counts.get(night, 0) + 1
        return counts


class Archive(ArchiveReader):
    """A reader of one archive table (and its indexes) through the Thrift gateway.

    Parameters
    ----------
    thrift
        The gateway, ``host:port``.
    table
        The main table (what the archive stage's ``table`` parameter named).
    survey
        A shipped survey's name or a description file; empty: the shipped survey whose
        identity and time fields the table's columns hold (:func:`table_survey`).
    """

    # -- queries --------------------------------------------------------------------------------

    def alerts(self, object_id: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Every alert of ``object_id``, oldest first (a prefix scan of the main table)."""
        qualifiers = self.layout.qualifiers(columns) if columns is not None else None
        prefix = f"{self.layout.object_key(object_id)}_".encode()
        rows = self.conn.table(self.layout.table).scan(row_prefix=prefix, columns=qualifiers)
        # the object's own rows: <object>_<time>_<alert id>, not those of an object named <object>_...
        return self._frame([(k, c) for k, c in rows if _TIMED.match(k, len(prefix))], columns)

    def light_curve(self, object_id: str) -> pd.DataFrame:
        """The object's light curve: the points of all its alerts and of their histories,
        each once (the latest alert's copy), in time order, with ``mjd`` and ``detected``.

        A magnitude survey (ZTF) gives the candidate fields (``jd``, ``fid``, ``magpsf``...),
        ``detected`` False for an upper limit (``diffmaglim``); a flux survey (Rubin) gives
        :func:`fink.client.plots.flux_curve`'s ``mjd``, ``band``, ``flux``, ``err``, ``kind``,
        ``detected`` False for forced photometry.
        """
        s = self.survey
        heads = [p.split(".")[0] for p in (*s.object_id, s.time["path"])]
        alerts = self.alerts(object_id, columns=list(dict.fromkeys([*heads, *s.history])))
        if s.photometry.get("kind") == "flux":
            return merge_fluxes(alerts.to_dict("records"), s)
        return merge_points(alerts.to_dict("records"))

    def latest(self, tag: str, start: float | None = None, stop: float | None = None, limit: int = 100,
               columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The newest alerts tagged ``tag`` with ``start <= time < stop`` (the key's time,
        JD for ZTF), newest first, at most ``limit``."""
        # keys <tag>_<time>_...: a time starts with a digit or "-" ("." and "/" sort between them),
        # so the range holds no other tag's keys but those of a tag named <tag>_<digits>..., dropped next
        lo = f"{tag}_{time_key(start)}" if start is not None else f"{tag}_-"
        hi = f"{tag}_{time_key(stop)}" if stop is not None else f"{tag}_:"
        refs = self._scan("class", row_start=lo.encode(), row_stop=hi.encode(), columns=[b"r:k"],
                          reverse=False)
        start_at = len(tag) + 1
        keys = [cells[b"r:k"] for key, cells in refs if _TIMED.match(key, start_at)][::-1][:limit]
        return self._frame(self._fetch(keys, columns), columns)

    def night(self, night: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The alerts of ``night`` (``YYYYMMDD``), in object then time order."""
        refs = self._scan("night", row_prefix=f"{night}_".encode(), columns=[b"r:k"])
        return self._frame(self._fetch([c[b"r:k"] for _, c in refs], columns), columns)

    def cone(self, ra: float, dec: float, radius_arcsec: float, columns: Iterable[str] | None = None
             ) -> pd.DataFrame:
        """The alerts within ``radius_arcsec`` of (``ra``, ``dec``) in degrees, nearest first,
        with their ``separation_arcsec``: the pixels the cone touches are scanned in the
        pixel index, then the exact separation is kept within the radius."""
        import astropy.units as u
        import numpy as np

        if radius_arcsec <= 0:
            raise ArchiveError(f"the cone radius must be positive, got {radius_arcsec}")
        pixels = self.layout.healpix().cone_search_lonlat(ra * u.deg, dec * u.deg, radius=radius_arcsec * u.arcsec)
        hits: list[tuple[float, bytes]] = []
        for pixel in sorted(int(p) for p in pixels):
            for _, cells in self._scan("pixel", row_prefix=self.layout.pixel_prefix(pixel).encode()):
                sep = separation_arcsec(ra, dec, float(cells[b"r:ra"]), float(cells[b"r:dec"]))
                if sep <= radius_arcsec:
                    hits.append((sep, cells[b"r:k"]))
        hits.sort()
        frame = self._frame(self._fetch([k for _, k in hits], columns), columns)
        frame["separation_arcsec"] = np.array([s for s, _ in hits], dtype=float)
        return frame

    def cutouts(self, object_id: str, candid: int | None = None) -> dict[str, bytes | None]:
        """The cutouts (FITS bytes, gzipped for ZTF) of one alert of the object: the one whose
        id (``candid``, Rubin's ``diaSourceId``) is ``candid``, or its latest."""
        head = self.survey.alert_id.split(".")[0]
        frame = self.alerts(object_id, columns=list(dict.fromkeys([head, *sorted(self.layout.cutouts)])))
        if candid is not None:
            ids = [self.survey.alert_key(r) for r in frame[[head]].to_dict("records")]
            frame = frame[[i == candid for i in ids]]
        if frame.empty:
            raise ArchiveError(f"no alert {object_id} {'with id ' + str(candid) if candid else ''} in "
                               f"{self.layout.table}")
        row = frame.iloc[-1]
        return {name: _stamp(row[name]) for name in sorted(self.layout.cutouts)}

    # -- plots ----------------------------------------------------------------------------------

    def plot_lightcurve(self, object_id: str, ax=None, upper_limits: bool = True):
        """The object's merged light curve, per band, with error bars and upper limits."""
        from fink.client.plots import plot_fluxes, plot_points

        lc = self.light_curve(object_id)
        title = f"{object_id}  ({int(lc['detected'].sum())} detections)"
        if self.survey.photometry.get("kind") == "flux":
            return plot_fluxes(lc, ax=ax, title=title)
        return plot_points(lc, ax=ax, upper_limits=upper_limits, title=title)

    def plot_cutouts(self, object_id: str, candid: int | None = None, axes=None):
        """The science, template and difference stamps of one of the object's alerts."""
        from fink.client.plots import plot_cutouts

        stamps = self.cutouts(object_id, candid)
        return plot_cutouts({name: {"stampData": data} for name, data in stamps.items()}, axes=axes)


def table_survey(layout: Layout) -> surveys.Survey:
    """The shipped survey whose identity and time fields are columns of the table."""
    columns = set(layout.schema.names)
    for name in surveys.shipped():
        survey = surveys.load(name)
        if survey.required_fields() <= columns:
            return survey
    raise ArchiveError(f"the table {layout.table} matches no shipped survey ({', '.join(surveys.shipped())}): "
                       "name its survey (Archive(..., survey=...))")


def frame(table) -> pd.DataFrame:
    """An Arrow table as pandas without losing a value: integer columns as nullable pandas
    integers, integers inside lists and structs as Python ints (never floats with NaN, which
    would round 19-digit ids), maps as dicts."""
    import pandas as pd
    import pyarrow as pa

    ints = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
            pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
            pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype()}
    return table.to_pandas(integer_object_nulls=True, maps_as_pydicts="strict", types_mapper=ints.get)


def _stamp(value: Any) -> bytes | None:
    if isinstance(value, dict):
        return value.get("stampData")
    return value


def separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Angular separation in arcseconds (Vincenty's formula, exact at every distance)."""
    import math

    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    num = math.hypot(math.cos(d2) * math.sin(dra),
                     math.cos(d1) * math.sin(d2) - math.sin(d1) * math.cos(d2) * math.cos(dra))
    den = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(dra)
    return math.degrees(math.atan2(num, den)) * 3600.0


def merge_points(alerts: Iterable[dict]) -> pd.DataFrame:
    """The light curve of alerts of one object, in the order given (oldest first): each
    alert's history then its detection; a (``jd``, ``fid``) seen again keeps the latest copy."""
    import pandas as pd

    from fink.client.plots import MJD_OFFSET

    rows = []
    for alert in alerts:
        for point in [*(alert.get("prv_candidates") if alert.get("prv_candidates") is not None else []),
                      alert.get("candidate")]:
            if point is None or point.get("jd") is None:
                continue
            rows.append({"objectId": alert.get("objectId"), **{c: point.get(c) for c in POINT_COLUMNS}})
    lc = pd.DataFrame(rows, columns=["objectId", *POINT_COLUMNS], dtype=object)
    for name in ("fid", "candid"):  # upper limits have no candid: Int64 keeps the 19-digit others exact
        lc[name] = pd.array(lc[name].tolist(), dtype="Int64")
    for name in ("jd", "magpsf", "sigmapsf", "diffmaglim", "ra", "dec"):
        lc[name] = lc[name].astype(float)
    lc = lc.drop_duplicates(subset=["jd", "fid"], keep="last").sort_values(["jd", "fid"], kind="stable")
    lc.insert(1, "mjd", lc["jd"] - MJD_OFFSET)
    lc["detected"] = lc["magpsf"].notna()
    return lc.reset_index(drop=True)


def merge_fluxes(alerts: Iterable[dict], survey: surveys.Survey) -> pd.DataFrame:
    """The flux light curve of alerts of one object, in the order given (oldest first): each
    alert's points (:func:`fink.client.plots.flux_curve`); a point (``mjd``, ``band``,
    ``kind``) seen again keeps the latest copy; ``detected`` False for forced photometry."""
    import numpy as np
    import pandas as pd

    from fink.client.plots import flux_curve

    # Arrow lists arrive as numpy arrays: as lists, a history reads like a decoded alert's
    curves = [flux_curve({k: list(v) if isinstance(v, np.ndarray) else v for k, v in alert.items()}, survey)
              for alert in alerts]
    lc = pd.concat(curves, ignore_index=True) if curves else flux_curve({}, survey)
    lc = lc.drop_duplicates(subset=["mjd", "band", "kind"], keep="last").sort_values(["mjd", "band"], kind="stable")
    lc["detected"] = lc["kind"] == "source"
    return lc.reset_index(drop=True)
