"""The service notebooks: nbval with their defaults, papermill with every conf/ file."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]
# in pipeline order, sharing one FINK_HOME: the simulator fills the topic that checkstream's
# and stream2raw's defaults read, stream2raw fills the raw archive raw2science reads, raw2science
# the science archive distribution and archive read, distribution the topic the client notebook
# reads, archive the HBase tables the explorer reads; the dashboard then reports what they did
ORDER = ["smoke", "simulator", "checkstream", "stream2raw", "raw2science", "science_module", "fink_modules",
         "distribution", "client",
         "archive", "archive_explorer", "replay", "dashboard"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"), key=lambda p: ORDER.index(p.stem) if p.stem in ORDER else 99)
#: seconds for nbval to run them all (about 6 minutes on 2 cores)
NBVAL_TIMEOUT = 1800


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory):
    return tmp_path_factory.mktemp("nbval") / "home"


@pytest.fixture(scope="module")
def nbval_cells(kafka_bootstrap, hbase_thrift, pipeline_home, tmp_path_factory) -> dict[str, Any]:
    """nbval over every notebook, in :data:`ORDER`, in one pytest process (a process per notebook
    spent 4 s of a core on each starting pytest and its plugins): per notebook (``cells``), its
    cells' results (``name``, ``outcome``, ``message``) from the run's JUnit report; the run's
    output's end (``log``)."""
    import xml.etree.ElementTree as ET

    from fink.io import hbase
    from fink.ops.dashboard import night_window

    started = night_window("")[2]  # the UTC night the stages' batches begin in
    report = tmp_path_factory.mktemp("nbval-report") / "cells.xml"
    env = {**os.environ, "FINK_HOME": str(pipeline_home)}
    conn = hbase.connect(*hbase_thrift)
    try:
        before = set(conn.tables())
    finally:
        conn.close()  # Thrift drops a connection left idle for the minutes nbval takes
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                           "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
                           "-o", "addopts=", "-W", "ignore::DeprecationWarning", f"--junitxml={report}",
                           *[str(n) for n in NOTEBOOKS]],
                          capture_output=True, text=True, env=env, cwd=ROOT / "notebooks", timeout=NBVAL_TIMEOUT)
    conn = hbase.connect(*hbase_thrift)
    try:  # the fink_modules notebook's table of its run (a user keeps it to look at; the suite does not)
        for table in set(conn.tables()) - before:
            if table.startswith(b"fink_modules_") and b"_" not in table.removeprefix(b"fink_modules_"):
                hbase.delete_tables(conn, table.decode())
    finally:
        conn.close()
    log = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report.exists(), log
    cells: dict[str, list[dict]] = {}
    for case in ET.parse(report).iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error")]
        # classname: "notebooks.<stem>.ipynb"; "" for what no notebook owns (a collection error)
        cells.setdefault(case.get("classname", "").removesuffix(".ipynb").split(".")[-1], []).append(
            {"name": case.get("name"), "outcome": bad[0].tag if bad else "passed",
             "message": "\n".join((c.get("message") or "") + "\n" + (c.text or "")[-3000:] for c in bad)})
    return {"cells": cells, "log": log, "started": started}


@pytest.mark.timeout(NBVAL_TIMEOUT + 60)  # the first waits for the run of them all
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_runs_the_notebook_with_its_defaults(notebook, nbval_cells, pipeline_home):
    cells = nbval_cells["cells"].get(notebook.stem)
    assert cells, f"nbval ran no cell of {notebook.name}: {nbval_cells['log']}"
    failed = [c for c in cells + nbval_cells["cells"].get("", []) if c["outcome"] != "passed"]
    assert not failed, "\n".join(f"{c['name']}: {c['message']}" for c in failed)[-5000:]
    if notebook.stem == "dashboard":  # the notebooks before it ran Spark queries: their batches are reported
        from fink.ops import dashboard
        from fink.runtime import metrics

        night = dashboard.night_window("")[2]
        stages = json.loads((pipeline_home / "reports" / "dashboard" / night / "summary.json").read_text())["stages"]
        if nbval_cells["started"] != night:  # the run crossed UTC midnight: the dashboard shows the new night only
            import pandas as pd

            store = metrics.Store(metrics.default_path(pipeline_home))
            stages = dashboard.summary(pd.concat([dashboard.batches_of(store, n)
                                                  for n in (nbval_cells["started"], night)], ignore_index=True))
        assert {"stream2raw", "raw2science", "distribution", "archive"} <= set(stages)
        assert stages["raw2science"]["in"] > 0


