"""fink.stages.pipeline: the stages' settings checked and typed before a session starts; the flow table."""

import pytest

from fink.errors import ConfigError
from fink.stages import pipeline
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

    from fink.errors import RunnerError
    from fink.ops import runner
    from fink.processes import process_start_time

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


def test_one_survey_for_every_stage_unless_a_stage_names_its_own(tmp_path):
    from fink.config import FinkConfig

    plan = pipeline.configure(list(pipeline.STAGES), "lsst_night", {"archive": {"survey": "ztf"}}, survey="rubin")
    assert [s.config.survey for s in plan] == ["rubin", "rubin", "rubin", "ztf"]
    paths = pipeline.paths(plan, FinkConfig(data_dir=str(tmp_path)))
    assert paths["stream2raw"]["raw"] == paths["raw2science"]["raw"] == str(tmp_path / "rubin" / "raw")
    assert paths["distribution"]["science"] == str(tmp_path / "rubin" / "science")
    # each stage's defaults are the survey's: cuts, built-in modules, topics, table, keys
    r2s, dist = plan[1].config, plan[2].config
    assert "reliability" in r2s.quality_cuts() and r2s.module_paths() == []
    assert set(dist.topic_filters()) == {"fink_lsst_early_snia", "fink_lsst_sso", "fink_lsst_catalogued"}
    rubin_archive = pipeline.configure(["archive"], "t", survey="rubin")[0].config
    assert rubin_archive.table_name() == "rubin_alerts"
    assert rubin_archive.keys().object_id == "coalesce(nullif(diaSource.diaObjectId, 0), diaSource.ssObjectId)"
    assert plan[3].config.table_name() == "ztf_alerts" and plan[3].config.keys().alert_id == "candid"
