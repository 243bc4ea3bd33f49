"""The wheel, installed outside the checkout: everything the broker reads at run time is in it.

The wheel is built from this clone, installed with its dependencies into a fresh virtualenv in
a temporary folder (no editable install, no ``PYTHONPATH``), and run from another folder: the
package's data through ``importlib.resources``, ``fink init --project`` copying the notebooks,
the smoke notebook headless and ``fink demo`` end to end against the suite's local services.
The dependencies come from pip's cache, constrained to the versions of ``constraints.txt``.
"""

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import outside_env

from fink.config import PROJECT_FILES

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.wheel]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)  # the first to build and install the wheel
def test_the_installed_package_is_the_wheel_and_carries_its_data(wheel_venv, tmp_path):
    code = ("import fink, importlib.metadata as m\n"
            "from fink.config import project_dir\n"
            "print(fink.__file__)\n"
            "print(m.distribution('fink-broker-nb').read_text('direct_url.json') or '')\n"
            "print(project_dir())\n")
    proc = subprocess.run([str(wheel_venv / "python"), "-c", code], capture_output=True, text=True,
                          env=outside_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    package, direct_url, project = proc.stdout.splitlines()
    site = wheel_venv.parent / "lib"
    assert Path(package).is_relative_to(site), package  # not the clone
    assert '"editable"' not in direct_url
    # the notebooks, conf files and sample night of the clone, byte for byte
    assert Path(project) == Path(package).parent / "data" / "project"
    for folder, pattern in PROJECT_FILES.items():
        ours = sorted(p.name for p in (ROOT / folder).glob(pattern))
        assert ours and sorted(p.name for p in (Path(project) / folder).glob(pattern)) == ours, folder
        for name in ours:
            assert (Path(project) / folder / name).read_bytes() == (ROOT / folder / name).read_bytes(), name
    # the ZTF schemas and survey description as package data: the installed package decodes the
    # bundled night (each message a container naming a schema the wheel carries) and checks each alert
    decode = ("from fink.config import project_dir\n"
              "from fink.sim.simulator import SimulatorConfig, load_messages\n"
              "from fink.survey import avro, description\n"
              "ztf = description.load('ztf')\n"
              "msgs = load_messages(SimulatorConfig(source=str(project_dir() / 'datasim' / 'sample_night')))\n"
              "alerts = [avro.decode_container(m, survey=ztf).alert for m in msgs]\n"
              "[avro.check_alert(a, ztf) for a in alerts]\n"
              "print(len(alerts), len({a['candid'] for a in alerts}), ' '.join(avro.schema_versions('ztf')))\n")
    proc = subprocess.run([str(wheel_venv / "python"), "-c", decode], capture_output=True, text=True,
                          env=outside_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, unique, *versions = proc.stdout.split()
    assert int(count) == int(unique) == 229 and "4.02" in versions and "3.3" in versions


@pytest.mark.timeout(900)
def test_from_a_work_folder_the_smoke_notebook_and_the_demo_run_end_to_end(wheel_venv, kafka_bootstrap, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    env = outside_env(FINK_HOME=str(home))
    init = subprocess.run([str(wheel_venv / "fink"), "init", "--project", str(work)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert init.returncode == 0, init.stderr
    names = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {p.name for p in (work / "notebooks").glob("*.ipynb")} == names
    assert (work / "datasim" / "sample_night" / "alerts.avro").is_file() and (work / "conf" / "local.yaml").is_file()

    # the smoke notebook, headless, from the work folder's copy
    topic = f"wheel_{uuid.uuid4().hex[:8]}"
    smoke = subprocess.run([str(wheel_venv / "papermill"), "--no-progress-bar", "notebooks/smoke.ipynb",
                            str(tmp_path / "smoke.ipynb"), "-f", "conf/local.yaml", "--cwd", "notebooks",
                            "-p", "data_dir", str(tmp_path / "data"), "-p", "topic", topic, "-p", "n_alerts", "60"],
                           capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert smoke.returncode == 0, smoke.stdout[-2000:] + smoke.stderr[-3000:]
    summary = json.loads((home / "reports" / "smoke" / "summary.json").read_text())
    assert summary["published"] == summary["archived_this_run"] == summary["published_alerts_found_in_archive"] == 60

    # `fink demo`: the whole broker on the sample night, every alert accounted for
    demo = subprocess.run([str(wheel_venv / "fink"), "demo"], capture_output=True, text=True, env=env, cwd=work,
                          timeout=800)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "all accounted for" in demo.stdout
    report = json.loads((home / "reports" / "demo" / "demo.json").read_text())
    stages = report["stages"]
    assert report["published"] == 229 == stages["stream2raw"]["out"] + stages["stream2raw"]["quarantined"]
    assert stages["raw2science"]["out"] == 207 == stages["archive"]["out"]
    assert report["client"]["received"] == report["client"]["expected"] > 0
    # the runs were the work folder's notebooks, executed by the installed package
    runs = [json.loads(p.read_text()) for p in (home / "runs").glob("*/*/status.json")]
    assert runs and all(str(work / "notebooks") in r.get("notebook", str(work / "notebooks")) for r in runs)
