"""Cells of notebooks/raw2science.ipynb and notebooks/science_module.ipynb (see tools/nbbuild.py)."""

from nbbuild import COMMON_PARAMETERS

NOTEBOOKS: dict[str, list[tuple]] = {}

NOTEBOOKS["notebooks/raw2science.ipynb"] = [
("md", """
# raw2science: quality cuts and science modules

Reads the raw archive as a stream of new Parquet files (what stream2raw writes), drops the
alerts failing the quality cuts (counted per cut), runs the science modules in order
(light-curve features, SN Ia classifier, solar-system flag, catalogue cross-match, and any
module of yours), and writes the science archive by night, exactly once, with provenance
(module versions; ingest, processing start and end times).

* **reads**: `<data_dir>/raw` (or `raw_path`)
* **writes**: `<data_dir>/science`, checkpoint `<data_dir>/checkpoints/raw2science`
* **headless**: `fink start raw2science -c conf/local.yaml [--simulator]`
"""),
("code", COMMON_PARAMETERS + '''
survey: str = "ztf"  # ztf | rubin | a survey description file: the raw layout, default cuts, built-in modules
cuts: dict = {}  # name: SQL condition an alert must meet; {} means the survey's (ZTF: nbad, rb, fid)
modules: list = ["builtin"]  # dotted paths, applied in order; "builtin" is the survey's built-in modules
module_params: dict = {"crossmatch": {"catalogue_path": "../datasim/sample_night/catalogue.csv", "radius_arcsec": 1.5}}  # keyword parameters per module (by path or function name)
fail_on_module_error: bool = False  # stop on a module error instead of null columns and an error count
max_files_per_trigger: int = 0  # raw files per micro-batch, 0 means all new files
files_per_batch: int = 1  # Parquet files per night and micro-batch
raw_path: str = ""  # "" means <data_dir>/raw
science_path: str = ""  # "" means <data_dir>/science
checkpoint: str = ""  # "" means <data_dir>/checkpoints/raw2science
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # first archive the bundled sample night (simulator to Kafka, then stream2raw)
topic: str = "ztf_20261127_programid1"  # the topic the simulator fills (with simulator only)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run
''', ["parameters"]),
("code", """
from fink.config import FinkConfig
from fink.stages.raw2science import Raw2ScienceConfig

cfg = FinkConfig.from_namespace(globals())
stage = Raw2ScienceConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
science_modules = stage.load_modules()  # a missing module or a wrong declaration fails here, by name
print(f"{paths['raw']} -> {paths['science']}; cuts {list(stage.quality_cuts())}; modules {[m.key for m in science_modules]}")
"""),
("md", "## Session (and, with `simulator`, a raw archive of the sample night)"),
("code", """
from fink import streaming
from fink.monitor import QueryMonitor
from fink.session import get_spark
from fink.stages import raw2science

spark = get_spark(cfg, app_name="fink-raw2science")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
if simulator:
    from fink.simulator import SimulatorConfig, replay
    from fink.stages import stream2raw

    sample = stage.description().simulator["sample"]  # the bundled night, in the survey's format
    sent = replay(SimulatorConfig(source=sample, survey=stage.survey, topic=topic), cfg.kafka_bootstrap,
                  progress=False)
    raw_stage = stream2raw.Stream2RawConfig(topic=topic, raw_path=raw_path, survey=stage.survey)
    raw_run = streaming.run_until([streaming.start(stream2raw.build(spark, raw_stage, cfg).trigger(availableNow=True),
                                                   stream2raw.QUERY_NAME)], duration=duration, stop_file=stop_file)
    print(f"simulator: {sent['alerts']} alerts -> raw archive:",
          stream2raw.reconcile(spark, raw_run.progress[stream2raw.QUERY_NAME], raw_stage.paths(cfg)["raw"]))
"""),
("md", "## Source, cuts, modules, writer; start, watch live, end within `duration`"),
("code", """
writer = raw2science.build(spark, stage, cfg)
writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
monitor = QueryMonitor("raw2science")  # input and processed rows/s, batch time
query = streaming.start(writer, raw2science.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=monitor)
progress = result.progress[raw2science.QUERY_NAME]
totals = raw2science.reconcile(spark, progress, paths["science"])
print(f"ended: {result.reason} after {result.seconds:.1f} s")
if not totals["balanced"]:
    raise RuntimeError(f"alerts != kept + rejected, or kept != written: {totals}")
{k: v for k, v in totals.items() if k != "modules"}
"""),
("md", "## Summary: where the alerts went, what each module cost"),
("code", """
import json

import matplotlib.pyplot as plt

from fink.config import fink_home

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
reasons = {"kept": totals["kept"], **{f"cut: {k}": v for k, v in totals["reasons"].items()}}
axes[0].barh(list(reasons), list(reasons.values()), color=["tab:green"] + ["tab:red"] * len(totals["reasons"]))
axes[0].set_xlabel("alerts")
costs = {k: 1000 * v["seconds"] / max(totals["kept"], 1) for k, v in totals["modules"].items()}
axes[1].barh(list(costs), list(costs.values()))
axes[1].set_xlabel("ms per alert (worker time)")
for name, m in totals["modules"].items():
    if m["errors"]:
        print(f"module {name}: {m['errors']} alerts without values: {m['error']}")
fig.suptitle(f"raw2science: {totals['alerts']} alerts, {totals['kept']} kept")
fig.tight_layout()
report = fink_home() / "reports" / "raw2science"
report.mkdir(parents=True, exist_ok=True)
fig.savefig(report / "summary.png", dpi=100)
plt.show()
summary = {"stopped_because": result.reason, **totals, **paths}
(report / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
summary
"""),
("md", "## The most likely SN Ia of the run, and the known objects"),
("code", """
try:
    science = raw2science.read_science(spark, paths["science"])
    cols = ["objectId", "candid", "snia_prob", "roid", "xm_type", "lc_amplitude_r", "lc_observation_count_r"]
    top = science.select(*[c for c in cols if c in science.columns])
    if "snia_prob" in top.columns:
        top = top.orderBy(top["snia_prob"].desc_nulls_last())
    top = top.limit(10).toPandas()
    top.to_csv(report / "top_candidates.csv", index=False)
    display(top)
except Exception as exc:  # an empty archive has no Parquet file yet
    print(f"no science archive yet: {exc.__class__.__name__}")
streaming.stop_active(spark)
"""),
]

