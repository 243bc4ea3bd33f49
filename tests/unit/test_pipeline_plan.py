"""fink.pipeline: the stages' settings checked and typed before a session starts; the flow table."""

import pytest

from fink import pipeline
from fink.errors import ConfigError
from fink.stages.archive import ArchiveConfig
from fink.stages.stream2raw import Stream2RawConfig


def test_the_stages_come_in_pipeline_order_with_their_own_typed_settings():
    plan = pipeline.configure(["archive", "stream2raw"], "ztf_night", {"archive": {"table": "t1"},
                                                                       "stream2raw": {"max_offsets_per_trigger": 7}})
    assert [s.name for s in plan] == ["stream2raw", "archive"]
    assert isinstance(plan[0].config, Stream2RawConfig) and isinstance(plan[1].config, ArchiveConfig)
    assert plan[0].config.topic == "ztf_night" and plan[0].config.max_offsets_per_trigger == 7
    assert plan[1].config.table == "t1" and plan[1].query_name == "archive" and plan[1].sink is None
    # stream2raw's own topic, or a pattern, wins over the pipeline's
    assert pipeline.configure(["stream2raw"], "a", {"stream2raw": {"topic": "b"}})[0].config.topic == "b"
    by_pattern = pipeline.configure(["stream2raw"], "a", {"stream2raw": {"topic_pattern": "ztf_.*"}})[0].config
    assert by_pattern.topic_pattern == "ztf_.*"


def test_unknown_stages_and_parameters_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown stage.*raw2sciense"):
        pipeline.configure(["raw2sciense"], "t")
    with pytest.raises(ConfigError, match="unknown stage.*archve"):
        pipeline.configure(["archive"], "t", {"archve": {}})
    with pytest.raises(ConfigError, match="pipeline archive settings.*tabel"):
        pipeline.configure(["archive"], "t", {"archive": {"tabel": "x"}})
    with pytest.raises(ConfigError, match="no stage"):
        pipeline.configure([], "t")
    with pytest.raises(ConfigError, match="a list of stage names, got 'archive'"):
        pipeline.configure("archive", "t")  # not split into letters


def test_the_simulator_publishes_where_stream2raw_reads():
    assert pipeline.input_topic(pipeline.configure(["stream2raw"], "a", {"stream2raw": {"topic": "b,c"}}), "a") == "b"
    assert pipeline.input_topic(pipeline.configure(["stream2raw"], "a"), "z") == "a"
    assert pipeline.input_topic(pipeline.configure(["archive"], "a"), "z") == "z"


def test_the_pipeline_and_a_stage_service_never_run_at_once(tmp_path):
    import json
    import os

    from fink import runner
    from fink.errors import RunnerError
    from fink.services.process import process_start_time

    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    me = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "started_at": "now",
          "run_dir": str(tmp_path / "r"), "notebook": "x.ipynb"}  # a live process stands for the service
    (home / "run" / "stream2raw.json").write_text(json.dumps({"service": "stream2raw", **me}))
    with pytest.raises(RunnerError, match="pipeline would share checkpoints and outputs with stream2raw"):
        runner.start("pipeline", home=home)
    (home / "run" / "stream2raw.json").unlink()
    (home / "run" / "pipeline.json").write_text(json.dumps({"service": "pipeline", **me}))
    with pytest.raises(RunnerError, match="archive would share checkpoints and outputs with pipeline"):
        runner.start("archive", home=home)
    assert not (home / "runs").exists()  # refused before anything started


def test_a_trigger_that_is_neither_available_now_nor_seconds_is_refused():
    with pytest.raises(ConfigError, match="trigger must be"):
        pipeline.build(None, [], None, "every minute")


def test_flow_reads_each_stages_accounts():
    totals = {"stream2raw": {"messages": 230, "archived": 229, "quarantined": 1, "balanced": True},
              "raw2science": {"alerts": 229, "written": 207, "rejected": 22, "balanced": True},
              "distribution": {"alerts": 207, "selected": 150, "balanced": True},
              "archive": {"alerts": 207, "archived": 207, "balanced": True}}
    flow = pipeline.flow(totals)
    assert flow["stream2raw"] == {"in": 230, "out": 229, "quarantined": 1}
    assert flow["raw2science"] == {"in": 229, "out": 207, "rejected": 22}
    assert flow["distribution"] == {"in": 207, "out": 150} and flow["archive"] == {"in": 207, "out": 207}
