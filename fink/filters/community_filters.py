"""Fink's community filters (the ``fink-filters`` package), run here unchanged.

A livestream filter of ``fink-filters`` is a pandas UDF returning one boolean per alert
whose parameters are named after columns: Fink resolves each name to a column of the
flattened alert (``fink_utils.spark.utils.get_cols_from_args``: the columns whose name ends
with it; if several, those whose last dotted part is it; if still several, the one at the
root) and sends the selected alerts to the topic ``fink_<filter>_ztf``. This module does
the same in distribution: a topic's filter given as a ``fink_filters`` path is resolved
against the science alerts' columns when the stage starts, then runs in the stage's one
Arrow UDF like any other filter::

    filters:
      fink_vra_ztf: fink_filters.ztf.livestream.filter_vra.filter:vra
      fink_sn_candidates_ztf: fink_filters.ztf.livestream.filter_sn_candidates.filter:sn_candidates

(:func:`livestream` gives every livestream filter under Fink's topic name.)

Notes
-----
Besides the alert's columns, the names Fink's distribution adds are available:
``c<field>c`` arrays (the history followed by the current value, as
:func:`fink.science.community_modules.concat`), ``cstampDatac`` (the science cutout's bytes) and
``linear_fit_slope`` (``lc_features_r``'s, when the ``fink:lc_features`` module ran). A name
Fink's modules produce and this broker produces under another name is taken from the survey
description's ``fink_names`` (e.g. ``cdsxmatch`` from ``xm_type``, ``"Unknown"`` when
missing). A name that resolves to nothing, or ambiguously, stops the stage with the filter's
and the name's. Filters that post to chat services do not: the variables that enable it are
hidden from them (:data:`fink.science.community_modules.SIDE_EFFECT_ENV`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fink.filters.filter_api import AlertFilter, FilterError
from fink.science import community_modules as science_community
from fink.science.community_modules import CONCATENATED, history_paths, import_udf, quiet
from fink.science.science_api import ScienceModule

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

#: the package of Fink's ZTF livestream filters
LIVESTREAM = "fink_filters.ztf.livestream"
#: Fink's topic of a filter: prefix + the filter's name + suffix (``fink_vra_ztf``)
TOPIC_PREFIX, TOPIC_SUFFIX = "fink_", "_ztf"


def is_fink_filter(path: Any) -> bool:
    """Whether ``path`` names a filter of the ``fink_filters`` package."""
    return isinstance(path, str) and path.split(".")[0].split(":")[0] == "fink_filters"


def livestream(names: Sequence[str] | None = None) -> dict[str, str]:
    """Topic -> path of Fink's livestream filters (``names`` of filters, e.g. ``["vra"]``; all if None),
    each topic named as Fink names it."""
    import importlib
    import pkgutil

    package = importlib.import_module(LIVESTREAM)
    found = {m.name.removeprefix("filter_"): f"{LIVESTREAM}.{m.name}.filter:{m.name.removeprefix('filter_')}"
             for m in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)
             if m.name.startswith("filter_")}
    unknown = [n for n in names or [] if n not in found]
    if unknown:
        raise FilterError(f"no Fink livestream filter '{unknown[0]}' (known: {', '.join(found)})")
    return {topic_of(found[n]): found[n] for n in (names or found)}


def topic_of(path: str) -> str:
    """Fink's topic for the filter at ``path``: ``fink_<function>_ztf``."""
    return TOPIC_PREFIX + science_community.split_path(path)[1] + TOPIC_SUFFIX


def flatten_names(schema: "StructType", prefix: str = "") -> list[str]:
    """Every column and every field of a struct column, dotted, as Fink flattens an alert
    (arrays and maps are not entered)."""
    from pyspark.sql.types import StructType

    out = []
    for f in schema.fields:
        name = prefix + f.name
        out.append(name)
        if isinstance(f.dataType, StructType):
            out += flatten_names(f.dataType, name + ".")
    return out