#: one conf file per notebook run below: local.yaml here and for smoke, simulator and checkstream, raw2science
#: (Rubin) and `make demo`; ci.yaml for distribution and archive here, for stream2raw in the browser test
#: (test_browser.py, the same parameters papermill gives), and for the four stage services of the fault suite
#: (test_operations.py), which reconciles every alert of each. A second conf for the same notebook ran the same
#: code again (about 3 minutes of the suite).
@pytest.mark.parametrize("conf", ["local.yaml"])
def test_dashboard_headless_reports_a_finished_night(conf, night_metrics, tmp_path):
    import papermill

    from fink.ops.runner import export_html

    params = yaml.safe_load((ROOT / "conf" / conf).read_text())
    params.update(metrics_db=str(night_metrics), night="20261128", report_dir=str(tmp_path / "report"))
    papermill.execute_notebook(str(ROOT / "notebooks" / "dashboard.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=params, progress_bar=False, cwd=str(ROOT / "notebooks"))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["published"] == 130 and summary["stages"]["stream2raw"]["out"] == 129
    assert summary["stages"]["raw2science"]["rejected"] == 18
    html = export_html(tmp_path / "out.ipynb", tmp_path / "report" / "dashboard.html").read_text()
    assert html.count("<img") >= 2 and "raw2science" in html and "129" in html
    for name in ("rates.png", "latency.png"):
        assert (tmp_path / "report" / name).stat().st_size > 10_000


@pytest.mark.parametrize("conf", ["local.yaml"])
def test_smoke_notebook_headless_twice_resumes(conf, kafka_bootstrap, tmp_path, monkeypatch):
    import papermill

    home = tmp_path / "home"
    params = yaml.safe_load((ROOT / "conf" / conf).read_text())
    params.update(data_dir=str(tmp_path / "data"), topic=f"smoke_{uuid.uuid4().hex[:8]}", n_alerts=60)
    runs = 2  # a re-run resumes from the checkpoint
    monkeypatch.setenv("FINK_HOME", str(home))  # read by the kernel, which inherits our environment
    for run in range(1, runs + 1):
        papermill.execute_notebook(str(ROOT / "notebooks" / "smoke.ipynb"), str(tmp_path / f"out{run}.ipynb"),
                                   parameters=params, progress_bar=False, cwd=str(ROOT / "notebooks"))
        summary = json.loads((home / "reports" / "smoke" / "summary.json").read_text())
        assert summary["published"] == 60
        assert summary["archived_this_run"] == 60
        assert summary["archive_total"] == 60 * run
        assert summary["published_alerts_found_in_archive"] == 60
        assert summary["stopped_because"] == "finished"
    assert (home / "reports" / "smoke" / "magnitudes.png").stat().st_size > 1000


def test_cluster_conf_is_valid_without_a_cluster():
    from fink.config import FinkConfig
    from fink.runtime.session import spark_conf

    params = yaml.safe_load((ROOT / "conf" / "cluster.yaml").read_text())
    cfg = FinkConfig.from_mapping(params, source="conf/cluster.yaml")
    conf = spark_conf(cfg)
    assert conf["spark.master"].startswith("spark://")
    assert "spark.driver.bindAddress" not in conf  # loopback settings are for local masters only
    assert conf["spark.executor.memory"] == "8g"
    assert cfg.data_uri("raw") == "hdfs://namenode.example.org:8020/fink/raw"


@pytest.mark.parametrize("conf", ["local.yaml"])
def test_simulator_then_checkstream_headless(conf, kafka_bootstrap, tmp_path):
    import papermill

    params = yaml.safe_load((ROOT / "conf" / conf).read_text())
    topic = f"nb_{uuid.uuid4().hex[:8]}"
    papermill.execute_notebook(str(ROOT / "notebooks" / "simulator.ipynb"), str(tmp_path / "sim.ipynb"),
                               parameters={**params, "topic": topic, "faults": {"empty": 0.1, "truncated": 0.1}},
                               progress_bar=False, cwd=str(ROOT / "notebooks"))
    papermill.execute_notebook(str(ROOT / "notebooks" / "checkstream.ipynb"), str(tmp_path / "check.ipynb"),
                               parameters={**params, "topic": topic, "idle": 3.0},
                               progress_bar=False, cwd=str(ROOT / "notebooks"))
    executed = json.loads((tmp_path / "check.ipynb").read_text())
    text = "".join("".join(o.get("data", {}).get("text/plain", ""))
                   for c in executed["cells"] for o in c.get("outputs", []))
    assert "'alerts': 229" in text
    assert "'empty':" in text and "'truncated':" in text


def run_headless(stage: str, conf: str, tmp_path: Path, **extra) -> str:
    """Run a stage's notebook with papermill, a conf file and the simulator; return its printed text."""
    import papermill

    params = yaml.safe_load((ROOT / "conf" / conf).read_text())
    params.update(data_dir=str(tmp_path / "data"), topic=f"{stage}_{uuid.uuid4().hex[:8]}", simulator=True, **extra)
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{stage}.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=params, progress_bar=False, cwd=str(ROOT / "notebooks"))
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    return "".join("".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
                   for c in executed["cells"] for o in c.get("outputs", []))


#: raw2science headless with Rubin (ZTF's raw2science runs headless as a service with ci.yaml in the fault
#: suite, which checks every kept alert against the cuts); distribution and archive with ZTF and ci.yaml
#: (Rubin's distribution and archive are tested in test_rubin)
RUBIN = [pytest.param("local.yaml", "rubin", id="rubin-local.yaml")]
ZTF_ONLY = [pytest.param("ci.yaml", "ztf", id="ztf-ci.yaml")]


def science_folder(tmp_path: Path, survey: str) -> Path:
    return tmp_path / "data" / ("rubin/science" if survey == "rubin" else "science") / "night=20261127"


@pytest.mark.parametrize("conf, survey", RUBIN)
def test_raw2science_headless(conf, survey, kafka_bootstrap, tmp_path):
    text = run_headless("raw2science", conf, tmp_path, survey=survey)
    assert "'alerts': 229" in text and "'balanced': True" in text
    assert "without values" not in text  # no module failed
    assert list(science_folder(tmp_path, survey).glob("*.parquet"))


@pytest.mark.parametrize("conf, survey", ZTF_ONLY)
def test_distribution_headless(conf, survey, kafka_bootstrap, tmp_path):
    text = run_headless("distribution", conf, tmp_path, survey=survey)
    assert "'alerts': 207" in text and "'balanced': True" in text  # the 229 minus the quality cuts
    assert "not evaluated" not in text  # no filter failed
    assert "fink_sso" in text and "fink_lsst_sso" not in text  # the survey's own topics


@pytest.mark.parametrize("conf, survey", ZTF_ONLY)
def test_archive_headless(conf, survey, hbase_thrift, tmp_path):
    from fink.io.hbase import connect, delete_tables

    table = f"test_nb_{uuid.uuid4().hex[:8]}"
    try:
        text = run_headless("archive", conf, tmp_path, table=table, survey=survey)
        assert "'alerts': 207" in text and "'archived': 207" in text and "'balanced': True" in text
        if survey == "ztf":  # the explorer draws ZTF light curves
            papermill_explorer = tmp_path / "explorer.ipynb"
            import papermill

            papermill.execute_notebook(str(ROOT / "notebooks" / "archive_explorer.ipynb"), str(papermill_explorer),
                                       parameters={"table": table}, progress_bar=False, cwd=str(ROOT / "notebooks"))
            assert "207 alerts" in papermill_explorer.read_text()
    finally:
        conn = connect(*hbase_thrift)
        delete_tables(conn, table)
        conn.close()


def test_archive_notebook_defaults_are_the_stage_defaults():
    import papermill

    from fink.stages.archive import ArchiveConfig

    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / "archive.ipynb"))
    defaults = ArchiveConfig()
    for name in ("survey", "table", "tags", "tag_params", "healpix_order", "modules", "pool_size", "batch_size",
                 "retry_for_s", "max_files_per_trigger"):
        assert eval(declared[name]["default"]) == getattr(defaults, name), name


