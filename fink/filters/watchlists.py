"""Live watchlists: users' lists of sky positions (with a radius) and object ids, matched
against every alert of every micro-batch.

A watchlist belongs to a user and has a name; its alerts go to the topic
``watchlist_<user>_<name>`` (:func:`topic_of`), each with the matched entry's name
(``watchlist_entry``) and its separation (``watchlist_sep_arcsec``, null for an object-id
match). The lists live in a registry folder (``$FINK_HOME/watchlists/<user>/<name>.parquet``)
beside a version counter (``VERSION``) that every change increments: the distribution stage
reads the counter at each micro-batch and, when it moved, the lists again, so an update takes
effect from the next batch without a restart.

Notes
-----
The entries of every list are indexed together in one k-d tree over unit vectors (scipy's
``cKDTree``, as :mod:`fink.science.modules.xmatch`): each alert costs one ball query at the
largest radius, logarithmic in the number of entries, then each candidate is kept when
within its own entry's radius; an alert matching several entries of one list is sent once,
with the nearest. Object ids match exactly (a hash lookup) and win over positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fink.config import fink_home
from fink.errors import FinkError
from fink.science.modules.xmatch import unit_vectors

#: the columns of a stored list (a CSV may leave out radius_arcsec and object_id, or ra and dec)
COLUMNS = ("name", "ra", "dec", "radius_arcsec", "object_id")
#: the fields a watchlist topic's alerts carry beyond the alert's own
FIELDS = {"watchlist_entry": "string", "watchlist_sep_arcsec": "double"}
#: radius of an entry given none (arcseconds), and the largest one accepted (1 degree)
DEFAULT_RADIUS, MAX_RADIUS = 1.5, 3600.0
VERSION = "VERSION"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WatchlistError(FinkError, ValueError):
    """A watchlist or one of its entries is invalid, or absent."""


@dataclasses.dataclass(frozen=True)
class Watchlist:
    """One user's list: its entries (:data:`COLUMNS`) and the topic its alerts go to."""

    user: str
    name: str
    entries: pd.DataFrame

    @property
    def topic(self) -> str:
        return topic_of(self.user, self.name)


def topic_of(user: str, name: str) -> str:
    """The Kafka topic of ``user``'s watchlist ``name``."""
    return f"watchlist_{_check('user', user)}_{_check('watchlist', name)}"


