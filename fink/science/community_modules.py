"""Fink's community science modules (the ``fink-science`` package), run here unchanged.

A fink-science module is a Spark UDF (most are ``@pandas_udf(..., PandasUDFType.SCALAR)``)
that Fink calls on columns of its own layout: alert fields (``candidate.ra``), the
history-plus-current arrays (``cjd``, ``cmagpsf``: each ``prv_candidates.<f>`` followed by
``candidate.<f>``) and fixed settings passed as literal columns. This module calls the
function inside the UDF (``udf.func``) exactly as Fink calls it, from this project's module
runner: the ``c*`` arrays are built in the worker from the alert and its history, the
literals are passed as Fink passes them (and become keyword parameters that
``module_params`` may change), and the outputs keep Fink's names::

    modules: [builtin, "fink:nalerthist", "fink:mangrove",
              "fink_science.ztf.ad_features.processor:extract_features_ad"]

A module is named either by the dotted path of its UDF (when Fink calls it once) or by
``fink:<name>``, the name of one of Fink's calls (:data:`CALLS`: ``roid``, ``nalerthist``,
``magnitude_rate``, ``lc_features``, ``gcvs``, ``x3hsp``, ``x4lac``, ``mangrove``).

Notes
-----
``pip install -e '.[fink]'`` installs the versions this was checked with (``fink-science``
7.4.0, ``fink-utils``, and the imports the wheel does not declare); executors on a cluster
need the same. Which modules run and why the others do not: ``docs/fink.md``, made by
``tools/fink_table.py``. A row-at-a-time UDF (``extract_features_ad``) gets Python lists with
``None`` for missing values, as Spark gives them; a pandas UDF gets Series of numpy arrays
(``NaN`` for missing floats), as Arrow gives them. Imports and calls run with warnings
silenced: pyspark warns about the deprecated ``PandasUDFType`` on every import.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fink.science.science_api import ScienceModule, ScienceModuleError, import_attribute, split_path

#: the fields Fink concatenates into history-plus-current arrays (``c<field>``), in any survey
#: of ZTF's layout
HISTORY, CURRENT = "prv_candidates", "candidate"
#: the fields of which Fink makes ``c<field>`` arrays (raw2science and distribution together)
CONCATENATED = ("jd", "fid", "magpsf", "sigmapsf", "magnr", "sigmagnr", "magzpsci", "isdiffpos", "distnr",
                "diffmaglim")
#: environment variables through which some of Fink's filters post to chat services; never
#: seen by a module or filter run here (a broker does not post on its users' behalf)
SIDE_EFFECT_ENV = re.compile(r".*(TOKEN|WEBHOOK|SLACK|TELEGRAM).*")


@dataclasses.dataclass(frozen=True)
class Lit:
    """A literal argument, as Fink passes ``F.lit(value)``: a keyword parameter here."""

    name: str
    value: Any


@dataclasses.dataclass(frozen=True)
class Via:
    """An argument that is another UDF's value, one key of its map (Fink's
    ``F.col("container").getItem(key)`` of a column it drops afterwards)."""

    udf: str
    args: tuple[Any, ...]
    key: str


@dataclasses.dataclass(frozen=True)
class FinkCall:
    """How Fink calls one fink-science UDF (``fink_broker/ztf/science.py``).

    ``args``: per parameter, a ``c<field>`` array, an alert field by dotted path, or a
    :class:`Lit`. ``split``: how the UDF's value becomes ``outputs``: ``None`` (one output),
    ``"struct"`` (a struct's fields, each a column) or ``"bands"`` (a map filter id -> struct:
    ``{1: <first output>, 2: <second>}``, as Fink takes ``getItem("1")`` and ``getItem("2")``).
    ``outputs`` maps Fink's column names to their types; empty: from the UDF's return type.
    """

    udf: str
    args: tuple[Any, ...]
    outputs: tuple[str, ...]
    split: str | None = None


_CM = ("candid", "candidate.ra", "candidate.dec")
#: Fink's calls of the fink-science modules that run offline with this stack, keyed by the
#: name this project gives them (``fink:<name>``); arguments as in ``fink_broker/ztf/science.py``
CALLS: dict[str, FinkCall] = {
    "roid": FinkCall("fink_science.ztf.asteroids.processor:roid_catcher",
                     ("cjd", "cmagpsf", "candidate.ndethist", "candidate.sgscore1", "candidate.ssdistnr",
                      "candidate.distpsnr1"), ("roid",)),
    "nalerthist": FinkCall("fink_science.ztf.nalerthist.processor:nalerthist", ("cmagpsf",), ("nalerthist",)),
    "magnitude_rate": FinkCall(
        "fink_science.ztf.fast_transient_rate.processor:magnitude_rate",
        ("candidate.magpsf", "candidate.sigmapsf", "candidate.jd", "candidate.jdstarthist", "candidate.fid",
         "cmagpsf", "csigmapsf", "cjd", "cfid", "cdiffmaglim", Lit("N", 10000), Lit("seed", None)),
        ("jd_first_real_det", "jdstarthist_dt", "mag_rate", "sigma_rate", "lower_rate", "upper_rate",
         "delta_time", "from_upper"), "struct"),
    "lc_features": FinkCall("fink_science.ztf.ad_features.processor:extract_features_ad",
                            ("cmagpsf", "cjd", "csigmapsf", "cfid", "objectId", "cdistnr", "cmagnr", "csigmagnr",
                             "cisdiffpos"), ("lc_features_g", "lc_features_r"), "bands"),
    "gcvs": FinkCall("fink_science.ztf.xmatch.processor:crossmatch_other_catalog",
                     (*_CM, Lit("catalog_name", "gcvs")), ("gcvs",)),
    "x3hsp": FinkCall("fink_science.ztf.xmatch.processor:crossmatch_other_catalog",
                      (*_CM, Lit("catalog_name", "3hsp"), Lit("radius_arcsec", 60.0)), ("x3hsp",)),
    "x4lac": FinkCall("fink_science.ztf.xmatch.processor:crossmatch_other_catalog",
                      (*_CM, Lit("catalog_name", "4lac"), Lit("radius_arcsec", 60.0)), ("x4lac",)),
    "blazar_stats": FinkCall(
        "fink_science.ztf.blazar_low_state.processor:quiescent_state",
        ("candid", "objectId",
         Via("fink_science.ztf.standardized_flux.processor:standardized_flux",
             ("candid", "objectId", "cdistnr", "cmagpsf", "csigmapsf", "cmagnr", "csigmagnr", "cisdiffpos", "cfid",
              "cjd"), "flux"),
         "cjd"), ("blazar_stats",)),
    "mangrove": FinkCall("fink_science.ztf.xmatch.processor:crossmatch_mangrove",
                         (*_CM, Lit("radius_arcsec", 60.0)), ("mangrove",)),
}


def is_fink_module(path: str) -> bool:
    """Whether ``path`` names a Fink community module (``fink:<name>`` or a ``fink_science`` path)."""
    return isinstance(path, str) and (path.startswith("fink:") or path.split(".")[0].split(":")[0] == "fink_science")


def import_udf(path: str, error: type[Exception] = ScienceModuleError, kind: str = "Fink module") -> Any:
    """The Spark UDF object at ``path``, imported with pyspark's import-time warnings silenced."""
    package = path.split(".")[0].split(":")[0]
    if package.isidentifier() and importlib.util.find_spec(package) is None:
        raise error(f"{kind} '{path}': cannot import '{package}' (pip install -e '.[fink]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        udf = import_attribute(path, kind, error)
    if not callable(getattr(udf, "func", None)) or getattr(udf, "evalType", None) is None:
        raise error(f"{kind} '{path}': '{split_path(path)[1]}' is not a Spark UDF (no .func / .evalType)")
    return udf


def call_of(path: str) -> tuple[str, FinkCall]:
    """The name and Fink call of ``path`` (``fink:<name>`` or a UDF's path called once by Fink)."""
    if path.startswith("fink:"):
        name = path[len("fink:"):]
        if name not in CALLS:
            raise ScienceModuleError(f"Fink module '{path}': no such call; known: {', '.join(sorted(CALLS))}")
        return name, CALLS[name]
    wanted = "{}:{}".format(*split_path(path))
    names = [n for n, c in CALLS.items() if c.udf == wanted]
    if len(names) == 1:
        return names[0], CALLS[names[0]]
    if names:
        raise ScienceModuleError(f"Fink module '{path}': Fink calls it several times; name the call: "
                                 + ", ".join(f"fink:{n}" for n in names))
    raise ScienceModuleError(f"Fink module '{path}': not one of the calls this broker knows how Fink makes "
                             f"({', '.join(f'fink:{n}' for n in sorted(CALLS))}); docs/fink.md says which "
                             "fink-science modules run here and why the others do not")


def c_field(name: str) -> str | None:
    """The field of a ``c<field>`` array name (``cmagpsf`` -> ``magpsf``), else None."""
    return name[1:] if name.startswith("c") and name[1:] in CONCATENATED else None


def history_paths(field: str) -> tuple[str, str]:
    """The two columns a ``c<field>`` array is made of."""
    return f"{HISTORY}.{field}", f"{CURRENT}.{field}"


def concat(history: Any, current: Any, rows: bool = False) -> list:
    """Fink's ``c<field>`` arrays (``concat_col``): each alert's history followed by its current
    value, per alert, from the Series the runner gives (a history is None when there is none).

    Arrays have the type Arrow gives Fink's own (the history's, or the current column's when
    there is no history; an integer array with a missing value becomes a float one): a missing
    value is NaN in a float array, None in an object one. With ``rows``, Python lists with None
    for missing values, as Spark gives them to a row-at-a-time UDF.
    """
    import numpy as np

    dtype = getattr(current, "dtype", None)
    plain = dtype if isinstance(dtype, np.dtype) else np.dtype(object)  # pandas' own types: as objects
    out = []
    for h, c in zip(history, current, strict=True):
        none = h is None or (isinstance(h, float) and np.isnan(h))
        earlier = np.array([], dtype=plain) if none else np.asarray(h)
        arr = np.concatenate([earlier, _one(c, earlier.dtype)])
        out.append([None if _missing(v) else v for v in arr.tolist()] if rows else arr)
    return out


def _missing(value: Any) -> bool:
    import numpy as np
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float | np.floating) and bool(np.isnan(value)))


