"""fink.streaming.run_until with stand-in queries: bounded, stoppable, failing loudly."""

import pytest

from fink.streaming import QueryFailed, run_until


class FakeQuery:
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

    from fink.streaming import stop_active

    queries = [FakeQuery("a"), FakeQuery("b")]
    session = SimpleNamespace(streams=SimpleNamespace(active=queries))
    assert stop_active(session) == 2
    assert all(q.stopped for q in queries)
