"""Fink's community modules and filters in Spark: this broker's one Arrow UDF against Fink's
stored values, and its filter adapter against Fink's own distribution code (fink-utils'
``concat_col`` and ``apply_user_defined_filter``) on the same alerts."""

import math

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.spark]
pytest.importorskip("fink_science", reason="the fink extra is not installed (pip install -e '.[fink]')")

PART3 = "ztf/fink-client_datatest/ztf/part-3-305711.avro"
RANDOM = ("mag_rate", "sigma_rate", "lower_rate", "upper_rate")


@pytest.fixture(scope="module")
def fink_frame(spark, shared_datasim):
    """The 31 alerts Fink distributed (with its own values), as Spark reads them."""
    return spark.read.format("avro").load(str(shared_datasim / PART3)).cache()


def test_modules_in_the_one_arrow_udf_reproduce_fink_s_values(fink_frame):
    from fink.science import community_modules as community
    from fink.science.science_api import apply_modules, load_modules

    same = community.same_value  # floats to 1e-6; None and NaN alike; a null struct as a struct of nulls

    modules = load_modules([f"fink:{n}" for n in community.CALLS])
    outputs = [c for m in modules for c in m.outputs]
    frame = fink_frame.select("candid", "objectId", "candidate", "prv_candidates",
                              *[fink_frame[c].alias(f"fink_{c}") for c in outputs])
    out = apply_modules(frame, modules)
    rows = out.collect()
    assert len(rows) == 31
    # nested outputs keep their types: Fink's features as structs, Mangrove as a map
    assert out.schema["lc_features_g"].dataType.simpleString().startswith("struct<mean:double,")
    assert out.schema["mangrove"].dataType.simpleString() == "map<string,string>"
    for column in outputs:
        if column in RANDOM:
            continue
        bad = [r["candid"] for r in rows if not same(r[column], r[f"fink_{column}"])]
        assert not bad, f"{column}: {len(bad)} of 31 differ from Fink's"
    assert sum(r["mangrove"]["HyperLEDA_name"] != "None" for r in rows) == 3  # real matches among them
    finite = [(r["mag_rate"], r["fink_mag_rate"], r["fink_sigma_rate"]) for r in rows if r["fink_mag_rate"] is not None
              and not math.isnan(r["fink_mag_rate"])]
    assert finite and all(abs(x - y) <= 2 * s for x, y, s in finite)  # Fink draws them with seed None


def test_filters_select_what_fink_s_own_distribution_code_selects(fink_frame):
    import warnings

    from fink_utils.spark.utils import apply_user_defined_filter, concat_col
    from pyspark.sql import functions as F

    from fink.filters.community_filters import livestream
    from fink.filters.filter_api import FilterError, apply_filters, load_filters

    fink = fink_frame  # Fink's distribution layout, built by Fink's code (fink_broker/ztf/distribute.py)
    for field in ("jd", "fid", "magpsf", "sigmapsf", "magnr", "sigmagnr", "magzpsci", "isdiffpos", "diffmaglim"):
        fink = concat_col(fink, field, prefix="c").withColumnRenamed(f"c{field}", f"c{field}c")
    fink = (fink.withColumn("cstampDatac", F.col("cutoutScience.stampData"))
            .withColumn("linear_fit_slope", F.col("lc_features_r.linear_fit_slope")))
    ran, failed = {}, {}
    for topic, path in livestream().items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyspark's warnings about PandasUDFType, on import
                theirs = sorted(r[0] for r in apply_user_defined_filter(fink, path.replace(":", ".")).select("candid")
                                .collect())
        except Exception as exc:  # the filter cannot run here: ours must say why, not run something else
            with pytest.raises(FilterError) as caught:
                apply_filters(fink_frame, load_filters({topic: path}))
            failed[topic] = type(exc).__name__
            assert str(exc) in str(caught.value)  # the same cause, named
            continue
        picked = apply_filters(fink_frame, load_filters({topic: path})).where(F.size("_selected") > 0)
        ours = sorted(r[0] for r in picked.select("candid").collect())
        assert ours == theirs, topic
        ran[topic] = len(ours)
    assert len(ran) == 16 and len(failed) == 5
    assert (ran["fink_sn_candidates_ztf"], ran["fink_vra_ztf"], ran["fink_fast_riser_candidates_ztf"]) == (31, 6, 1)


def test_argument_resolution_equals_fink_utils_on_every_filter(fink_frame):
    from fink_utils.spark.utils import get_cols_from_args

    from fink.filters import community_filters as community
    from fink.filters.filter_api import FilterError
    from fink.science.science_api import _field_type

    names = community.flatten_names(fink_frame.schema)
    every = [*names, *community.derived(names, lambda p: _field_type(fink_frame.schema, p) is not None, {})]
    checked = 0
    for path in community.livestream().values():
        try:
            module = community.load_fink_filter(path)
        except FilterError:
            continue  # not importable here (docs/fink.md)
        for arg in module.inputs:
            try:
                theirs = str(get_cols_from_args(arg, every))
            except AssertionError:
                with pytest.raises(FilterError):
                    community.resolve(arg, every)
                continue
            assert theirs == f"Column<'{community.resolve(arg, every)}'>"
            checked += 1
    assert checked >= 60
