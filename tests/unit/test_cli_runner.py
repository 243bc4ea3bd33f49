"""The `fink` command and the runner's checks that need no service."""

from pathlib import Path

import pytest

from fink.errors import ConfigError, RunnerError
from fink.ops import runner
from fink.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]
TEST_NOTEBOOKS = ROOT / "tests" / "notebooks"


def test_no_argument_prints_usage(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for line in ("fink start <service> [-c <conf>] [--simulator]", "fink stop <service|all>", "fink show",
                 "fink init", "fink services start|stop|status"):
        assert line in out
    assert "smoke" in out  # services are listed from notebooks/


def test_init_creates_home_and_valid_services_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINK_HOME", str(tmp_path / "home"))
    assert main(["init"]) == 0
    from fink.config import ServicesConfig

    assert ServicesConfig.load(tmp_path / "home") == ServicesConfig()
    assert (tmp_path / "home" / "secrets").stat().st_mode & 0o077 == 0
    assert main(["init"]) == 0  # idempotent, keeps the file


def test_init_copies_the_project_into_a_work_folder_and_keeps_what_is_there(tmp_path, monkeypatch, capsys):
    from fink.config import PROJECT_FILES, project_dir

    monkeypatch.setenv("FINK_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    (work / "notebooks" / "smoke.ipynb").write_text("{}")  # a person's edited copy
    assert main(["init", "--project", str(work)]) == 0
    assert "1 already there kept" in capsys.readouterr().out
    source = project_dir()
    for folder, pattern in PROJECT_FILES.items():
        names = sorted(p.name for p in (source / folder).glob(pattern))
        assert names and sorted(p.name for p in (work / folder).glob(pattern)) == names, folder
    assert (work / "notebooks" / "smoke.ipynb").read_text() == "{}"
    assert (work / "datasim" / "sample_night" / "alerts.avro").read_bytes() == \
        (source / "datasim" / "sample_night" / "alerts.avro").read_bytes()
    monkeypatch.chdir(work)  # from there, the services run the work folder's notebooks
    assert project_dir() == work


def test_unknown_service_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    assert main(["start", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert "fink: error: no service 'nosuch'" in err and "smoke" in err


def test_conf_key_unknown_to_the_notebook_is_an_error(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("kafka_bootstrap: 127.0.0.1:9092\ntopik: x\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'topik' for sleeper.ipynb"):
        runner.resolve_parameters(TEST_NOTEBOOKS / "sleeper.ipynb", str(conf), simulator=False)


def test_conf_values_are_validated_by_the_typed_config(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("kafka_bootstrap: nohostport\n")
    with pytest.raises(ConfigError, match="c.yaml: 'kafka_bootstrap' must be host:port"):
        runner.resolve_parameters(TEST_NOTEBOOKS / "sleeper.ipynb", str(conf), simulator=False)


def test_simulator_flag_needs_a_simulator_parameter():
    params = runner.resolve_parameters(TEST_NOTEBOOKS / "sleeper.ipynb", None, simulator=True)
    assert params == {"simulator": True}
    with pytest.raises(RunnerError, match="stubborn does not read from the simulator"):
        runner.resolve_parameters(TEST_NOTEBOOKS / "stubborn.ipynb", None, simulator=True)


def test_service_notebook_must_take_a_stop_file(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("duration: float = 1.0  # seconds")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "nostop.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(RunnerError, match="must declare a 'stop_file' parameter"):
        runner.resolve_parameters(path, None, simulator=False)


@pytest.mark.parametrize("conf", sorted((ROOT / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_every_conf_file_fits_every_notebook(conf):
    import yaml

    keys = set(yaml.safe_load(conf.read_text()))
    services = [nb for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
                if "stop_file" in runner.notebook_parameters(nb)]  # tutorials (science_module) are not services
    assert {nb.stem for nb in services} >= {"smoke", "simulator", "checkstream", "stream2raw", "raw2science"}
    for notebook in services:
        assert keys <= set(runner.notebook_parameters(notebook)), notebook.name
        assert runner.resolve_parameters(notebook, str(conf), simulator=False).keys() == keys
