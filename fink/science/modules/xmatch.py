"""Cross-match of alert positions against a local catalogue (Parquet or CSV: ra, dec, id, type).

Notes
-----
The catalogue is read once per Python worker and indexed with astropy's k-d tree
(:meth:`astropy.coordinates.SkyCoord.match_to_catalog_sky` builds it on first use and
keeps it on the catalogue's coordinates), so each batch costs a tree query per alert:
logarithmic in the catalogue's size. Millions of rows fit: a row costs ~50 bytes.

To use SIMBAD or Gaia, export an extract of the sky you need with the four columns
(``ra``, ``dec`` in degrees ICRS, an ``id``, a ``type``), e.g. with astroquery's TAP
queries, save it as Parquet, and give its path as the module's ``catalogue`` parameter.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pandas as pd

from fink.science.api import ScienceModuleError, module

COLUMNS = ("ra", "dec", "id", "type")


@lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[float, int]):
    """The catalogue's ids, types and coordinates (cached per worker; ``stamp`` = mtime, size)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ScienceModuleError(f"catalogue {path}: no column '{missing[0]}' (needs {', '.join(COLUMNS)})")
    coords = SkyCoord(table["ra"].to_numpy(float) * u.deg, table["dec"].to_numpy(float) * u.deg)
    return table["id"].astype(str).to_numpy(), table["type"].astype(str).to_numpy(), coords


def catalogue(path: str):
    """The catalogue at ``path`` as (ids, types, SkyCoord), loaded once per process."""
    if not os.path.exists(path):
        raise ScienceModuleError(f"catalogue {path}: no such file (set the crossmatch module's 'catalogue')")
    st = os.stat(path)
    return _load(path, (st.st_mtime, st.st_size))


@module(inputs=["candidate.ra", "candidate.dec"],
        outputs={"xm_id": "string", "xm_type": "string", "xm_sep_arcsec": "double"}, version="1.0")
def crossmatch(ra, dec, *, catalogue_path: str = "", radius_arcsec: float = 1.5) -> pd.DataFrame:
    """The nearest catalogue source within ``radius_arcsec``: its id, type and separation."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    n = len(ra)
    out = pd.DataFrame({"xm_id": [None] * n, "xm_type": [None] * n, "xm_sep_arcsec": np.full(n, np.nan)})
    if not catalogue_path:
        raise ScienceModuleError("crossmatch: no catalogue given (parameter 'catalogue_path')")
    ids, types, coords = catalogue(catalogue_path)
    if n == 0 or len(ids) == 0:
        return out
    alerts = SkyCoord(np.asarray(ra, float) * u.deg, np.asarray(dec, float) * u.deg)
    idx, sep, _ = alerts.match_to_catalog_sky(coords)
    sep = sep.to_value(u.arcsec)
    hit = sep <= radius_arcsec
    out.loc[hit, "xm_id"] = ids[idx[hit]]
    out.loc[hit, "xm_type"] = types[idx[hit]]
    out.loc[hit, "xm_sep_arcsec"] = sep[hit]
    return out
