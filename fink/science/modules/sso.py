"""A solar-system object flag from the alert's own fields and its history.

Notes
-----
``roid`` follows the convention of Fink's asteroid catcher:

- 3: a known solar-system object: ZTF matched it to an ephemeris (``ssnamenr`` given,
  ``0 <= ssdistnr <= radius``);
- 2: a candidate: no known object, but everything points to a mover: the source has no
  detection before tonight at this position (``ndethist`` small and the history starts
  less than a day ago), and is not a star (``distpsnr1`` is far or ``sgscore1`` low);
- 0: neither.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fink.science.science_api import module


@module(inputs=["candidate.ssdistnr", "candidate.ssmagnr", "candidate.ssnamenr", "candidate.ndethist",
                "candidate.jd", "candidate.jdstarthist", "candidate.distpsnr1", "candidate.sgscore1"],
        outputs={"roid": "int", "sso_name": "string"}, version="1.0")
def solar_system(ssdistnr, ssmagnr, ssnamenr, ndethist, jd, jdstarthist, distpsnr1, sgscore1,
                 *, radius_arcsec: float = 5.0, max_history_days: float = 1.0) -> pd.DataFrame:
    """``roid`` (3 known, 2 candidate, 0 not) and the known object's name."""
    dist = pd.to_numeric(ssdistnr, errors="coerce").to_numpy(dtype=float)
    name = ssnamenr.astype(object).where(ssnamenr.notna(), None)
    named = name.map(lambda s: s is not None and str(s).strip() not in ("", "null", "None")).to_numpy(bool)
    magnr = pd.to_numeric(ssmagnr, errors="coerce").to_numpy(dtype=float)
    known = named & (dist >= 0) & (dist <= radius_arcsec) & ~(magnr < 0)
    young = (pd.to_numeric(jd).to_numpy(float) - pd.to_numeric(jdstarthist, errors="coerce").to_numpy(float)
             ) < max_history_days
    few = pd.to_numeric(ndethist, errors="coerce").fillna(0).to_numpy(float) <= 2
    ps_dist = pd.to_numeric(distpsnr1, errors="coerce").to_numpy(float)
    star = (ps_dist >= 0) & (ps_dist < 1.5) & (pd.to_numeric(sgscore1, errors="coerce").to_numpy(float) > 0.5)
    roid = np.where(known, 3, np.where(young & few & ~star, 2, 0))
    return pd.DataFrame({"roid": roid, "sso_name": name.where(known, None).to_numpy()})
