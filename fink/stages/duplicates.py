"""The alert ids already archived, by night: what a new alert must not repeat (stream2raw's
duplicate check, and checkstream's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class NightIds:
    """The alert ids of one night, for membership tests of a batch: a sorted int64 array (8
    bytes an id: a Rubin night of 10 million ids in 80 MB, where a Python set takes 600)
    and the ids added since, merged in once they are many."""

    MERGE = 200_000

    def __init__(self, ids=()):
        import numpy as np

        values = np.asarray(ids, dtype=np.int64) if hasattr(ids, "__len__") and not isinstance(ids, (set, frozenset)) \
            else np.fromiter(ids, dtype=np.int64)
        self.sorted = np.unique(values)
        self.recent: set[int] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def __iter__(self):
        yield from (int(i) for i in self.sorted)
        yield from self.recent

    def update(self, ids) -> None:
        import numpy as np

        self.recent.update(int(i) for i in ids)
        if len(self.recent) >= self.MERGE:
            self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, dtype=np.int64))
            self.recent.clear()

    def contains(self, ids) -> "list[bool]":
        """Per id of ``ids`` (a batch), whether the night has it: O(batch log night)."""
        import numpy as np

        values = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(self.sorted, values)
        found = (at < len(self.sorted)) & (self.sorted[np.minimum(at, max(len(self.sorted) - 1, 0))] == values) \
            if len(self.sorted) else np.zeros(len(values), dtype=bool)
        return [bool(f) or int(v) in self.recent for f, v in zip(found, values, strict=True)]



class ArchivedCandids:
    """The id of every archived alert (ZTF ``candid``; the field path ``key``), by night: what
    a new alert must not repeat.

    A night is read from the archive (its ``candid`` column alone) the first time a batch
    holds it, then kept up to date with what each committed batch adds, so the query does
    not re-read its own output every batch. A fresh instance (a restart) reads again. Only the
    ``keep`` nights used last are kept (:class:`NightIds`); an older one is read again if a
    late alert needs it.
    """

    def __init__(self, spark: "SparkSession", raw_path: str, key: str = "candid", keep: int = 3):
        from collections import OrderedDict

        self.spark, self.raw_path, self.key, self.keep = spark, raw_path, key, keep
        self.nights: "OrderedDict[str, NightIds | set[int]]" = OrderedDict()

    def night(self, night: str) -> "NightIds | set[int]":
        from pyspark.sql import functions as F

        from fink.io.filestore import FileStore

        if night not in self.nights:
            store = FileStore(self.spark, self.raw_path)
            seen = NightIds()
            if store.files(f"night={night}"):
                table = self.spark.read.option("basePath", store.root).parquet(f"{store.root}/night={night}")
                seen = NightIds(table.select(F.col(self.key).alias("id")).toPandas()["id"].to_numpy())
            self.loaded(night, seen)
        else:
            self.nights.move_to_end(night)
        return self.nights[night]

    def loaded(self, night: str, ids: "NightIds") -> None:
        """Keep the ids of ``night``, read from the archive; forget the night used longest ago
        beyond ``keep``."""
        self.nights[night] = ids
        while len(self.nights) > self.keep:
            self.nights.popitem(last=False)

    def add(self, alerts) -> None:
        """Record the alerts (pandas: candid, night) a batch has just committed."""
        for night, candids in alerts.groupby("night")["candid"]:
            if night in self.nights:
                self.nights[night].update(candids.tolist())



def find_duplicates(alerts, archived: ArchivedCandids):
    """The rows of ``alerts`` (pandas: topic, partition, offset, candid, night) whose candid is
    already archived, or appeared earlier in the batch (by topic, partition, offset): the
    archive's ids are looked up per alert of the batch, not read whole."""
    import pandas as pd

    dup = alerts["candid"].duplicated(keep="first")  # alerts are sorted by topic, partition, offset
    for night, candids in alerts.groupby("night")["candid"]:
        seen = archived.night(night)
        if len(seen):
            found = seen.contains(candids.tolist()) if isinstance(seen, NightIds) else \
                [c in seen for c in candids.tolist()]
            dup |= pd.Series(found, index=candids.index).reindex(alerts.index, fill_value=False)
    return alerts[dup]
