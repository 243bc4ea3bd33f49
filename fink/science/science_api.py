"""The science module API: declare a function over alert columns, load it by name, apply it.

A science module is a plain Python function over named alert columns. Each input arrives
as a pandas Series (one value per alert; a history field such as ``prv_candidates.magpsf``
arrives as one array per alert), and the function returns a pandas DataFrame with the
declared output columns (a Series when there is one output)::

    from fink.science import module

    @module(inputs=["candidate.magpsf", "prv_candidates.magpsf"],
            outputs={"mag_drop": "double"}, version="1.0")
    def mag_drop(magpsf, history):
        return magpsf - history.map(lambda h: min(h, default=float("nan")))

Configuration lists modules by dotted path (``package.module:function`` or
``package.module.function``); :func:`load_modules` imports them and checks each
declaration, and :func:`apply_modules` runs them in order as Arrow (pandas) UDFs.

Notes
-----
A module that raises on a batch does not stop the stream: its columns are null for that
batch, and the query's observed metrics count the error and keep its text (``fail=True``
raises instead). Each module's time is measured inside the Python worker and summed in the
same metrics, so its cost per alert is known without profiling. Keyword-only parameters of
a module (a catalogue path, a radius) are bound from configuration before the function is
shipped to the workers.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fink.errors import FinkError
from fink.runtime.metrics import now

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

#: output types a module may declare (Spark DDL names)
OUTPUT_TYPES = ("double", "float", "int", "bigint", "boolean", "string", "array<double>", "array<string>")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ScienceModuleError(FinkError, ValueError):
    """A science module cannot be loaded, is declared wrongly, or failed (with ``fail=True``)."""


@dataclasses.dataclass(frozen=True)
class ScienceModule:
    """A loaded module: the function and its declaration."""

    name: str
    func: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: dict[str, str]
    version: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""

    @property
    def key(self) -> str:
        """A metric-safe name: the label if set (a filter's topic), else the function's name."""
        return self.label or self.func.__name__

    def bind(self, params: Mapping[str, Any] | None) -> ScienceModule:
        """This module with its keyword-only parameters set (unknown names are an error)."""
        if params is not None and not isinstance(params, Mapping):
            raise ScienceModuleError(f"science module {self.name}: parameters must be a mapping of name: value, "
                                     f"got {type(params).__name__} {params!r}")
        params = dict(params or {})
        allowed = [p.name for p in inspect.signature(self.func).parameters.values() if p.kind is p.KEYWORD_ONLY]
        unknown = [k for k in params if k not in allowed]
        if unknown:
            raise ScienceModuleError(f"science module {self.name}: unknown parameter '{unknown[0]}' "
                                     f"(its parameters: {', '.join(allowed) or 'none'})")
        # a relative file (``*_path``) is read from where the module is configured (the driver, in
        # the notebook's folder): executors on a cluster run in folders of their own
        params = {k: os.path.abspath(v) if k.endswith("_path") and isinstance(v, str) and v and "://" not in v
                  else v for k, v in params.items()}
        return dataclasses.replace(self, params={**self.params, **params})


def module(inputs: Sequence[str], outputs: Mapping[str, str], version: str = "1.0") -> Callable:
    """Declare a science module: its input columns (in the order of its positional
    parameters), its output columns and their types (:data:`OUTPUT_TYPES`), its version."""
    inputs, outputs = tuple(inputs), dict(outputs)

    def wrap(func: Callable) -> Callable:
        name = f"{func.__module__}.{func.__qualname__}"
        _check_declaration(name, func, inputs, outputs)
        func.__fink_module__ = ScienceModule(name, func, inputs, outputs, str(version))  # type: ignore[attr-defined]
        return func

    return wrap


def _check_declaration(name: str, func: Callable, inputs: tuple[str, ...], outputs: dict[str, str]) -> None:
    if not inputs or not all(isinstance(c, str) and c for c in inputs):
        raise ScienceModuleError(f"science module {name}: 'inputs' must be a non-empty list of column names")
    if not outputs:
        raise ScienceModuleError(f"science module {name}: 'outputs' must name at least one column")
    for col, dtype in outputs.items():
        if not _NAME.match(col):
            raise ScienceModuleError(f"science module {name}: output name '{col}' is not a valid column name")
        if dtype not in OUTPUT_TYPES:
            raise ScienceModuleError(f"science module {name}: output '{col}' has type '{dtype}'; "
                                     f"use one of {', '.join(OUTPUT_TYPES)}")
    params = inspect.signature(func).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)  # f(*columns): any number, in order
    if len(positional) != len(inputs) and not (variadic and len(positional) <= len(inputs)):
        raise ScienceModuleError(
            f"science module {name}: declares {len(inputs)} input(s) ({', '.join(inputs)}) but the function "
            f"takes {len(positional)} positional parameter(s) ({', '.join(p.name for p in positional)})")


def split_path(path: str) -> tuple[str, str]:
    """``pkg.mod:attr`` or ``pkg.mod.attr`` -> (``pkg.mod``, ``attr``)."""
    modname, sep, attr = path.partition(":")
    if not sep:
        modname, _, attr = path.rpartition(".")
    return modname, attr


def import_attribute(path: str, kind: str, error: type[Exception], hint: str = "") -> Any:
    """The object at ``path`` (``pkg.mod:attr`` or ``pkg.mod.attr``); an ``error`` naming ``kind``
    and ``path`` when it cannot be imported (``hint`` added to an import error)."""
    if not isinstance(path, str):
        raise error(f"{kind} {path!r}: give it as a string 'package.module:function', not {type(path).__name__}")
    modname, attr = split_path(path)
    # only dotted names reach the import system (".x" would be a relative import, a TypeError)
    if not attr.isidentifier() or not all(part.isidentifier() for part in modname.split(".")):
        raise error(f"{kind} '{path}': give it as 'package.module:function'")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise error(f"{kind} '{path}': cannot import '{modname}' ({exc}){hint}") from exc
    except Exception as exc:  # the user's module raised while being imported: name it, chain the cause
        raise error(f"{kind} '{path}': importing '{modname}' failed ({type(exc).__name__}: {exc})") from exc
    found = getattr(mod, attr, None)
    if found is None:
        raise error(f"{kind} '{path}': '{modname}' has no attribute '{attr}'")
    return found


def import_declared(path: str, kind: str = "science module", decorator: str = "@fink.science.module",
                    error: type[Exception] | None = None) -> ScienceModule:
    """The declaration of the function at ``path`` (``pkg.mod:func`` or ``pkg.mod.func``).

    ``kind`` and ``decorator`` name what is loaded in the error messages (modules, filters).
    """
    error = error or ScienceModuleError
    func = import_attribute(path, kind, error)
    declared = getattr(func, "__fink_module__", None)
    if not isinstance(declared, ScienceModule) or getattr(func, "__fink_kind__", "science module") != kind:
        raise error(f"{kind} '{path}': '{split_path(path)[1]}' is not declared with {decorator}")
    return dataclasses.replace(declared, name=path)


def load_module(path: str, params: Mapping[str, Any] | None = None) -> ScienceModule:
    """Import the module at ``path`` (``pkg.mod:func`` or ``pkg.mod.func``) and bind ``params``.

    A Fink community module (``fink:<name>`` or a ``fink_science`` path) is run unchanged
    through :mod:`fink.science.community_modules`.
    """
    from fink.science import community_modules as community

    if community.is_fink_module(path):
        return community.load_fink_module(path, params)
    return import_declared(path).bind(params)


def load_modules(paths: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None) -> list[ScienceModule]:
    """Load every module of ``paths``; ``params`` maps a path (or a function's name) to its keyword parameters."""
    if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
        raise ScienceModuleError(f"science modules must be a list of 'package.module:function' paths, got {paths!r}")
    if params is not None and not isinstance(params, Mapping):
        raise ScienceModuleError("science module parameters must map a module's path to its parameters, "
                                 f"got {type(params).__name__} {params!r}")
    params = dict(params or {})
    # a module's parameters are keyed by its path, or by its function's name alone ("crossmatch"),
    # which serves a survey's own version of the module as well
    short = {p: p.replace(":", ".").rsplit(".", 1)[-1] for p in paths}
    stray = [p for p in params if p not in paths and p not in short.values()]
    if stray:
        raise ScienceModuleError(f"science module parameters given for '{stray[0]}', which is not in the module list")
    mods = [load_module(p, params.get(p, params.get(short[p]))) for p in paths]
    seen: dict[str, str] = {}
    for m in mods:
        for col in m.outputs:
            if col in seen:
                raise ScienceModuleError(f"science module {m.name}: output '{col}' is already produced by {seen[col]}")
            seen[col] = m.name
    return mods


def _field_type(schema: "StructType", path: str):
    """The Spark type at a dotted ``path`` (through arrays of structs), or None."""
    from pyspark.sql.types import ArrayType, StructType

    dtype: Any = schema
    wrapped = 0
    for part in path.split("."):
        while isinstance(dtype, ArrayType):
            dtype, wrapped = dtype.elementType, wrapped + 1
        if not isinstance(dtype, StructType) or part not in dtype.fieldNames():
            return None
        dtype = dtype[part].dataType
    for _ in range(wrapped):
        dtype = ArrayType(dtype)
    return dtype


def check_inputs(modules: Sequence[ScienceModule], schema: "StructType") -> None:
    """Fail with the module's name if one of its inputs is not a column of ``schema``.

    Columns produced by earlier modules count as available to later ones.
    """
    produced: set[str] = set()
    for m in modules:
        for col in m.inputs:
            if col not in produced and _field_type(schema, col) is None:
                raise ScienceModuleError(f"science module {m.name}: input column '{col}' is not in the alert "
                                         f"schema (nor an output of an earlier module)")
        produced.update(m.outputs)


def _empty(outputs: dict[str, str], n: int):
    import numpy as np
    import pandas as pd

    cols = {}
    for col, dtype in outputs.items():
        if dtype in ("double", "float"):
            cols[col] = pd.Series(np.full(n, np.nan))
        else:
            cols[col] = pd.Series([None] * n, dtype=object)
    return pd.DataFrame(cols)


def _conform(m: ScienceModule, out: Any, n: int):
    """The module's result as a frame of exactly its declared columns and ``n`` rows."""
    import pandas as pd

    if isinstance(out, pd.Series) and len(m.outputs) == 1:
        out = out.to_frame(next(iter(m.outputs)))
    if not isinstance(out, pd.DataFrame):
        raise ScienceModuleError(f"science module {m.name}: returned {type(out).__name__}, "
                                 "not a pandas DataFrame (or a Series for one output)")
    missing = [c for c in m.outputs if c not in out.columns]
    if missing:
        raise ScienceModuleError(f"science module {m.name}: result lacks declared column '{missing[0]}'")
    if len(out) != n:
        raise ScienceModuleError(f"science module {m.name}: returned {len(out)} rows for {n} alerts")
    out = out[list(m.outputs)].reset_index(drop=True)
    for col, dtype in m.outputs.items():
        if dtype in ("double", "float"):
            out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
        elif dtype in ("int", "bigint"):
            out[col] = out[col].astype("Int64")
        elif dtype == "boolean":
            out[col] = out[col].astype("boolean")
    return out


def run_module(m: ScienceModule, series: Sequence[Any], fail: bool = False):
    """Run ``m`` on one chunk of alerts: its outputs plus ``_error`` (text or None) and ``_seconds``.

    This is what each Python worker does per Arrow batch; it is plain pandas, so a notebook
    can call it directly to try a module.
    """
    import pandas as pd

    n = len(series[0]) if len(series) else 0
    t0 = time.perf_counter()
    error = None
    try:
        out = _conform(m, m.func(*series, **m.params), n)
    except Exception as exc:  # a module's failure is data about the batch, unless asked to fail
        if fail:
            raise ScienceModuleError(f"science module {m.name} failed: {type(exc).__name__}: {exc}") from exc
        out = _empty(m.outputs, n)
        error = f"{type(exc).__name__}: {exc}"[:500]
    seconds = time.perf_counter() - t0
    out["_error"] = pd.Series([error] * n, dtype=object)
    out["_seconds"] = [seconds] + [0.0] * (n - 1) if n else []
    return out


def run_chain(modules: Sequence[ScienceModule], columns: Mapping[str, Any], fail: bool = False):
    """Run ``modules`` in order on one chunk: each sees the alert columns plus earlier outputs.

    Returns every module's outputs, and per module ``_error_<i>`` and ``_seconds_<i>``.
    """
    import pandas as pd

    available = dict(columns)
    parts = []
    for i, m in enumerate(modules):
        out = run_module(m, [available[c] for c in m.inputs], fail)
        available.update({c: out[c] for c in m.outputs})
        parts.append(out.rename(columns={"_error": f"_error_{i}", "_seconds": f"_seconds_{i}"}))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def _chain_udf(modules: Sequence[ScienceModule], inputs: list[str], fail: bool, stamp: str | None = None):
    """The function each Python worker runs per Arrow batch: the inputs come as one DataFrame.

    With ``stamp``, a column of that name holds the time the chain ended on the chunk.
    """
    import pandas as pd

    def run(chunk):
        out = run_chain(modules, {path: chunk[f"_in{k}"] for k, path in enumerate(inputs)}, fail)
        if stamp:
            out[stamp] = pd.Timestamp.now(tz="UTC")
        return out

    run.__annotations__ = {"chunk": pd.DataFrame, "return": pd.DataFrame}  # how pandas_udf infers its kind
    return run


def apply_modules(df: "DataFrame", modules: Sequence[ScienceModule], fail: bool = False,
                  observe_as: str | None = None, stamp: str | None = None,
                  metrics_column: str | None = None) -> "DataFrame":
    """Add every module's output columns to ``df``, the modules running in order in one Arrow UDF.

    With ``observe_as``, the query's observed metrics of that name get, per module,
    ``<key>_seconds`` (summed worker time), ``<key>_errors`` (alerts whose batch failed)
    and ``<key>_error`` (one error text). With ``stamp``, a timestamp column of that name
    holds when the modules ended on the alert (the current time when there are no modules).
    With ``metrics_column``, a column of that name keeps each alert's share of those metrics,
    for :func:`module_metrics` to sum (a batch that is cached, where observed metrics are lost).

    Notes
    -----
    One UDF for the chain, rather than one per module: each alert's inputs cross to Python
    once, a module reads earlier modules' outputs without a round trip through the JVM, and
    a task needs one Python worker (in which a model or catalogue, once loaded, stays).
    """

    check_inputs(modules, df.schema)
    first, second = ModuleColumns(modules, fail, stamp, metrics_column).around(df.columns)
    df = df.select(*first)
    if observe_as and modules:
        df = df.observe(observe_as, *module_metrics(modules, ModuleColumns.TMP))
    return df.select(*second)


class ModuleColumns:
    """The columns :func:`apply_modules` adds, built once: ``df.select(*first).select(*second)``
    for frames that all have the same columns (each micro-batch of a one-pass step), with no
    schema to ask the JVM for and no UDF to build again per batch."""

    TMP = "__modules"

    def __init__(self, modules: Sequence[ScienceModule], fail: bool = False, stamp: str | None = None,
                 metrics_column: str | None = None):
        from pyspark.sql import functions as F
        from pyspark.sql.functions import pandas_udf

        #: the UDF's call (None without modules), the modules' values, the stamp, the metrics
        self.call = None
        self.values: list = []
        self.stamp: list = [now().alias(stamp)] if stamp else []
        self.metrics: list = [F.lit(None).cast("struct<_none:string>").alias(metrics_column)] if metrics_column else []
        if not modules:
            self.outputs = [*self.metrics, *self.stamp]
            return
        produced: set[str] = set()
        inputs: list[str] = []
        for m in modules:
            inputs += [c for c in m.inputs if c not in produced and c not in inputs]
            produced.update(m.outputs)
        fields = [f"{c} {t}" for m in modules for c, t in m.outputs.items()]
        fields += [f"_error_{i} string, _seconds_{i} double" for i in range(len(modules))]
        fields += [f"{stamp} timestamp"] if stamp else []
        fn = pandas_udf(_chain_udf(list(modules), inputs, fail, stamp), ", ".join(fields))  # type: ignore[call-overload]
        # one struct argument (a DataFrame in the worker) whatever the number of inputs
        self.call = fn(F.struct(*[F.col(c).alias(f"_in{k}") for k, c in enumerate(inputs)])).alias(self.TMP)
        tmp = F.col(self.TMP)
        self.values = [tmp.getField(c).alias(c) for m in modules for c in m.outputs]
        self.stamp = [tmp.getField(stamp).alias(stamp)] if stamp else []
        if metrics_column:
            self.metrics = [F.struct(*[tmp.getField(f"_{what}_{i}").alias(f"_{what}_{i}")
                                       for i in range(len(modules)) for what in ("error", "seconds")]
                                     ).alias(metrics_column)]
        self.outputs = [*self.values, *self.stamp, *self.metrics]

    def around(self, columns: Sequence[str]) -> tuple[list, list]:
        """The two selections over a frame of ``columns``: its columns and the UDF's call, then
        its columns and the outputs."""
        from pyspark.sql import functions as F

        kept = [F.col(f"`{c}`") for c in columns]
        if self.call is None:
            return kept, [*kept, *self.outputs]
        return [*kept, self.call], [*kept, *self.outputs]


def module_metrics(modules: Sequence[ScienceModule], column: str) -> list:
    """Aggregates of the per-module metrics ``column`` holds (``apply_modules``'s struct):
    ``<key>_seconds`` (summed worker time), ``<key>_errors``, ``<key>_error`` (one text)."""
    from pyspark.sql import functions as F

    out = []
    for i, m in enumerate(modules):
        err, secs = F.col(column).getField(f"_error_{i}"), F.col(column).getField(f"_seconds_{i}")
        out += [F.sum(secs).alias(f"{m.key}_seconds"), F.count(err).alias(f"{m.key}_errors"),
                F.max(err).alias(f"{m.key}_error")]
    return out


def add_metrics(into: dict[str, dict[str, Any]], values: Mapping[str, Any] | None) -> None:
    """Sum one batch's observed module metrics (``observe_as`` of :func:`apply_modules`) into
    ``into``: key -> ``{"seconds", "errors", "error"}`` (the last error text seen)."""
    for key, value in (values or {}).items():
        name, _, what = key.rpartition("_")
        entry = into.setdefault(name, {"seconds": 0.0, "errors": 0, "error": None})
        if what == "seconds":
            entry["seconds"] += float(value or 0)
        elif what == "errors":
            entry["errors"] += int(value or 0)
        elif what == "error" and value:
            entry["error"] = value


def provenance(modules: Sequence[ScienceModule]) -> dict[str, str]:
    """Module name -> version, as recorded on every output alert."""
    return {m.name: m.version for m in modules}
