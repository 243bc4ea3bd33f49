"""Cross-match of alert positions against a local catalogue (Parquet or CSV: ra, dec, id, type).

Notes
-----
The catalogue is read once per Python worker and indexed with a k-d tree (scipy's
``cKDTree``) over unit vectors, the way astropy's ``match_to_catalog_sky`` does, without
building coordinate frames for every batch: each batch costs one tree query per alert,
logarithmic in the catalogue's size. Millions of rows fit: a row costs ~60 bytes. The
separation is exact: the great-circle angle from the chord length.

To use SIMBAD or Gaia, export an extract of the sky you need with the four columns
(``ra``, ``dec`` in degrees ICRS, an ``id``, a ``type``), e.g. with astroquery's TAP
queries, save it as Parquet, and give its path as the module's ``catalogue`` parameter.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pandas as pd

from fink.science.science_api import ScienceModuleError, module

COLUMNS = ("ra", "dec", "id", "type")


def unit_vectors(ra, dec) -> np.ndarray:
    """Cartesian unit vectors of positions in degrees."""
    ra, dec = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


@lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[float, int]):
    """The catalogue's ids, types and k-d tree (cached per worker; ``stamp`` = mtime, size)."""
    from scipy.spatial import cKDTree

    table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ScienceModuleError(f"catalogue {path}: no column '{missing[0]}' (needs {', '.join(COLUMNS)})")
    tree = cKDTree(unit_vectors(table["ra"], table["dec"]))
    return table["id"].astype(str).to_numpy(), table["type"].astype(str).to_numpy(), tree


def catalogue(path: str):
    """The catalogue at ``path`` as (ids, types, k-d tree), loaded once per process."""
    if not os.path.exists(path):
        raise ScienceModuleError(f"catalogue {path}: no such file (set the crossmatch module's 'catalogue_path')")
    st = os.stat(path)
    return _load(path, (st.st_mtime, st.st_size))


@module(inputs=["candidate.ra", "candidate.dec"],
        outputs={"xm_id": "string", "xm_type": "string", "xm_sep_arcsec": "double"}, version="1.1")
def crossmatch(ra, dec, *, catalogue_path: str = "", radius_arcsec: float = 1.5) -> pd.DataFrame:
    """The nearest catalogue source within ``radius_arcsec``: its id, type and separation."""
    n = len(ra)
    out = pd.DataFrame({"xm_id": [None] * n, "xm_type": [None] * n, "xm_sep_arcsec": np.full(n, np.nan)})
    if not catalogue_path:
        raise ScienceModuleError("crossmatch: no catalogue given (parameter 'catalogue_path')")
    ids, types, tree = catalogue(catalogue_path)
    if n == 0 or len(ids) == 0:
        return out
    chord_max = 2 * np.sin(np.radians(radius_arcsec / 3600) / 2)
    chord, idx = tree.query(unit_vectors(ra, dec), k=1, distance_upper_bound=chord_max * (1 + 1e-9))
    hit = np.isfinite(chord)
    sep = np.degrees(2 * np.arcsin(np.clip(chord[hit] / 2, 0, 1))) * 3600
    out.loc[hit, "xm_id"] = ids[idx[hit]]
    out.loc[hit, "xm_type"] = types[idx[hit]]
    out.loc[hit, "xm_sep_arcsec"] = sep
    return out
