"""The science module API without Spark: declarations, loading errors, failures as data."""

import sys
import types

import numpy as np
import pandas as pd
import pytest
from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

from fink.science import ScienceModuleError, load_modules, module
from fink.science.science_api import check_inputs, load_module, run_module

SCHEMA = StructType([
    StructField("objectId", DoubleType()),
    StructField("candidate", StructType([StructField("magpsf", DoubleType())])),
    StructField("prv_candidates", ArrayType(StructType([StructField("magpsf", DoubleType())]))),
])


@pytest.fixture
def user_package(monkeypatch):
    """A user's module file, importable as ``usermods``."""
    mod = types.ModuleType("usermods")

    @module(inputs=["candidate.magpsf"], outputs={"twice": "double"})
    def twice(mag):
        return mag * 2

    @module(inputs=["candidate.magpsf"], outputs={"boom": "double"})
    def boom(mag):
        raise RuntimeError("catalogue unreachable")

    def plain(mag):
        return mag

    mod.twice, mod.boom, mod.plain = twice, boom, plain
    monkeypatch.setitem(sys.modules, "usermods", mod)
    return mod


def test_a_declared_module_runs_on_pandas_and_reports_its_time(user_package):
    out = run_module(load_module("usermods:twice"), [pd.Series([1.0, 2.5])])
    assert out["twice"].tolist() == [2.0, 5.0]
    assert out["_error"].isna().all() and out["_seconds"].iloc[0] >= 0 and out["_seconds"].iloc[1] == 0


def test_a_module_that_raises_gives_nulls_and_the_error_text(user_package):
    out = run_module(load_module("usermods.boom"), [pd.Series([1.0, 2.0])])
    assert out["boom"].isna().all()
    assert out["_error"].tolist() == ["RuntimeError: catalogue unreachable"] * 2


def test_fail_mode_raises_naming_the_module(user_package):
    with pytest.raises(ScienceModuleError, match="usermods.boom failed: RuntimeError"):
        run_module(load_module("usermods.boom"), [pd.Series([1.0])], fail=True)


@pytest.mark.parametrize("path, message", [
    ("nosuchpkg.mod:func", "science module 'nosuchpkg.mod:func': cannot import 'nosuchpkg.mod'"),
    ("usermods:missing", "'usermods' has no attribute 'missing'"),
    ("usermods:plain", "'plain' is not declared with @fink.science.module"),
    ("justaname", "give it as 'package.module:function'"),
])
def test_loading_errors_name_the_module(user_package, path, message):
    with pytest.raises(ScienceModuleError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_module(path)


def test_a_wrong_signature_is_refused_at_declaration():
    with pytest.raises(ScienceModuleError, match="declares 2 input.*takes 1 positional"):
        @module(inputs=["candidate.magpsf", "candidate.sigmapsf"], outputs={"x": "double"})
        def one(mag):
            return mag


def test_an_unsupported_output_type_is_refused():
    with pytest.raises(ScienceModuleError, match="output 'x' has type 'decimal'"):
        @module(inputs=["candidate.magpsf"], outputs={"x": "decimal"})
        def f(mag):
            return mag


def test_an_undeclared_column_is_named_with_its_module(user_package):
    @module(inputs=["candidate.nosuch"], outputs={"y": "double"})
    def reads_nothing(x):
        return x

    user_package.reads_nothing = reads_nothing
    mods = load_modules(["usermods:twice", "usermods:reads_nothing"])
    with pytest.raises(ScienceModuleError, match="usermods:reads_nothing: input column 'candidate.nosuch'"):
        check_inputs(mods, SCHEMA)
    check_inputs(mods[:1], SCHEMA)
    template = load_module("fink.science.modules.template:brightening")
    assert template.inputs[1] == "prv_candidates.magpsf"
    check_inputs([template], SCHEMA)  # a history field resolves through the array of structs


def test_unknown_parameters_and_output_clashes_are_refused(user_package):
    with pytest.raises(ScienceModuleError, match="unknown parameter 'radius'"):
        load_modules(["usermods:twice"], {"usermods:twice": {"radius": 1}})
    with pytest.raises(ScienceModuleError, match="output 'twice' is already produced"):
        load_modules(["usermods:twice", "usermods.twice"])


def test_the_template_module_answers_by_hand():
    mod = load_module("fink.science.modules.template:brightening", {"threshold": 1.0})
    out = run_module(mod, [pd.Series([17.0, 18.0, 19.0]),
                           pd.Series([np.array([19.5, np.nan]), np.array([18.2]), None])])
    assert out["delta_mag"].tolist()[:2] == pytest.approx([2.5, 0.2]) and np.isnan(out["delta_mag"][2])
    assert out["brightening"].tolist() == [True, False, False]


def test_a_chain_feeds_earlier_outputs_to_later_modules_and_isolates_failures(user_package):
    from fink.science.science_api import run_chain

    @module(inputs=["twice"], outputs={"plus_one": "double"})
    def plus_one(x):
        return x + 1

    user_package.plus_one = plus_one
    mods = load_modules(["usermods:twice", "usermods:boom", "usermods:plus_one"])
    out = run_chain(mods, {"candidate.magpsf": pd.Series([1.0, 2.0])})
    assert out["twice"].tolist() == [2.0, 4.0] and out["plus_one"].tolist() == [3.0, 5.0]
    assert out["boom"].isna().all() and out["_error_1"].iloc[0] == "RuntimeError: catalogue unreachable"
    assert out["_error_0"].isna().all() and out["_error_2"].isna().all()
