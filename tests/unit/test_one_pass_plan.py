"""The one-pass pipeline's composition and the real-time lane's settings, without Spark or Kafka."""

from types import SimpleNamespace

import pytest

from fink.client.consumer import AlertStream
from fink.errors import ConfigError
from fink.stages import pipeline, realtime
from fink.stages.distribution import DistributionConfig
from fink.stages.step import OnePass, Output, Step, report


def test_a_filter_is_a_dotted_path_or_a_sql_condition_of_the_realtime_lane():
    cfg = DistributionConfig(filters={"slow": "fink.filters.builtin:bright",
                                      "fast": {"condition": "candidate.magpsf < 18", "lane": "realtime"}})
    assert cfg.topic_filters() == {"slow": "fink.filters.builtin:bright"}
    assert cfg.realtime_filters() == {"fast": "candidate.magpsf < 18"}
    # the lane alone is enough: a lane of one real-time filter
    only = DistributionConfig(filters={"fast": {"condition": "true"}})
    assert only.topic_filters() == {} and only.realtime_filters() == {"fast": "true"}
    with pytest.raises(ConfigError, match="topic 'x'.*realtime"):
        DistributionConfig.from_mapping({"filters": {"x": {"condition": "true", "lane": "microbatch"}}})
    with pytest.raises(ConfigError, match="filter of topic 'x' must be a dotted path"):
        DistributionConfig.from_mapping({"filters": {"x": {"condition": "true", "lane": "fastest"}}})
    with pytest.raises(ConfigError, match="filter of topic 'x' must be a dotted path"):
        DistributionConfig.from_mapping({"filters": {"x": {"where": "true"}}})


def test_the_realtime_lane_gets_a_slot_per_input_partition_beside_the_micro_batches():
    assert realtime.slots("local[2]", 1) == "local[3]"
    assert realtime.slots("local[2]", 4) == "local[6]"
    assert realtime.slots("spark://127.0.0.1:7077", 3) == "spark://127.0.0.1:7077"
    assert realtime.slots("spark://127.0.0.1:7077", 3, cores_max="4") == "spark://127.0.0.1:7077"
    # a cluster application the lane would fill: its micro-batches would never get a slot
    with pytest.raises(ConfigError, match="spark.cores.max = 1 leaves none.*at least 2 cores"):
        realtime.slots("spark://127.0.0.1:7077", 1, cores_max=1)
    with pytest.raises(ConfigError, match="partition of the survey's topic \\(3\\)"):
        realtime.slots("spark://127.0.0.1:7077", 3, cores_max="3")
    with pytest.raises(ConfigError, match="local\\[N\\]"):
        realtime.slots("local[*]", 1)


def step(name, reads, writes, log):
    def run(frame, batch_id, rows):
        log.append((name, "run", frame))

        def finish():
            log.append((name, "finish"))
            return report(name, batch_id, 1, {"alerts": 1}, None, 0.0)

        return Output(f"{name}-out" if writes else None, 1, None, [], finish)

    return Step(name, reads, writes, run, source=lambda: "stream")


def test_every_step_hands_on_before_any_writes_its_archives_and_reports(monkeypatch):
    log = []
    monkeypatch.setattr("fink.runtime.metrics.record", lambda report: log.append(("recorded", report["name"])))
    one = OnePass([step("a", "kafka", "raw", log), step("b", "raw", "science", log),
                            step("c", "science", None, log), step("d", "science", None, log)])
    one("batch", 7)
    runs = [e for e in log if e[1:2] == ("run",)]
    assert runs == [("a", "run", "batch"), ("b", "run", "a-out"), ("c", "run", "b-out"), ("d", "run", "b-out")]
    assert log.index(("d", "run", "b-out")) < log.index(("a", "finish"))  # the archives after the hand-on
    assert [e for e in log if e[0] == "recorded"] == [("recorded", n) for n in "abcd"]
    assert {k: [r["batchId"] for r in v] for k, v in one.reports.items()} == {n: [7] for n in "abcd"}


class Frame:
    """A cached frame: what was released, and when."""

    def __init__(self, log):
        self.log = log

    def unpersist(self):
        self.log.append(("unpersisted",))


def test_the_archives_of_a_batch_are_written_side_by_side_and_a_failure_waits_for_the_others(monkeypatch):
    import threading

    log = []
    monkeypatch.setattr("fink.runtime.metrics.record", lambda report: log.append(("recorded", report["name"])))
    both = threading.Barrier(2, timeout=20)  # each finish waits for the other: broken if they ran in turn

    def step_with(name, reads, writes, fail=False):
        def run(frame, batch_id, rows):
            def finish():
                both.wait()
                if fail:
                    raise OSError(f"{name}: disk full")
                log.append((name, "finish", threading.current_thread().name))
                return report(name, batch_id, 1, {"alerts": 1}, None, 0.0)

            return Output(f"{name}-out", 1, None, [Frame(log)], finish)

        return Step(name, reads, writes, run)

    one = OnePass([step_with("raw", "kafka", "raw"), step_with("science", "raw", "science")])
    one("batch", 1)
    finished = [e for e in log if e[1:2] == ("finish",)]
    assert {e[0] for e in finished} == {"raw", "science"} and finished[0][2] != finished[1][2]
    assert [e for e in log if e[0] == "recorded"] == [("recorded", "raw"), ("recorded", "science")]
    assert one.reports["science"][0]["durationMs"]["finish"] >= 0

    log.clear()
    both.reset()
    one = OnePass([step_with("raw", "kafka", "raw", fail=True), step_with("science", "raw", "science")])
    with pytest.raises(OSError, match="raw: disk full"):
        one("batch", 2)
    # the other step's archive was written, nothing was recorded, the caches released after both ended
    assert [e[:2] for e in log] == [("science", "finish"), ("unpersisted",), ("unpersisted",)]
    assert not one.reports["raw"] and not one.reports["science"]


def test_a_stage_that_reads_what_no_stage_before_hands_on_is_refused(monkeypatch):
    plan = pipeline.configure(["distribution", "archive"], "t")
    made = {"distribution": Step("distribution", "science", None, None, source=lambda: "files"),
            "archive": Step("archive", "raw", None, None)}
    monkeypatch.setattr(pipeline, "_module", lambda name: SimpleNamespace(step=lambda *a, **k: made[name]))
    fink = SimpleNamespace(data_dir="/tmp/x")
    with pytest.raises(ConfigError, match="archive reads the raw alerts, which no stage before it hands on"):
        pipeline.one_pass(None, plan, fink, "1 seconds", checkpoint_path="/tmp/x/ck")
    with pytest.raises(ConfigError, match="trigger must be"):
        pipeline.one_pass(None, plan, fink, "soon", checkpoint_path="/tmp/x/ck")


class Message:
    def __init__(self, topic, ident):
        self._topic, self._ident = topic, ident

    def topic(self):
        return self._topic

    def headers(self):
        return [("alert_id", self._ident)] if self._ident is not None else None


def test_the_client_drops_an_alert_id_it_has_given_on_the_same_topic():
    stream = AlertStream.__new__(AlertStream)  # no consumer: the repeat rule alone
    stream._seen, stream.repeats = __import__("collections").OrderedDict(), 0
    assert [stream._repeated(Message(t, i)) for t, i in
            [("a", b"1"), ("a", b"2"), ("a", b"1"), ("b", b"1"), ("a", None), ("a", None)]] == \
        [False, False, True, False, False, False]
    assert stream.repeats == 1
    stream._seen = None  # dedup=False gives every message
    assert not stream._repeated(Message("a", b"1"))