def _one(value: Any, like: Any):
    """A current value as a one-element array that joins an array of type ``like``."""
    import numpy as np

    if _missing(value):
        if like.kind in "iub":
            return np.array([np.nan])  # promotes the array to float, as Arrow's nulls do
        return np.array([None if like.kind == "O" else np.nan], dtype=like)
    return np.array([value], dtype=like)


class FinkAdapter:
    """A fink-science UDF called as Fink calls it, on the Series the module runner gives.

    Picklable (it holds the UDF's path and imports it again in each Python worker, once).
    Positional arguments: the columns of :meth:`inputs`; keyword arguments: the literals.
    """

    def __init__(self, name: str, call: FinkCall):
        self.call = call
        self.__name__ = f"fink_{name}"
        self._udfs: dict[str, Any] = {}  # path -> UDF, imported once per process
        lits = [a for a in _flat_args(call.args) if isinstance(a, Lit)]
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("columns", inspect.Parameter.VAR_POSITIONAL)]
            + [inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY, default=a.value) for a in lits])
        out: list[str] = []
        for a in _flat_args(call.args):
            if isinstance(a, str):
                field = c_field(a)
                out += [p for p in (history_paths(field) if field else (a,)) if p not in out]
        #: the alert columns the call reads, each once, in order
        self.inputs = tuple(out)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_udfs": {}}

    def udf(self, path: str | None = None) -> Any:
        """The UDF at ``path`` (the call's own by default), imported once."""
        path = path or self.call.udf
        if path not in self._udfs:
            self._udfs[path] = import_udf(path)
        return self._udfs[path]

    def check(self) -> None:
        """Import every UDF of the call (the driver does this at load: a missing one fails there,
        not in every batch); an inner UDF (:class:`Via`) must be a pandas one, as Fink calls it."""
        self.udf()
        for a in self.call.args:
            if isinstance(a, Via) and self.udf(a.udf).evalType in ROW_AT_A_TIME:
                raise ScienceModuleError(f"Fink module {self.call.udf}: inner UDF {a.udf} is not a pandas UDF")

    def arguments(self, columns: Mapping[str, Any], n: int, params: Mapping[str, Any], rows: bool,
                  args: Sequence[Any] | None = None) -> list:
        """The UDF's arguments, in Fink's order."""
        import pandas as pd

        out = []
        for a in self.call.args if args is None else args:
            if isinstance(a, Via):  # another UDF's value, computed here as Fink computes it first
                value = self.udf(a.udf).func(*self.arguments(columns, n, params, False, a.args))
                out.append(value.map(lambda v, key=a.key: None if v is None else v[key]))
            elif isinstance(a, Lit):
                value = params.get(a.name, a.value)
                out.append(pd.Series([value] * n, dtype=object if value is None else None))
            elif c_field(a):
                prv, cur = history_paths(c_field(a))
                arrays = concat(columns[prv], columns[cur], rows)
                out.append(arrays if rows else pd.Series(arrays, dtype=object))
            elif rows:  # one value at a time, as Spark gives them: Python values, None for missing
                out.append([None if _missing(v) else v.item() if hasattr(v, "item") else v for v in columns[a]])
            else:
                out.append(columns[a])
        return out

    def __call__(self, *series: Any, **params: Any):
        import pandas as pd

        columns = dict(zip(self.inputs, series, strict=True))
        n = len(series[0])
        names = list(self.call.outputs)
        if n == 0:  # some modules index their first row: an empty batch has empty outputs
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in names})
        udf = self.udf()
        rows = udf.evalType in ROW_AT_A_TIME
        with quiet():
            args = self.arguments(columns, n, params, rows)
            if rows:
                value = pd.Series([udf.func(*row) for row in zip(*args, strict=True)], dtype=object)
            else:
                value = udf.func(*args)
        if self.call.split == "struct":
            return pd.DataFrame({c: value[c].to_numpy() for c in names})
        if self.call.split == "bands":
            return pd.DataFrame({c: [None if v is None else _plain(v.get(band)) for v in value]
                                 for band, c in enumerate(names, start=1)})
        return pd.DataFrame({names[0]: _plain_series(value)})