def resolve(argname: str, names: Sequence[str]) -> str:
    """The column Fink gives the parameter ``argname`` among ``names`` (its
    ``get_cols_from_args`` rule); a :class:`FilterError` when none or several fit."""
    found = [n for n in names if n.endswith(argname)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise FilterError(f"no column for '{argname}'")
    exact = [n for n in found if n.split(".")[-1] == argname]
    if len(exact) == 1:
        return exact[0]
    root = [n for n in exact if "." not in n]
    if len(root) == 1:
        return root[0]
    raise FilterError(f"'{argname}' is ambiguous: {', '.join(exact or found)}")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a filter's argument comes from: a column (``path``), a ``c<field>c`` array
    (``field``), or a column under another name with a value for when it is null (``missing``)."""

    path: str = ""
    field: str = ""
    missing: Any = None


def derived(names: Sequence[str], has: Callable[[str], bool], fink_names: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, Source]:
    """The names Fink's distribution adds to alerts whose flattened columns are ``names``
    (``has`` tells whether a dotted path exists, through arrays), and where each comes from."""
    out: dict[str, Source] = {}
    for field in CONCATENATED:
        if all(has(p) for p in history_paths(field)):
            out[f"c{field}c"] = Source(field=field)
    if "cutoutScience.stampData" in names:
        out["cstampDatac"] = Source("cutoutScience.stampData")
    if "lc_features_r.linear_fit_slope" in names:
        out["linear_fit_slope"] = Source("lc_features_r.linear_fit_slope")
    for fink, ours in fink_names.items():
        if fink not in names and ours.get("column") in names:
            out[fink] = Source(ours["column"], missing=ours.get("missing"))
    return out


class FilterAdapter:
    """A fink-filters UDF called as Fink calls it, once its arguments are resolved
    (:func:`resolve_filters`). Picklable: it holds the UDF's path and imports it in the worker."""

    def __init__(self, path: str, sources: Sequence[Source] = ()):
        self.path = path
        self.sources = tuple(sources)
        self.__name__ = science_community.split_path(path)[1]
        self._udf: Any = None
        out: list[str] = []
        for source in self.sources:
            out += [p for p in (history_paths(source.field) if source.field else (source.path,)) if p not in out]
        #: the alert columns the resolved arguments read, each once, in order
        self.inputs = tuple(out)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_udf": None}

    @property
    def udf(self) -> Any:
        if self._udf is None:
            self._udf = import_udf(self.path, FilterError, "Fink filter")
        return self._udf

    def __call__(self, *series: Any):
        import pandas as pd

        columns = dict(zip(self.inputs, series, strict=True))
        n = len(series[0]) if series else 0
        args = []
        for s in self.sources:
            if s.field:
                prv, cur = history_paths(s.field)
                args.append(pd.Series(science_community.concat(columns[prv], columns[cur]), dtype=object))
            elif s.missing is not None:
                args.append(columns[s.path].where(columns[s.path].notna(), s.missing))
            else:
                args.append(columns[s.path])
        if n == 0:
            return pd.Series([], dtype=bool)
        with quiet():
            out = self.udf.func(*args)
        return pd.Series(out).reset_index(drop=True)


def load_fink_filter(path: str) -> ScienceModule:
    """A filter of ``fink_filters`` as a module whose inputs are Fink's argument names, to be
    resolved against the alerts' columns by :func:`resolve_filters` before it runs."""
    udf = import_udf(path, FilterError, "Fink filter")
    if udf.returnType.simpleString() != "boolean":
        raise FilterError(f"Fink filter '{path}': returns {udf.returnType.simpleString()}, not boolean")
    names = tuple(science_community.fink_udf_args(udf.func))
    return ScienceModule(path, FilterAdapter(path), names, {"selected": "boolean"},
                         f"fink-filters-{science_community._version('fink_filters')}")


def resolve_filters(filters: Sequence[AlertFilter], schema: "StructType",
                    fink_names: Mapping[str, Mapping[str, Any]] | None = None) -> list[AlertFilter]:
    """``filters`` with every Fink filter's arguments resolved to columns of ``schema`` as Fink
    resolves them (the others unchanged); a :class:`FilterError` names the filter and argument."""
    from fink.science.science_api import _field_type

    if not any(isinstance(f.module.func, FilterAdapter) and not f.module.func.sources for f in filters):
        return list(filters)
    names = flatten_names(schema)
    return [bind(f, names, lambda p: _field_type(schema, p) is not None, fink_names or {}) for f in filters]


def bind(f: AlertFilter, names: Sequence[str], has: Callable[[str], bool],
         fink_names: Mapping[str, Mapping[str, Any]]) -> AlertFilter:
    """``f`` with its arguments resolved among the flattened columns ``names`` (unchanged if it
    is not one of Fink's filters, or is resolved already)."""
    adapter = f.module.func
    if not isinstance(adapter, FilterAdapter) or adapter.sources:
        return f
    extra = derived(names, has, fink_names)
    every = [*names, *[n for n in extra if n not in names]]
    sources = []
    for arg in f.module.inputs:
        try:
            column = resolve(arg, every)
        except FilterError as exc:
            raise FilterError(f"filter of topic '{f.topic}' ({f.module.name}): argument {exc}; "
                              "docs/fink.md says which of Fink's filters run here") from exc
        sources.append(extra.get(column, Source(column)))
    bound = FilterAdapter(adapter.path, sources)
    return AlertFilter(f.topic, dataclasses.replace(f.module, func=bound, inputs=bound.inputs))