def _check(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise WatchlistError(f"{what} name {value!r}: use letters, digits, '.', '_' or '-' (64 at most, "
                             "starting with a letter or digit)")
    return value


def registry(root: str | os.PathLike[str] | None = None) -> Path:
    """The registry folder: ``root``, else ``$FINK_HOME/watchlists``."""
    return Path(root) if root else fink_home() / "watchlists"


def entries(rows: pd.DataFrame | Iterable[Mapping[str, Any]], radius_arcsec: float = DEFAULT_RADIUS,
            source: str = "watchlist") -> pd.DataFrame:
    """Validated entries (:data:`COLUMNS`) from a table or records: each needs a ``name`` and a
    position (``ra``, ``dec`` in degrees) or an ``object_id``; ``radius_arcsec`` where a row
    gives none. An invalid row raises, naming it (``source`` line ``n``, as in its CSV)."""
    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    stray = [c for c in table.columns if c not in COLUMNS]
    if stray:
        raise WatchlistError(f"{source}: unknown column '{stray[0]}' (columns: {', '.join(COLUMNS)})")
    if "name" not in table.columns:
        raise WatchlistError(f"{source}: no 'name' column (columns: {', '.join(COLUMNS)})")
    if len(table) == 0:
        raise WatchlistError(f"{source}: no entry")
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = None
    out = pd.DataFrame({
        "name": table["name"].astype("string").str.strip(),
        "ra": pd.to_numeric(table["ra"], errors="coerce").astype("float64"),
        "dec": pd.to_numeric(table["dec"], errors="coerce").astype("float64"),
        "radius_arcsec": pd.to_numeric(table["radius_arcsec"], errors="coerce").astype("float64")
                           .fillna(float(radius_arcsec)),
        "object_id": table["object_id"].astype("string").str.strip().replace("", pd.NA)})
    has_position = out["ra"].notna() & out["dec"].notna()
    checks = [
        (out["name"].isna() | (out["name"] == ""), "no name"),
        ((table["ra"].notna() & out["ra"].isna()) | (table["dec"].notna() & out["dec"].isna()),
         "ra or dec is not a number"),
        (out["ra"].notna() != out["dec"].notna(), "ra without dec, or dec without ra"),
        (~has_position & out["object_id"].isna(), "neither a position (ra, dec) nor an object_id"),
        (has_position & ((out["ra"] < 0) | (out["ra"] >= 360)), "ra outside [0, 360) degrees"),
        (has_position & ((out["dec"] < -90) | (out["dec"] > 90)), "dec outside [-90, 90] degrees"),
        (has_position & ((out["radius_arcsec"] <= 0) | (out["radius_arcsec"] > MAX_RADIUS)),
         f"radius_arcsec outside (0, {MAX_RADIUS:g}]"),
    ]
    for bad, why in checks:
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise WatchlistError(f"{source} line {row + 2} ({out['name'].iloc[row]!s}): {why}")
    return out


def read_csv(path: str | os.PathLike[str], radius_arcsec: float = DEFAULT_RADIUS) -> pd.DataFrame:
    """Entries from a CSV with a header (:data:`COLUMNS`; ``radius_arcsec`` where a row has none)."""
    try:
        table = pd.read_csv(path, dtype={"name": str, "object_id": str}, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise WatchlistError(f"{path}: not a readable CSV ({exc})") from exc
    return entries(table, radius_arcsec, source=str(path))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def version(root: str | os.PathLike[str] | None = None) -> int:
    """The registry's version: 0 when empty, one more at each change."""
    path = registry(root) / VERSION
    try:
        return int(json.loads(path.read_text())["version"])
    except FileNotFoundError:
        return 0


def _bump(root: Path) -> int:
    number = version(root) + 1
    tmp = root / f".{VERSION}.tmp"
    tmp.write_text(json.dumps({"version": number}))
    tmp.replace(root / VERSION)
    return number


def _path(root: Path, user: str, name: str) -> Path:
    return root / _check("user", user) / f"{_check('watchlist', name)}.parquet"


def add(name: str, rows: pd.DataFrame | Iterable[Mapping[str, Any]], user: str, *, replace: bool = False,
        radius_arcsec: float = DEFAULT_RADIUS, root: str | os.PathLike[str] | None = None) -> Watchlist:
    """Register ``user``'s watchlist ``name``, or add ``rows`` to it (``replace``: instead of its
    entries). An entry whose name is already in the list replaces it. Returns the stored list."""
    folder = registry(root)
    new = entries(rows, radius_arcsec, source=f"watchlist {user}/{name}")
    path = _path(folder, user, name)
    with _locked(folder):
        if path.exists() and not replace:
            old = pd.read_parquet(path)
            new = pd.concat([old[~old["name"].isin(new["name"])], new], ignore_index=True)
        new = new.drop_duplicates("name", keep="last").reset_index(drop=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        new.to_parquet(tmp, index=False)
        tmp.replace(path)
        _bump(folder)
    return Watchlist(user, name, new)


def remove(name: str, user: str, entry_names: Iterable[str] | None = None,
           root: str | os.PathLike[str] | None = None) -> Watchlist | None:
    """Remove ``user``'s watchlist ``name`` (None returned), or only the entries named
    ``entry_names`` (the list left is returned; removing its last entry removes it)."""
    folder = registry(root)
    path = _path(folder, user, name)
    with _locked(folder):
        if not path.exists():
            raise WatchlistError(f"no watchlist {name!r} of user {user!r} in {folder}")
        left = None
        if entry_names is not None:
            old = pd.read_parquet(path)
            wanted = set(entry_names)
            unknown = sorted(wanted - set(old["name"]))
            if unknown:
                raise WatchlistError(f"watchlist {user}/{name} has no entry {unknown[0]!r}")
            left = old[~old["name"].isin(wanted)].reset_index(drop=True)
        if left is None or left.empty:
            path.unlink()
            left = None
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            left.to_parquet(tmp, index=False)
            tmp.replace(path)
        _bump(folder)
    return None if left is None else Watchlist(user, name, left)


def load(root: str | os.PathLike[str] | None = None, user: str | None = None) -> list[Watchlist]:
    """Every registered list (of ``user`` only, if given), ordered by user then name."""
    folder = registry(root)
    if not folder.is_dir():
        return []
    out = []
    with _locked(folder):
        for path in sorted(folder.glob("*/*.parquet")):
            if user is None or path.parent.name == user:
                out.append(Watchlist(path.parent.name, path.stem, pd.read_parquet(path)))
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Index:
    """Every list's entries, ready to match: what the distribution stage ships to its workers.

    ``topics[k]`` is list ``k``'s topic; per positioned entry its list, name, unit vector and
    radius (radians); per object id, the ``(list, name)`` pairs it is an entry of.
    """

    version: int
    topics: tuple[str, ...]
    owners: tuple[str, ...]
    lists: np.ndarray
    names: np.ndarray
    vectors: np.ndarray
    radii: np.ndarray
    ids: Mapping[str, tuple[tuple[int, str], ...]]

    def __len__(self) -> int:
        return len(self.names) + sum(len(v) for v in self.ids.values())


def index(watchlists: list[Watchlist], number: int = 0) -> Index:
    """The :class:`Index` of ``watchlists`` (at registry version ``number``)."""
    lists, names, ra, dec, radii = [], [], [], [], []
    ids: dict[str, list[tuple[int, str]]] = {}
    for k, wl in enumerate(watchlists):
        table = wl.entries
        placed = table[table["ra"].notna()]
        lists.append(np.full(len(placed), k, dtype=np.int32))
        names.append(placed["name"].astype(str).to_numpy(dtype=object))
        ra.append(placed["ra"].to_numpy(float))
        dec.append(placed["dec"].to_numpy(float))
        radii.append(np.radians(placed["radius_arcsec"].to_numpy(float) / 3600.0))
        for oid, entry in table[table["object_id"].notna()][["object_id", "name"]].itertuples(index=False):
            ids.setdefault(str(oid), []).append((k, str(entry)))
    join = (lambda parts, dtype: np.concatenate(parts) if parts else np.empty(0, dtype))  # noqa: E731
    return Index(number, tuple(w.topic for w in watchlists), tuple(w.user for w in watchlists),
                 join(lists, np.int32), join(names, object), unit_vectors(join(ra, float), join(dec, float)),
                 join(radii, float), {k: tuple(v) for k, v in ids.items()})


_TREES: dict[tuple, Any] = {}


def _tree(idx: Index):
    """The k-d tree of ``idx``'s positions, built once per process and registry version (a
    worker gets a new copy of the index with each task)."""
    from scipy.spatial import cKDTree

    key = (idx.version, idx.topics, len(idx.names))
    if key not in _TREES:
        _TREES.clear()
        _TREES[key] = cKDTree(idx.vectors) if len(idx.vectors) else None
    return _TREES[key]


def match(idx: Index, ra: Any, dec: Any, object_ids: Any = None) -> pd.DataFrame:
    """Each alert's matches, at most one per list: ``alert`` (its row), ``list`` (in
    ``idx.topics``), ``entry`` and ``sep_arcsec`` (null for an object-id match; the nearest
    entry of a list wins, an object id over any position)."""
    ra, dec = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
    found: dict[tuple[int, int], tuple[float, str]] = {}
    if object_ids is not None and idx.ids:
        for row, oid in enumerate(object_ids):
            for k, entry in idx.ids.get(str(oid), ()) if oid is not None else ():
                found[(row, k)] = (-1.0, entry)
    tree = _tree(idx)
    good = np.isfinite(ra) & np.isfinite(dec)
    if tree is not None and good.any():
        rows = np.flatnonzero(good)
        points = unit_vectors(ra[rows], dec[rows])
        chord = 2 * np.sin(idx.radii.max() / 2)
        for row, point, hits in zip(rows, points, tree.query_ball_point(points, chord), strict=True):
            if not hits:
                continue
            hits = np.asarray(hits)
            sep = 2 * np.arcsin(np.clip(np.linalg.norm(idx.vectors[hits] - point, axis=1) / 2, 0, 1))
            keep = sep <= idx.radii[hits]
            for entry, k, s in zip(idx.names[hits[keep]], idx.lists[hits[keep]], sep[keep], strict=True):
                best = found.get((row, int(k)))
                if best is None or (best[0] >= 0 and s < best[0]):
                    found[(row, int(k))] = (float(s), entry)
    out = pd.DataFrame([(row, k, entry, None if s < 0 else np.degrees(s) * 3600.0)
                        for (row, k), (s, entry) in sorted(found.items())],
                       columns=["alert", "list", "entry", "sep_arcsec"])
    return out.astype({"alert": "int64", "list": "int32", "entry": "object", "sep_arcsec": "float64"})
