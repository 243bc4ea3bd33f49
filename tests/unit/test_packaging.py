"""setup.cfg is the one source of metadata; environment.yml, constraints.txt and the pom agree with it."""

import configparser
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def requirements(text):
    return [Requirement(line) for line in text.strip().splitlines() if line.strip() and not line.startswith("#")]


def constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    return pins


def pom_property(name):
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    return ET.parse(ROOT / "fink" / "data" / "jvm" / "pom.xml").getroot().find(f"m:properties/m:{name}", ns).text


def test_environment_yml_agrees_with_setup_cfg():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert Version(python.split("=")[1] + ".0") in SpecifierSet(setup_cfg()["options"]["python_requires"])
    assert any(isinstance(d, str) and d.startswith("openjdk=17") for d in deps)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip
    editable = next(p for p in pip if p.startswith("-e ."))
    extras = set(re.search(r"\[(.*)\]", editable).group(1).split(","))
    assert extras <= set(setup_cfg()["options.extras_require"])
    # no package is listed twice: everything else comes from setup.cfg
    assert [p for p in pip if not p.startswith("-")] == []


def test_every_requirement_is_pinned_and_satisfied():
    cfg = setup_cfg()
    reqs = requirements(cfg["options"]["install_requires"])
    for extra in cfg["options.extras_require"].values():
        reqs += requirements(extra)
    pins = constraints()
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert pins[name] in req.specifier, f"{req.name}=={pins[name]} does not satisfy {req}"


def test_pyspark_version_equals_connector_version_in_pom():
    pins = constraints()
    spark = pom_property("spark.version")
    assert str(pins["pyspark"]) == spark
    assert f"pyspark=={spark}" in setup_cfg()["options"]["install_requires"]


def test_pandas_is_a_version_pyspark_supports():
    # PySpark 4.2 supports pandas 2.2 and later 2.x (pyspark.sql.pandas.utils minimum), not 3.x
    assert Version("2.2") <= constraints()["pandas"] < Version("3")


def test_kafka_broker_is_4x_and_hbase_2x():
    assert pom_property("kafka.version").startswith("4.")
    assert pom_property("hbase.version").startswith("2.")


def test_console_script_is_an_entry_point():
    assert "fink = fink.ops.cli:main" in setup_cfg()["options.entry_points"]["console_scripts"]


def test_committed_notebooks_are_stripped_and_have_one_parameters_cell():
    paths = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "tests" / "notebooks").glob("*.ipynb"))
    assert paths
    for path in paths:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path
        assert not any(c.get("outputs") or c.get("execution_count") for c in nb["cells"]), path


def test_papermill_reads_every_parameter_line():
    """papermill silently drops a parameter line it cannot parse (e.g. with ';' in its comment)."""
    import papermill

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
        declared = [line.split(":")[0] for line in "".join(cell["source"]).splitlines() if re.match(r"^\w+: ", line)]
        assert list(papermill.inspect_notebook(str(path))) == declared, path.name


def test_every_third_party_import_of_the_library_is_declared():
    """A fresh `pip install .` must bring everything `fink` imports (the dev venv may have more)."""
    import ast
    import sys

    declared = {r.name.lower() for r in requirements(setup_cfg()["options"]["install_requires"])}
    # import name -> distribution name, where they differ
    dist = {"yaml": "pyyaml", "confluent_kafka": "confluent-kafka", "IPython": "ipykernel",
            "light_curve": "light-curve", "astropy_healpix": "astropy-healpix",
            "sklearn": "scikit-learn"}
    missing = set()
    for path in (ROOT / "fink").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top != "fink" and top not in sys.stdlib_module_names:
                    if dist.get(top, top).lower() not in declared:
                        missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not in setup.cfg install_requires: {sorted(missing)}"


def test_the_wheel_holds_every_file_the_package_reads_at_run_time(built_wheel):
    """Package data (schemas, surveys, models, the pom, log settings) and the project's notebooks,
    conf files and sample night (fink/data/project/, what setup.py adds); the wheel's end-to-end
    run outside the checkout is tests/integration/test_wheel.py."""
    import zipfile

    from fink.config import PROJECT_FILES

    names = set(zipfile.ZipFile(built_wheel).namelist())
    data = ROOT / "fink" / "data"
    expected = {f"fink/{p.relative_to(ROOT / 'fink')}" for p in data.rglob("*") if p.is_file()}
    expected |= {f"fink/data/project/{p.relative_to(ROOT)}" for folder, pattern in PROJECT_FILES.items()
                 for p in (ROOT / folder).glob(pattern)}
    assert {n for n in expected if "/schemas/ztf/" in n} and {n for n in expected if n.endswith(".ipynb")}
    assert sorted(expected - names) == []
    modules = {f"fink/{p.relative_to(ROOT / 'fink')}" for p in (ROOT / "fink").rglob("*.py")}
    assert sorted(n for n in names if n.startswith("fink/") and n.endswith(".py")) == sorted(modules)
