"""A template science module: copy this file, rename the function, declare what it reads and adds.

A module is a plain function. Each declared input arrives as a pandas Series, one value
per alert, in the order of ``inputs``: a scalar field (``candidate.magpsf``) as numbers or
strings, a history field (``prv_candidates.magpsf``) as one array per alert (entries are
NaN/None where the survey gives no value, e.g. upper limits). It returns a pandas
DataFrame with exactly the declared ``outputs`` (a Series if there is one), one row per
alert, in the same order. Keyword-only parameters (after ``*``) are set from the stage's
``module_params``.

Try it on the sample night without Spark::

    from fink.science.science_api import load_module, run_module
    mod = load_module("fink.science.modules.template:brightening")
    run_module(mod, [alerts["candidate.magpsf"], alerts["prv_candidates.magpsf"]])

then list ``fink.science.modules.template:brightening`` in the stage's ``modules``.
Raising is fine: the stage gives null outputs for that batch and reports the error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fink.science import module


@module(inputs=["candidate.magpsf", "prv_candidates.magpsf"],
        outputs={"delta_mag": "double", "brightening": "boolean"}, version="1.0")
def brightening(magpsf: pd.Series, history: pd.Series, *, threshold: float = 0.5) -> pd.DataFrame:
    """How much brighter the alert is than the faintest earlier detection (magnitudes: smaller is brighter)."""
    faintest = history.map(lambda h: np.nanmax(np.asarray(h, dtype=float))
                           if h is not None and np.isfinite(np.asarray(h, dtype=float)).any() else np.nan)
    delta = faintest.to_numpy(float) - magpsf.to_numpy(float)
    return pd.DataFrame({"delta_mag": delta, "brightening": delta > threshold})