NOTEBOOKS["notebooks/science_module.ipynb"] = [
("md", """
# Writing a science module

A science module is a plain Python function over alert columns, declared with
`@fink.science.module`. This notebook writes one, tries it on the bundled sample night
without Spark, then shows how raw2science runs it.

* **reads**: `../datasim/sample_night/alerts.avro` (the project's simulated night)
* **writes**: nothing
"""),
("code", '''
sample: str = "../datasim/sample_night"  # a folder of alerts (.avro files, or alerts.avro)
limit: int = 300  # alerts to try the module on
''', ["parameters"]),
("md", """
## The alerts, as the stage hands them to a module

Each input is a pandas Series with one value per alert: `candidate.magpsf` a number,
`prv_candidates.magpsf` an array per alert (NaN where the survey has no value: upper limits).
"""),
("code", """
import io

import fastavro
import numpy as np
import pandas as pd

from fink.datasim.sources import read_messages

records = [next(fastavro.reader(io.BytesIO(m))) for m, _ in zip(read_messages(sample), range(limit), strict=False)]

def column(path):
    head, _, leaf = path.partition(".")
    if head == "prv_candidates":
        return pd.Series([np.array([np.nan if p[leaf] is None else p[leaf] for p in (r["prv_candidates"] or [])],
                                   dtype=float) for r in records])
    return pd.Series([r[head][leaf] if leaf else r[head] for r in records])

print(len(records), "alerts;", column("objectId").nunique(), "objects")
"""),
("md", "## Write the module"),
("code", """
from fink.science import module


@module(inputs=["candidate.magpsf", "prv_candidates.magpsf", "prv_candidates.jd", "candidate.jd"],
        outputs={"rise_rate": "double", "fast_riser": "boolean"}, version="0.1")
def rise_rate(mag, history_mag, history_jd, jd, *, threshold: float = 0.1):
    \"\"\"Brightening in mag/day since the faintest earlier detection (positive: rising).\"\"\"
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
"""),
("md", "## Try it: exactly what each Spark worker does per batch"),
("code", """
from fink.science.api import run_module

mod = rise_rate.__fink_module__
out = run_module(mod, [column(c) for c in mod.inputs])
print(f"{out['_seconds'].sum() * 1000 / len(out):.3f} ms per alert; error: {out['_error'].iloc[0]}")
out[["rise_rate", "fast_riser"]].describe(include="all")
"""),
("code", """
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(out["rise_rate"].dropna().clip(-2, 2), bins=40)
ax.set_xlabel("rise rate (mag/day, clipped to +-2)")
ax.set_ylabel("alerts")
plt.show()
"""),
("md", """
## Plug it in

Save the function in a module of your package (e.g. `mymodules/risers.py`, with the same
`@module` declaration), make it importable where Spark runs, and list it in raw2science's
parameters, after the built-in ones if it uses their outputs:

```yaml
modules:
  - fink.science.modules.features:lightcurve_features
  - mymodules.risers:rise_rate
module_params:
  mymodules.risers:rise_rate: {threshold: 0.2}
```

A module that raises on a batch gives null columns for that batch and is reported in the
query's metrics (`<name>_errors`, `<name>_error`); `fail_on_module_error: true` stops instead.
`fink/science/modules/template.py` is a commented starting point.
"""),
]
