"""The filter API: a plain function over named alert columns returning a boolean mask.

A filter is declared like a science module, with its inputs (alert fields by dotted path,
and the columns science modules added) but no outputs to name: it returns one boolean per
alert, ``True`` for the alerts its topic should receive::

    from fink.filters import alert_filter

    @alert_filter(inputs=["snia_prob", "candidate.ndethist"], version="1.0")
    def early_snia(prob, ndethist, *, threshold: float = 0.5):
        return (prob > threshold) & (ndethist <= 20)

Configuration maps each topic to a filter by dotted path (``{"fink_early_snia":
"mypkg.filters:early_snia"}``) and optionally the filter's keyword parameters.

Notes
-----
Every filter of a deployment runs in the same Arrow UDF, once per micro-batch (the
machinery of :func:`fink.science.science_api.apply_modules`): the cost of a batch grows with the
filters' own work, not with one query or one pass over the data per filter. A filter that
raises selects nothing for that chunk of alerts; its error count and text land in the
query's metrics and the other filters go on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fink.errors import FinkError
from fink.science.science_api import ScienceModule, ScienceModuleError, apply_modules, import_declared, module

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

KIND = "filter"
#: Kafka's topic names: letters, digits, '.', '_' and '-', at most 249 characters
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: the column that holds, per alert, the indices of the filters that selected it
SELECTED = "_selected"


class FilterError(FinkError, ValueError):
    """A filter cannot be loaded or is declared wrongly, or a topic name is invalid."""


@dataclasses.dataclass(frozen=True)
class AlertFilter:
    """A loaded filter and the topic its selection goes to."""

    topic: str
    module: ScienceModule

    @property
    def name(self) -> str:
        return self.module.name


def label(topic: str) -> str:
    """The metric-safe name of a topic (its filter's metrics are named after it)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", topic)


def alert_filter(inputs: Sequence[str], version: str = "1.0") -> Callable:
    """Declare a filter: its input columns, in the order of its positional parameters."""
    declare = module(inputs, {"selected": "boolean"}, version)

    def wrap(func: Callable) -> Callable:
        try:
            declare(func)
        except ScienceModuleError as exc:
            raise FilterError(str(exc).replace("science module", KIND, 1)) from exc
        func.__fink_kind__ = KIND  # type: ignore[attr-defined]
        return func

    return wrap


def load_filters(filters: Mapping[str, str], params: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> list[AlertFilter]:
    """Load ``{topic: dotted path}``; ``params`` maps a topic to its filter's keyword parameters."""
    if not isinstance(filters, Mapping):
        raise FilterError(f"filters must map each topic to a filter's 'package.module:function' path, "
                          f"got {type(filters).__name__} {filters!r}")
    if params is not None and not isinstance(params, Mapping):
        raise FilterError(f"filter parameters must map a topic to its filter's parameters, "
                          f"got {type(params).__name__} {params!r}")
    params = dict(params or {})
    stray = [t for t in params if t not in filters]
    if stray:
        raise FilterError(f"filter parameters given for topic '{stray[0]}', which has no filter")
    loaded = []
    for k, (topic, path) in enumerate(filters.items()):
        if not isinstance(topic, str) or not _TOPIC.match(topic) or topic.endswith("_schema"):
            raise FilterError(f"filter '{path}': topic '{topic}' is not a valid Kafka topic name "
                              "(letters, digits, '.', '_', '-'; not ending in '_schema')")
        try:
            from fink.filters import community_filters  # Fink's own filters: resolved when the stage starts

            if community_filters.is_fink_filter(path):
                declared = community_filters.load_fink_filter(path)
            else:
                declared = import_declared(path, KIND, "@fink.filters.alert_filter", FilterError)
            bound = declared.bind(params.get(topic))
        except (ScienceModuleError, FilterError) as exc:  # the path's error, or its parameters'
            detail = str(exc).removeprefix("science module ").removeprefix(f"{KIND} ")
            raise FilterError(f"filter of topic '{topic}': {detail}") from exc
        # each filter writes its own column; metrics are named after its topic
        loaded.append(AlertFilter(topic, dataclasses.replace(bound, outputs={f"_sel{k}": "boolean"},
                                                             label=label(topic))))
    return loaded


def apply_filters(df: "DataFrame", filters: Sequence[AlertFilter], observe_as: str | None = None,
                  metrics_column: str | None = None, fink_names: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> "DataFrame":
    """Add :data:`SELECTED`: per alert, the indices (in ``filters``) of the filters that selected it.

    A null answer (or a failed filter) does not select. With ``observe_as``, the metrics of
    that name hold per topic ``<topic>_seconds``, ``<topic>_errors`` and ``<topic>_error``.
    Fink's filters (``fink_filters`` paths) get their arguments from ``df``'s columns as Fink
    resolves them, ``fink_names`` naming the columns that stand for Fink's (a survey's
    ``fink_columns()``; by default those of every survey: :data:`fink.survey.description.FINK_NAMES`).
    """
    from pyspark.sql import functions as F

    from fink.filters.community_filters import resolve_filters
    from fink.survey.description import FINK_NAMES

    filters = resolve_filters(filters, df.schema, FINK_NAMES if fink_names is None else fink_names)
    if not filters:
        return df.withColumn(SELECTED, F.array().cast("array<int>"))
    try:
        df = apply_modules(df, [f.module for f in filters], observe_as=observe_as, metrics_column=metrics_column)
    except ScienceModuleError as exc:  # an input column that is not in the alerts
        raise FilterError(str(exc).replace("science module", KIND, 1)) from exc
    return (df.withColumn(SELECTED, selected([F.col(f"_sel{k}") for k in range(len(filters))]))
            .drop(*[f"_sel{k}" for k in range(len(filters))]))


def selected(answers: Sequence["Column"]) -> "Column":
    """:data:`SELECTED` from each filter's answer (in filter order): the indices of those that
    said true (a null answer does not select)."""
    from pyspark.sql import functions as F

    flags = [F.when(F.coalesce(a, F.lit(False)), F.lit(k)) for k, a in enumerate(answers)]
    return F.filter(F.array(*flags), lambda k: k.isNotNull())
