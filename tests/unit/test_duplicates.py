"""Duplicate detection of stream2raw on a batch's staged keys (no Spark needed once a night is known)."""

import pandas as pd

from fink.stages.stream2raw import ArchivedCandids, find_duplicates


def index_with(nights):
    index = ArchivedCandids(spark=None, raw_path="unused")
    index.nights = {n: set(c) for n, c in nights.items()}
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
    assert index.nights == {"20261127": {1, 2}}  # an unloaded night is read whole when first needed
    assert find_duplicates(keys([("t", 0, 9, 2, "20261127")]), index)["candid"].tolist() == [2]