def test_distribution_notebook_defaults_are_the_stage_defaults():
    import papermill

    from fink.stages.distribution import DistributionConfig

    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / "distribution.ipynb"))
    stage = DistributionConfig(filters=eval(declared["filters"]["default"]), survey=eval(declared["survey"]["default"]))
    assert stage.topic_filters() == {"fink_early_snia": "fink.filters.builtin:early_snia",
                                     "fink_sso": "fink.filters.builtin:solar_system",
                                     "fink_catalogued": "fink.filters.builtin:catalogued"}


def test_raw2science_notebook_defaults_are_the_stage_defaults():
    import papermill

    from fink.science.modules import BUILTIN
    from fink.stages.raw2science import Raw2ScienceConfig
    from fink.survey import description as survey

    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / "raw2science.ipynb"))
    # literals (the parameters cell holds no code): the survey's cuts and its built-in modules
    stage = Raw2ScienceConfig(cuts=eval(declared["cuts"]["default"]), modules=eval(declared["modules"]["default"]),
                              survey=eval(declared["survey"]["default"]))
    fink_cuts = {"nbad": "candidate.nbad == 0", "rb": "candidate.rb >= 0.55", "fid": "candidate.fid != 3"}
    assert stage.quality_cuts() == survey.load("ztf").cuts == fink_cuts
    assert stage.module_paths() == BUILTIN
