"""Duplicate detection of stream2raw on a batch's staged keys (no Spark needed once a night is known)."""

from collections import OrderedDict

import numpy as np
import pandas as pd

from fink.stages.duplicates import ArchivedCandids, NightIds, find_duplicates


def index_with(nights):
    index = ArchivedCandids(spark=None, raw_path="unused")
    index.nights = OrderedDict((n, NightIds(c)) for n, c in nights.items())
    return index


def keys(rows):
    return pd.DataFrame(rows, columns=["topic", "partition", "offset", "candid", "night"])


def test_the_first_copy_in_a_batch_is_kept_and_later_ones_are_duplicates():
    batch = keys([("t", 0, 1, 10, "20261127"), ("t", 0, 2, 11, "20261127"), ("t", 0, 3, 10, "20261127")])
    dups = find_duplicates(batch, index_with({"20261127": set()}))
    assert dups[["offset", "candid"]].values.tolist() == [[3, 10]]


def test_an_alert_already_archived_that_night_is_a_duplicate_and_other_nights_are_not_looked_at():
    batch = keys([("t", 0, 1, 10, "20261127"), ("t", 0, 2, 20, "20261128")])
    dups = find_duplicates(batch, index_with({"20261127": {10}, "20261128": {10}}))
    assert dups["candid"].tolist() == [10]


def test_committed_alerts_join_the_index_of_nights_already_loaded():
    index = index_with({"20261127": {1}})
    index.add(keys([("t", 0, 5, 2, "20261127"), ("t", 0, 6, 3, "20261128")]))
    assert {n: set(ids) for n, ids in index.nights.items()} == {"20261127": {1, 2}}  # others: read when needed
    assert find_duplicates(keys([("t", 0, 9, 2, "20261127")]), index)["candid"].tolist() == [2]


def test_a_night_of_ids_answers_for_a_batch_as_a_set_would_and_old_nights_are_evicted():
    rng = np.random.default_rng(5)
    ids = rng.integers(-(2 ** 62), 2 ** 62, 50_000)
    night = NightIds(ids[:30_000])
    night.MERGE = 5_000
    night.update(ids[30_000:40_000].tolist())  # merged into the sorted ids
    night.update(ids[40_000:40_010].tolist())  # still recent
    batch = np.concatenate([ids[::997], rng.integers(-(2 ** 62), 2 ** 62, 100), ids[40_000:40_010]])
    assert night.contains(batch) == [int(b) in set(ids[:40_010].tolist()) for b in batch]
    assert len(night) == 40_010 and NightIds().contains([1, 2]) == [False, False]
    index = index_with({"20261125": [1], "20261126": [2], "20261127": [3]})
    index.night("20261125")  # used again: the most recent
    index.loaded("20261128", NightIds([4]))  # a fourth night read: the one used longest ago goes
    assert list(index.nights) == ["20261127", "20261125", "20261128"]
