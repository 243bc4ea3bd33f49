"""Fink's community modules and filters, run unchanged, against the values Fink stored in the
alerts it distributed (no Spark: the adapters on the Series the module runner gives).

Needs the ``fink`` extra (``pip install -e '.[fink]'``); the last test checks that the rest of
the broker does not."""

import math
import os
import subprocess
import sys
from pathlib import Path

import fastavro
import numpy as np
import pytest

from fink.errors import FinkError
from fink.filters.filter_api import FilterError, load_filters
from fink.science.science_api import ScienceModuleError, load_module, load_modules, run_module

ROOT = Path(__file__).resolve().parents[2]
fink_science = pytest.importorskip("fink_science", reason="the fink extra is not installed (pip install -e '.[fink]')")

from fink.filters import community_filters as filters  # noqa: E402  (after the extra's check)
from fink.science import alert_columns  # noqa: E402
from fink.science import community_modules as community  # noqa: E402

PART3 = "ztf/fink-client_datatest/ztf/part-3-305711.avro"
#: magnitude_rate draws samples with seed None in Fink: these values are random
RANDOM = ("mag_rate", "sigma_rate", "lower_rate", "upper_rate")


def read(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        return reader.writer_schema, list(reader)


@pytest.fixture(scope="module")
def fink_alerts(shared_datasim):
    """The 31 alerts Fink distributed, with its own values (fink-science 8.41)."""
    return read(shared_datasim / PART3)


def missing(v):
    return v is None or (isinstance(v, float | np.floating) and math.isnan(v))


same = community.same_value  # floats to 1e-6; None and NaN alike; a null struct as a struct of nulls


def test_history_arrays_equal_the_ones_fink_distributed(shared_datasim):
    schema, alerts = read(shared_datasim / "ztf/fink-client_datatest/avro_multi_alerts.avro")
    compared = nulls = 0
    for field in ("jd", "fid", "magpsf", "sigmapsf", "magnr", "sigmagnr", "magzpsci", "isdiffpos"):
        prv, cur = alert_columns.alert_series(alerts, community.history_paths(field), schema)
        for ours, a in zip(community.concat(prv, cur), alerts, strict=True):
            theirs = a[f"c{field}"]
            assert len(ours) == len(theirs) and all(same(x, y) for x, y in zip(ours, theirs, strict=True)), field
            compared += len(theirs)
            nulls += sum(v is None for v in theirs)
    assert compared > 1500 and nulls > 500  # upper limits: missing values kept in place


@pytest.mark.parametrize("name", [n for n in community.CALLS if n != "magnitude_rate"])
def test_each_module_reproduces_fink_s_stored_values(name, fink_alerts):
    schema, alerts = fink_alerts
    module = load_module(f"fink:{name}")
    assert module.version == f"fink-science-{fink_science.__version__}"
    out = run_module(module, alert_columns.alert_series(alerts, module.inputs, schema), fail=True)
    for column in module.outputs:
        ours, theirs = list(out[column]), [a[column] for a in alerts]
        bad = [(x, y) for x, y in zip(ours, theirs, strict=True) if not same(x, y)]
        assert not bad, f"{column}: {len(bad)} of {len(alerts)} differ, e.g. {bad[0]}"


def test_a_row_at_a_time_udf_made_in_a_session_with_arrow_is_still_called_row_by_row(fink_alerts):
    """A plain ``udf(...)`` imported while a Spark session is active gets evalType 101 (Arrow-batched
    rows, Spark 4's default), 100 otherwise: both are one call per alert."""
    from types import SimpleNamespace

    schema, alerts = fink_alerts
    module = load_module("fink:lc_features")
    real = module.func.udf()
    expected = run_module(module, alert_columns.alert_series(alerts, module.inputs, schema), fail=True)
    for eval_type in (100, 101):
        module.func._udfs[module.func.call.udf] = SimpleNamespace(func=real.func, evalType=eval_type,
                                                                  returnType=real.returnType)
        out = run_module(module, alert_columns.alert_series(alerts, module.inputs, schema), fail=True)
        assert all(community.same_value(a, b) for a, b in zip(out["lc_features_r"], expected["lc_features_r"],
                                                              strict=True))


def test_fast_transient_rate_reproduces_fink_s_deterministic_values_and_draws_its_random_ones(fink_alerts):
    schema, alerts = fink_alerts
    module = load_module("fink:magnitude_rate")
    series = alert_columns.alert_series(alerts, module.inputs, schema)
    out = run_module(module, series, fail=True)
    for column in module.outputs:
        if column not in RANDOM:
            assert all(same(x, a[column]) for x, a in zip(out[column], alerts, strict=True)), column
    # seed None in Fink: the same alerts where Fink had a rate, within two of its own sigmas
    ours, theirs, sigma = out["mag_rate"], [a["mag_rate"] for a in alerts], [a["sigma_rate"] for a in alerts]
    assert [missing(x) for x in ours] == [missing(y) for y in theirs]
    finite = [(x, y, s) for x, y, s in zip(ours, theirs, sigma, strict=True) if not missing(y)]
    assert len(finite) >= 15 and all(abs(x - y) <= 2 * s for x, y, s in finite)
    # Fink's literal arguments are parameters here: a seed makes the draws reproducible
    seeded = module.bind({"seed": 7})
    first, again = (run_module(seeded, series, fail=True)["mag_rate"] for _ in range(2))
    assert np.allclose(first, again, equal_nan=True) and not np.allclose(first, ours, equal_nan=True)


def test_module_loading_errors_name_the_module_and_the_way_out():
    with pytest.raises(ScienceModuleError, match="no such call; known: .*nalerthist"):
        load_module("fink:nope")
    with pytest.raises(ScienceModuleError, match="several times; name the call: fink:gcvs, fink:x3hsp, fink:x4lac"):
        load_module("fink_science.ztf.xmatch.processor:crossmatch_other_catalog")
    with pytest.raises(ScienceModuleError, match="not one of the calls .* docs/fink.md"):
        load_module("fink_science.ztf.xmatch.processor:cdsxmatch")
    with pytest.raises(ScienceModuleError, match="unknown parameter 'radius'.*radius_arcsec"):
        load_module("fink:mangrove", {"radius": 1})
    with pytest.raises(ScienceModuleError, match="cannot import .*No module named 'supernnova'"):
        community.import_udf("fink_science.ztf.snn.processor:snn_ia")
    # Fink's roid next to the built-in solar-system module: one column, two producers
    with pytest.raises(ScienceModuleError, match="output 'roid' is already produced"):
        load_modules(["fink.science.modules.sso:solar_system", "fink:roid"])
    by_path = load_module("fink_science.ztf.asteroids.processor.roid_catcher")
    assert by_path.inputs == load_module("fink:roid").inputs and by_path.outputs == {"roid": "int"}


def test_filter_arguments_resolve_by_fink_s_rule():
    """A unique suffix, then the exact last part, then the one at the root (the same rule as
    fink-utils' get_cols_from_args on every filter's arguments: tests/integration/test_fink_community_spark.py)."""
    assert filters.resolve("fid", ["candidate.fid", "candidate.pid"]) == "candidate.fid"
    assert filters.resolve("jd", ["candidate.jd", "candidate.xjd", "other"]) == "candidate.jd"
    assert filters.resolve("ra", ["ra", "candidate.ra"]) == "ra"
    with pytest.raises(FilterError, match="ambiguous"):
        filters.resolve("ra", ["a.ra", "b.ra"])
    with pytest.raises(FilterError, match="no column for 'mulens'"):
        filters.resolve("mulens", ["candidate.ra"])


@pytest.mark.parametrize(("name", "selected"), [("vra", 6), ("fast_riser_candidates", 1), ("sn_candidates", 31),
                                                ("sso_ztf_candidates", 0), ("blazar", 0)])
def test_filters_select_on_fink_s_columns_what_fink_s_own_code_selects(name, selected, fink_alerts):
    """The reference counts are those of fink-utils' apply_user_defined_filter on the same alerts
    (tests/integration/test_fink_community_spark.py runs it in Spark); the 31 alerts are all Fink's
    "SN candidate" class, and sn_candidates selects every one."""
    schema, alerts = fink_alerts
    topic, path = next(iter(filters.livestream([name]).items()))
    assert topic == f"fink_{name}_ztf"
    bound = filters.bind(load_filters({topic: path})[0], alert_columns.avro_names(schema), lambda p: True, {})
    answer = bound.module.func(*alert_columns.alert_series(alerts, bound.module.inputs, schema))
    assert answer.dtype == bool and int(answer.sum()) == selected
    if name == "sn_candidates":  # what Fink's classifier called these alerts
        assert answer.tolist() == [a["finkclass"] == "SN candidate" for a in alerts]


def test_filters_resolve_on_this_broker_s_columns_under_fink_s_names():
    from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructField, StructType

    from fink.survey.description import load

    candidate = StructType([StructField(f, DoubleType()) for f in ("jd", "jdstarthist", "magpsf", "drb")])
    schema = StructType([StructField("objectId", StringType()), StructField("candidate", candidate),
                         StructField("prv_candidates", ArrayType(candidate)),
                         StructField("xm_type", StringType()), StructField("roid", IntegerType())])
    vra = load_filters(filters.livestream(["vra"]))
    bound = filters.resolve_filters(vra, schema, load("ztf").fink_columns())[0]
    assert bound.module.inputs == ("candidate.magpsf", "candidate.drb", "xm_type", "roid")
    import pandas as pd

    # cdsxmatch is the cross-match's label, "Unknown" (Fink's no-match value) where it is null
    answer = bound.module.func(pd.Series([20.0, 20.0]), pd.Series([0.99, 0.99]), pd.Series([None, "Star"]),
                               pd.Series([0, 0]))
    assert answer.tolist() == [True, False]
    sn = load_filters(filters.livestream(["sn_candidates"]))
    with pytest.raises(FilterError, match="topic 'fink_sn_candidates_ztf'.*no column for 'snn_snia_vs_nonia'"):
        filters.resolve_filters(sn, schema, load("ztf").fink_columns())
    with pytest.raises(FilterError, match="no Fink livestream filter 'nope'"):
        filters.livestream(["nope"])
    with pytest.raises(FilterError, match="No module named 'astroquery'"):
        load_filters(filters.livestream(["early_kn_candidates"]))


def test_history_arrays_keep_arrow_s_types_and_missing_values():
    import pandas as pd

    ints = community.concat(pd.Series([np.array([1, 2], dtype="int32"), None]), pd.Series([np.nan, 3.0]))
    assert ints[0].dtype == float and np.isnan(ints[0][2]) and ints[0][:2].tolist() == [1, 2]  # a null promotes
    assert ints[1].tolist() == [3.0]
    words = community.concat(pd.Series([np.array(["t", None], dtype=object), None]), pd.Series(["f", None],
                                                                                             dtype="string"))
    assert words[0].tolist() == ["t", None, "f"] and words[1].tolist() == [None]
    floats = community.concat(pd.Series([np.array([1.5, np.nan], dtype="float32")]), pd.Series([2.5], dtype="float32"))
    assert floats[0].dtype == np.float32 and community.concat(
        pd.Series([np.array([1.5, np.nan], dtype="float32")]), pd.Series([2.5], dtype="float32"), rows=True
    ) == [[1.5, None, 2.5]]


def test_an_empty_batch_gives_empty_outputs():
    import pandas as pd

    for name in community.CALLS:
        module = load_module(f"fink:{name}")
        out = run_module(module, [pd.Series([], dtype=object) for _ in module.inputs], fail=True)
        assert len(out) == 0 and list(module.outputs) == [c for c in out.columns if not c.startswith("_")]
    vra = load_filters(filters.livestream(["vra"]))[0]
    bound = filters.bind(vra, ["candidate.magpsf", "candidate.drb", "cdsxmatch", "roid"], lambda p: True, {})
    assert bound.module.func(*[pd.Series([], dtype=float)] * 4).tolist() == []


def test_chat_posting_variables_are_hidden_from_fink_s_code(monkeypatch):
    monkeypatch.setenv("FINK_TG_TOKEN", "t")
    monkeypatch.setenv("KNWEBHOOK_FINK", "w")
    monkeypatch.setenv("FINK_SLACK_TOKEN", "s")
    with community.quiet():
        assert not {"FINK_TG_TOKEN", "KNWEBHOOK_FINK", "FINK_SLACK_TOKEN"} & set(os.environ)
    assert [os.environ[k] for k in ("FINK_TG_TOKEN", "KNWEBHOOK_FINK", "FINK_SLACK_TOKEN")] == ["t", "w", "s"]


def test_the_docs_table_is_what_the_script_measures(shared_datasim):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import fink_table
    finally:
        sys.path.remove(str(ROOT / "tools"))
    import re

    table = fink_table.render(shared_datasim)
    doc = (ROOT / "docs" / "fink.md").read_text()
    documented = doc.split(fink_table.START)[1].split(fink_table.END)[0].strip()

    def steady(text):  # random draws: how many land within two sigmas may change from run to run
        return re.sub(r"within 2 σ \d+/\d+", "within 2 σ", text)

    assert steady(documented) == steady(table)
    assert table.count("| **yes** |") >= 10 and "fink:roid" in table and "No module named 'supernnova'" in table


def test_the_rest_of_the_broker_needs_no_fink_package():
    code = ("import sys\n"
            "for name in ('fink_science', 'fink_filters', 'fink_utils', 'fink_tns', 'line_profiler'):\n"
            "    sys.modules[name] = None  # as if not installed\n"
            "from fink.science.science_api import load_modules, ScienceModuleError\n"
            "from fink.filters.filter_api import load_filters\n"
            "from fink.stages import pipeline\n"
            "from fink.survey.description import load\n"
            "s = load('ztf')\n"
            "load_modules(s.modules, {'crossmatch': {'catalogue_path': 'datasim/sample_night/catalogue.csv'}})\n"
            "load_filters(s.filters)\n"
            "try:\n"
            "    load_modules(['fink:roid'])\n"
            "except ScienceModuleError as e:\n"
            "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "roid_catcher': cannot import 'fink_science'" in proc.stdout
    assert "pip install -e '.[fink]'" in proc.stdout
    assert issubclass(ScienceModuleError, FinkError)
