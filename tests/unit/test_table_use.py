"""Which query a table's stream record belongs to: bound to the query's id, never taken by a late
listener event of an earlier query of the same name (the compaction would then run under a stage)."""

import json

import pytest

from fink.io import table_use


class Store:
    """A stand-in for :class:`fink.io.filestore.FileStore`: what was written last, by record name."""

    root = "/raw"

    def __init__(self):
        self.files = {}

    def replace_text(self, text, *parts):
        self.files[parts[-1]] = json.loads(text)


@pytest.fixture
def store(monkeypatch):
    for name, empty in (("_PENDING", {}), ("_RUNNING", {}), ("_ENDED", set())):
        monkeypatch.setattr(table_use, name, empty)
    return Store()


def built(store, query, name):
    """What :func:`table_use.attach` leaves: a record that says running, pending under the query's name."""
    record = {"query": query, "running": True}
    store.files[name] = dict(record)
    table_use._PENDING.setdefault(query, []).append((store, name, record))


def test_late_events_of_an_earlier_query_leave_a_later_one_of_the_same_name_running(store):
    built(store, "raw2science", "first")
    table_use.started("raw2science", "id-1")  # streaming.start, as start() returns
    table_use.ended("raw2science", "id-1")  # run_until saw it stopped
    built(store, "raw2science", "second")
    table_use.started("raw2science", "id-1")  # the listener's start event of the first, late
    table_use.ended("raw2science", "id-1")  # and its end event
    assert store.files["first"]["running"] is False and "heartbeat" in store.files["first"]
    assert store.files["second"] == {"query": "raw2science", "running": True}  # untouched by the late events
    table_use.started("raw2science", "id-2")
    table_use.beat("id-2")
    assert store.files["second"]["running"] is True and "heartbeat" in store.files["second"]


def test_the_end_of_a_query_run_until_did_not_see_stop_releases_only_its_own_records(store):
    built(store, "raw2science", "first")
    table_use.started("raw2science", "id-1")  # stop timed out: run_until did not release it
    built(store, "raw2science", "second")
    table_use.started("raw2science", "id-2")
    table_use.ended("raw2science", "id-1")  # the listener hears of the first's end, after the second started
    assert store.files["first"]["running"] is False and store.files["second"]["running"] is True
    table_use.beat("id-1")  # ended: no heartbeat brings it back
    assert store.files["first"]["running"] is False


def test_a_query_never_bound_releases_the_records_built_under_its_name(store):
    built(store, "a_killed_writer", "w")
    table_use.ended("a_killed_writer", "id-9")
    assert store.files["w"]["running"] is False