def _flat_args(args: Sequence[Any]) -> list[Any]:
    """The arguments, those of a :class:`Via` in its place."""
    out: list[Any] = []
    for a in args:
        out += _flat_args(a.args) if isinstance(a, Via) else [a]
    return out


#: pyspark's evalTypes of a row-at-a-time UDF: ``SQL_BATCHED_UDF``, and ``SQL_ARROW_BATCHED_UDF``,
#: which a plain ``udf(...)`` gets when it is made while a session with Spark 4's default
#: ``spark.sql.execution.pythonUDF.arrow.enabled`` is active (one value at a time all the same)
ROW_AT_A_TIME = (100, 101)


def _plain(value: Any) -> Any:
    """A struct value as a dict of Python values (numpy scalars and NaN made plain)."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _plain_series(value: Any):
    import pandas as pd

    s = value if isinstance(value, pd.Series) else pd.Series(value)
    return s.reset_index(drop=True)


class quiet:
    """Warnings silenced and the chat-posting variables of :data:`SIDE_EFFECT_ENV` hidden for
    the duration of a call into Fink's code."""

    def __enter__(self):
        import os

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._hidden = {k: os.environ.pop(k) for k in list(os.environ) if SIDE_EFFECT_ENV.match(k)}
        return self

    def __exit__(self, *exc: Any) -> None:
        import os

        os.environ.update(self._hidden)
        self._warnings.__exit__(*exc)


