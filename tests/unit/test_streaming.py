"""fink.runtime.streaming.run_until with stand-in queries: bounded, stoppable, failing loudly."""

import pytest

from fink.runtime.streaming import QueryFailed, run_until, stop_at_boundary


class FakeQuery:
    lastProgress = None  # no batch has ended yet

    def __init__(self, name, finish_after=None, fail_after=None):
        self.name, self.id = name, name
        self.polls, self.finish_after, self.fail_after = 0, finish_after, fail_after
        self.stopped = False
        self.recentProgress = [{"numInputRows": 3}]

    def awaitTermination(self, timeout):
        self.polls += 1

    def exception(self):
        if self.fail_after is not None and self.polls >= self.fail_after:
            return RuntimeError("boom")
        return None

    @property
    def isActive(self):
        return not self.stopped and (self.finish_after is None or self.polls < self.finish_after)

    def stop(self):
        self.stopped = True

    @property
    def status(self):
        return {"isTriggerActive": False}


class BusyQuery(FakeQuery):
    """A query in a micro-batch for its first ``busy_checks`` status reads."""

    def __init__(self, busy_checks):
        super().__init__("busy")
        self.checks, self.busy_checks, self.stopped_while_busy = 0, busy_checks, None

    @property
    def status(self):
        self.checks += 1
        return {"isTriggerActive": self.checks <= self.busy_checks}

    def stop(self):
        self.stopped_while_busy = self.checks <= self.busy_checks
        self.stopped = True


def test_ends_when_queries_finish():
    q = FakeQuery("q", finish_after=3)
    result = run_until([q], duration=60, poll=0.01)
    assert result.reason == "finished" and q.polls == 3
    assert result.progress == {"q": [{"numInputRows": 3}]}


def test_ends_at_duration_and_stops_queries():
    q = FakeQuery("q")
    result = run_until([q], duration=0.05, poll=0.01)
    assert result.reason == "duration" and q.stopped


def test_stop_file(tmp_path):
    stop = tmp_path / "STOP"
    q = FakeQuery("q")
    seen = []

    def on_poll(queries):
        seen.append(len(queries))
        if len(seen) == 2:
            stop.touch()

    result = run_until([q], duration=60, stop_file=stop, poll=0.01, on_poll=on_poll)
    assert result.reason == "stop-file" and q.stopped and seen == [1, 1]


def test_failure_raises_and_stops_every_query():
    bad, good = FakeQuery("bad", fail_after=2), FakeQuery("good")
    with pytest.raises(QueryFailed, match="'bad' failed: boom") as info:
        run_until([bad, good], duration=60, poll=0.01)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert bad.stopped and good.stopped


def test_stop_active_stops_every_running_query():
    from types import SimpleNamespace

    from fink.runtime.streaming import stop_active

    queries = [FakeQuery("a"), FakeQuery("b")]
    session = SimpleNamespace(streams=SimpleNamespace(active=queries))
    assert stop_active(session) == 2
    assert all(q.stopped for q in queries)


def test_a_stop_waits_for_the_running_micro_batch_to_end():
    q = BusyQuery(busy_checks=5)
    assert stop_at_boundary(q, timeout=10) is True
    assert q.stopped and q.stopped_while_busy is False and q.checks == 6
    stuck = BusyQuery(busy_checks=10**9)  # a batch longer than the timeout is interrupted
    assert stop_at_boundary(stuck, timeout=0.3) is False and stuck.stopped


class BackloggedQuery(BusyQuery):
    """Behind a backlog: never idle; batch 8 runs and reports its progress after ``busy_checks``
    status reads (before it, the latest report is ``first``)."""

    def __init__(self, busy_checks, first):
        super().__init__(busy_checks)
        self.first = first

    @property
    def status(self):
        self.checks += 1
        return {"isTriggerActive": True}

    @property
    def lastProgress(self):
        if self.checks <= self.busy_checks:
            return self.first
        return {"batchId": 8, "timestamp": "2026-11-28T20:00:09.000Z", "durationMs": {"addBatch": 900}}


BATCH_7 = {"batchId": 7, "timestamp": "2026-11-28T20:00:05.000Z", "durationMs": {"addBatch": 800}}
#: a trigger that found no data reports under the next batch's id, with no addBatch
IDLE_8 = {"batchId": 8, "timestamp": "2026-11-28T20:00:07.000Z", "durationMs": {"latestOffset": 3}}


@pytest.mark.parametrize("first", [None, BATCH_7, IDLE_8], ids=["no report yet", "batch 7", "idle report"])
def test_behind_a_backlog_a_stop_comes_as_soon_as_the_running_batch_ends(first):
    q = BackloggedQuery(busy_checks=4, first=first)
    assert stop_at_boundary(q, timeout=10) is True
    assert q.stopped and q.checks == 5  # the first read after batch 8's progress was reported
    never = BackloggedQuery(busy_checks=10**9, first=first)
    assert stop_at_boundary(never, timeout=0.3) is False and never.stopped


def test_a_bounded_run_ends_its_queries_between_batches(tmp_path):
    q = BusyQuery(busy_checks=3)
    stop = tmp_path / "STOP"
    stop.touch()
    assert run_until([q], duration=60, stop_file=stop, poll=0.01).reason == "stop-file"
    assert q.stopped and q.stopped_while_busy is False


class RaisingQuery(FakeQuery):
    """PySpark's awaitTermination raises the query's own failure (StreamingQueryException)."""

    def awaitTermination(self, timeout):
        super().awaitTermination(timeout)
        if self.polls >= 2:
            raise RuntimeError("[STREAM_FAILED] terminated with exception: LayoutChanged")


def test_a_failure_raised_by_await_termination_is_a_failed_run():
    """Before the fix it escaped as PySpark's own exception, past callers of QueryFailed."""
    q = RaisingQuery("dead")
    with pytest.raises(QueryFailed, match="'dead' failed.*LayoutChanged"):
        run_until([q], duration=60, poll=0.01)
    assert q.polls == 2


class LongQuery(FakeQuery):
    """Runs 350 batches, 7 between two polls; like Spark, it keeps only its last 100 reports."""

    def __init__(self):
        super().__init__("long", finish_after=50)
        self.batches, self.recentProgress = [], []

    def awaitTermination(self, timeout):
        super().awaitTermination(timeout)
        for _ in range(7):
            n = len(self.batches)
            self.batches.append({"runId": "r", "batchId": n, "timestamp": f"t{n}", "numInputRows": 2})
            self.batches.append({"runId": "r", "batchId": n + 1, "timestamp": f"idle{n}", "numInputRows": 0})
        self.recentProgress = self.batches[-100:]


def test_the_accounts_of_a_long_run_cover_every_batch_not_the_last_100():
    """Before, run_until handed on Spark's recentProgress at the end: the last 100 reports."""
    result = run_until([LongQuery()], duration=0, poll=0.01)
    batches = [r["batchId"] for r in result.progress["long"]]
    assert len(batches) == 350 and batches == sorted(set(batches))  # every batch once, in order
    assert all(r["numInputRows"] for r in result.progress["long"])  # the idle triggers are not kept
