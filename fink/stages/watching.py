"""The watchlists in the distribution stage: the registry read again when it changed, each
batch's alerts matched on the workers, the matches as messages of each list's topic.

Notes
-----
:meth:`Watcher.refresh` runs at the start of every micro-batch: one small file read (the
registry's version, :func:`fink.filters.watchlists.version`); when it moved, the lists are
loaded and indexed again, their topics created and their schema published, and the matching
UDF is built around the new index (Spark ships it to the workers with the batch's tasks, as a
broadcast when large). A batch therefore matches against the lists as they were when it
started; an update reaches the next batch, without a restart.

A watchlist topic's alerts are the distributed alerts (the same Avro layout as a topic that
keeps every field) plus :data:`fink.filters.watchlists.FIELDS`, one encoding for every list.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fink.filters import watchlists as wl
from fink.log import logger
from fink.stages.topics import Encoding, prepare_topics
from fink.survey.avro import avro_schema

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import StructType

    from fink.survey.description import Survey

#: the column of a batch's matches: per alert, ``array<struct<_k, watchlist_entry, watchlist_sep_arcsec>>``
WATCH = "_watch"
WATCH_TYPE = "array<struct<_k:int, watchlist_entry:string, watchlist_sep_arcsec:double>>"


class Watcher:
    """The watchlists of one distribution query.

    Parameters
    ----------
    root
        The registry folder (:func:`fink.filters.watchlists.registry`).
    survey
        Where an alert's position and object id are (its description's ``ra``, ``dec``,
        ``object_id``).
    alert_schema
        The distributed alerts' columns (:func:`fink.stages.topics.alert_columns`), for the
        topics' Avro layout.
    bootstrap, partitions, retention_ms
        Where and how the lists' topics are created.
    """

    def __init__(self, root: str, survey: "Survey", alert_schema: "StructType", bootstrap: str,
                 partitions: int = 1, retention_ms: int = 7 * 24 * 3600 * 1000):
        from pyspark.sql.types import DoubleType, StringType, StructField, StructType

        self.root, self.survey, self.bootstrap = root, survey, bootstrap
        self.partitions, self.retention_ms = partitions, retention_ms
        extra = [StructField("watchlist_entry", StringType()), StructField("watchlist_sep_arcsec", DoubleType())]
        self.fields = tuple([*alert_schema.fieldNames(), *wl.FIELDS])
        self.schema = json.dumps(avro_schema(StructType([*alert_schema.fields, *extra])))
        self.index = wl.index([], -1)
        self.created: set[str] = set()
        self._column: tuple[int, int, Any] | None = None  # (version, first topic, column) last built

    @property
    def inputs(self) -> list[str]:
        """The alert columns the match reads (position, then the object ids)."""
        return [self.survey.ra, self.survey.dec, *self.survey.object_id]

    def refresh(self) -> bool:
        """Load the lists again when the registry changed since the last call; True if it did."""
        number = wl.version(self.root)
        if number == self.index.version:
            return False
        lists = wl.load(self.root)
        index = wl.index(lists, number)
        new = [t for t in index.topics if t not in self.created]
        if new:
            prepare_topics(self.bootstrap, [Encoding(self.fields, self.schema, tuple(range(len(new))))], new,
                           self.partitions, self.retention_ms)
            self.created.update(new)
        logger.info("distribution: watchlists version %d: %d lists, %d entries", number, len(lists), len(index))
        self.index = index
        return True

    def topics(self) -> list[str]:
        """The lists' topics, in the order of the matches' list numbers."""
        return list(self.index.topics)

    def encoding(self, first: int) -> Encoding:
        """The lists' encoding, their topics numbered from ``first`` in the batch's topics."""
        return Encoding(self.fields, self.schema, tuple(range(first, first + len(self.index.topics))))

    def column(self, first: int) -> "Column":
        """Each alert's matches (:data:`WATCH`), the lists' topics numbered from ``first``;
        an empty array for every alert when there is no list."""
        from pyspark.sql import functions as F

        if not self.index.topics:
            return F.array().cast(WATCH_TYPE).alias(WATCH)
        if self._column is not None and self._column[:2] == (self.index.version, first):
            return self._column[2]
        index = self.index

        def watch(ra, dec, *ids):
            import pandas as pd

            oid = ids[0]
            for more in ids[1:]:
                oid = oid.where(oid.notna(), more)
            found = wl.match(index, ra.to_numpy(), dec.to_numpy(), oid.astype(object).where(oid.notna(), None))
            out: list[list[dict[str, Any]]] = [[] for _ in range(len(ra))]
            for row, k, entry, sep in found.itertuples(index=False):
                out[row].append({"_k": first + int(k), "watchlist_entry": entry,
                                 "watchlist_sep_arcsec": None if pd.isna(sep) else float(sep)})
            return pd.Series(out)

        udf = F.pandas_udf(watch, WATCH_TYPE)  # type: ignore[call-overload]
        columns = [F.col(c).cast("string") if k >= 2 else F.col(c) for k, c in enumerate(self.inputs)]
        self._column = (index.version, first, udf(*columns).alias(WATCH))
        return self._column[2]


def messages(batch: Any, enc: Encoding, added: dict[str, Any] | None = None) -> Any:
    """One message per (alert, list it matched) of a batch with :data:`WATCH`: ``_k`` (the
    list's topic number) and ``value`` (the alert with the match's fields, in ``enc``'s Avro)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    added = added or {}
    hit = batch.where(F.size(F.col(WATCH)) > 0).select("*", F.explode(WATCH).alias("_w"))
    own = {f: F.col(f"_w.{f}") for f in wl.FIELDS}
    fields = [own.get(f, added.get(f, F.col(f))).alias(f) for f in enc.fields]
    return hit.select(F.col("_w._k").alias("_k"), to_avro(F.struct(*fields), enc.schema).alias("value"))