def output_types(call: FinkCall, udf: Any) -> dict[str, str]:
    """Fink's output columns and their Spark types, from the UDF's declared return type."""
    from pyspark.sql.types import MapType, StructType

    rt = udf.returnType
    if call.split == "struct":
        if not isinstance(rt, StructType):
            raise ScienceModuleError(f"Fink module {call.udf}: expected a struct return type, got {rt.simpleString()}")
        return {c: rt[c].dataType.simpleString() for c in call.outputs}
    if call.split == "bands":
        if not isinstance(rt, MapType):
            raise ScienceModuleError(f"Fink module {call.udf}: expected a map return type, got {rt.simpleString()}")
        return {c: rt.valueType.simpleString() for c in call.outputs}
    return {call.outputs[0]: rt.simpleString()}


def load_fink_module(path: str, params: Mapping[str, Any] | None = None) -> ScienceModule:
    """The :class:`ScienceModule` that runs the Fink call ``path`` (``fink:<name>`` or its UDF's path)."""
    name, call = call_of(path)
    adapter = FinkAdapter(name, call)
    adapter.check()
    version = _version("fink_science")
    module = ScienceModule(path, adapter, adapter.inputs, output_types(call, adapter.udf()), f"fink-science-{version}")
    return module.bind(params)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def same_value(ours: Any, theirs: Any, rel: float = 1e-6) -> bool:
    """Whether a value computed here equals the one Fink stored: floats to ``rel``, a missing
    value as None or NaN alike, a null struct as a struct of nulls (Arrow gives null where
    Fink's Avro kept NaN), structs and maps key by key."""
    import math

    import numpy as np

    if hasattr(ours, "asDict"):
        ours = ours.asDict(recursive=True)
    if hasattr(theirs, "asDict"):
        theirs = theirs.asDict(recursive=True)
    if isinstance(ours, dict) or isinstance(theirs, dict):
        ours, theirs = ours or {}, theirs or {}
        return all(same_value(ours.get(k), theirs.get(k), rel) for k in set(ours) | set(theirs))
    gone = [v is None or (isinstance(v, float | np.floating) and math.isnan(v)) for v in (ours, theirs)]
    if any(gone):
        return all(gone)
    if isinstance(ours, float | np.floating) or isinstance(theirs, float | np.floating):
        try:
            return math.isclose(float(ours), float(theirs), rel_tol=rel, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(ours == theirs)


def fink_udf_args(func: Callable) -> list[str]:
    """The parameter names of a UDF's function (what Fink's code resolves to columns)."""
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


__all__: Sequence[str] = ["CALLS", "FinkAdapter", "FinkCall", "Lit", "concat", "is_fink_module", "load_fink_module"]
