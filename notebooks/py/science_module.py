# %% [markdown]
# # Writing a science module
#
# A science module is a plain Python function over alert columns, declared with
# `@fink.science.module`. This notebook writes one, tries it on the bundled sample night
# without Spark, then shows how raw2science runs it.
#
# * **reads**: `../datasim/sample_night/alerts.avro` (the project's simulated night)
# * **writes**: nothing

# %% tags=["parameters"]
sample: str = "../datasim/sample_night"  # a folder of alerts (.avro files, or alerts.avro)
limit: int = 300  # alerts to try the module on

# %% [markdown]
# ## The alerts, as the stage hands them to a module
#
# Each input is a pandas Series with one value per alert: `candidate.magpsf` a number,
# `prv_candidates.magpsf` an array per alert (NaN where the survey has no value: upper limits).

# %%
import io

import fastavro
import numpy as np
import pandas as pd

from fink.sim.sources import read_messages

records = [next(fastavro.reader(io.BytesIO(m))) for m, _ in zip(read_messages(sample), range(limit), strict=False)]

def column(path):
    head, _, leaf = path.partition(".")
    if head == "prv_candidates":
        return pd.Series([np.array([np.nan if p[leaf] is None else p[leaf] for p in (r["prv_candidates"] or [])],
                                   dtype=float) for r in records])
    return pd.Series([r[head][leaf] if leaf else r[head] for r in records])

print(len(records), "alerts;", column("objectId").nunique(), "objects")

# %% [markdown]
# ## Write the module

# %%
from fink.science import module


@module(inputs=["candidate.magpsf", "prv_candidates.magpsf", "prv_candidates.jd", "candidate.jd"],
        outputs={"rise_rate": "double", "fast_riser": "boolean"}, version="0.1")
def rise_rate(mag, history_mag, history_jd, jd, *, threshold: float = 0.1):
    """Brightening in mag/day since the faintest earlier detection (positive: rising)."""
    rates = []
    for m, hm, hj, t in zip(mag, history_mag, history_jd, jd, strict=True):
        ok = np.isfinite(hm)
        if not ok.any():
            rates.append(np.nan)
            continue
        k = np.nanargmax(np.where(ok, hm, -np.inf))
        rates.append((hm[k] - m) / max(t - hj[k], 1e-3))
    rates = np.array(rates)
    return pd.DataFrame({"rise_rate": rates, "fast_riser": rates > threshold})


# %% [markdown]
# ## Try it: exactly what each Spark worker does per batch

# %%
from fink.science.science_api import run_module

mod = rise_rate.__fink_module__
out = run_module(mod, [column(c) for c in mod.inputs])
print(f"{out['_seconds'].sum() * 1000 / len(out):.3f} ms per alert; error: {out['_error'].iloc[0]}")
out[["rise_rate", "fast_riser"]].describe(include="all")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(out["rise_rate"].dropna().clip(-2, 2), bins=40)
ax.set_xlabel("rise rate (mag/day, clipped to +-2)")
ax.set_ylabel("alerts")
plt.show()

# %% [markdown]
# ## Plug it in
#
# Save the function in a module of your package (e.g. `mymodules/risers.py`, with the same
# `@module` declaration), make it importable where Spark runs, and list it in raw2science's
# parameters, after the built-in ones if it uses their outputs:
#
# ```yaml
# modules:
#   - fink.science.modules.features:lightcurve_features
#   - mymodules.risers:rise_rate
# module_params:
#   mymodules.risers:rise_rate: {threshold: 0.2}
# ```
#
# A module that raises on a batch gives null columns for that batch and is reported in the
# query's metrics (`<name>_errors`, `<name>_error`); `fail_on_module_error: true` stops instead.
# `fink/science/modules/template.py` is a commented starting point.
