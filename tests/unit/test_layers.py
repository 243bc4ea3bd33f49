"""The package's shape: imports only go down the layers (the import-linter contracts of setup.cfg),
modules and classes stay small, module names are unique, data is found without ``__file__``,
and the two configurations have one name each."""

import ast
import configparser
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fink"
MODULE_LINES = 450
CLASS_LINES = 150


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in modules()}


def test_the_import_contracts_are_kept():
    # import-linter in a process of its own: it imports nothing of ours, but reads the package as built here
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            "sys.exit(lint_imports(config_filename='setup.cfg', no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    contracts = [s for s in setup_cfg().sections() if s.startswith("importlinter:contract:")]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in run.stdout, run.stdout


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_the_layers_contract_names_every_top_level_module_and_package():
    """A new module or package at the top must be given its layer, not escape the contract."""
    layers = setup_cfg()["importlinter:contract:layers"]["layers"]
    named = {part.strip() for line in layers.split("\n") for part in line.replace(":", "|").split("|") if part.strip()}
    top = {f"fink.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    top |= {f"fink.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert top - named == set()


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MODULE_LINES}
    assert big == {}, f"modules over {MODULE_LINES} lines: split them by responsibility"


def test_classes_stay_small():
    big = {f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
           for p, tree in trees().items() for node in ast.walk(tree)
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES}
    assert big == {}, f"classes over {CLASS_LINES} lines"


def test_module_names_are_unique():
    """Two ``kafka.py`` in two folders cost every reader a second look."""
    names = Counter(p.stem for p in modules() if p.name != "__init__.py")
    names.update(p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    assert [n for n, k in names.items() if k > 1] == []


def test_no_module_finds_files_from_its_own_path():
    """Package data through importlib.resources, the project folder through fink.config.project_dir."""
    found = [f"{p.relative_to(ROOT)}:{node.lineno}" for p, tree in trees().items() for node in ast.walk(tree)
             if isinstance(node, ast.Name) and node.id == "__file__"]
    assert found == []


@pytest.mark.parametrize("name", ["cfg", "fink"])
def test_no_argument_shadows_the_package_or_blurs_the_two_configurations(name):
    """A stage's configuration is ``stage_cfg``, the broker's ``fink_cfg``: never ``cfg``, never ``fink``."""
    found = []
    for p, tree in trees().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
                found += [f"{p.relative_to(ROOT)}:{x.lineno}" for x in args if x.arg == name]
    assert found == []


def test_the_project_folder_is_found(monkeypatch, tmp_path):
    """$FINK_PROJECT; else a work folder or clone from here up; else the package's clone; else the wheel's copy."""
    from fink.config import ConfigError, project_dir

    assert project_dir() == ROOT  # the suite runs in the clone
    monkeypatch.setenv("FINK_PROJECT", str(tmp_path))
    assert project_dir() == tmp_path.resolve()
    monkeypatch.delenv("FINK_PROJECT")
    monkeypatch.chdir(ROOT / "docs")  # inside a clone: the folder above
    assert project_dir() == ROOT
    work = tmp_path / "work"
    for folder in ("notebooks", "conf", "notebooks/py"):
        (work / folder).mkdir(parents=True)
    monkeypatch.chdir(work / "notebooks" / "py")  # a work folder `fink init --project` made
    assert project_dir() == work
    site = tmp_path / "site-packages"
    monkeypatch.setattr("importlib.resources.files", lambda package: site / package)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="fink init --project"):
        project_dir()
    for folder in ("notebooks", "conf"):  # an installed wheel's copy
        (site / "fink" / "data" / "project" / folder).mkdir(parents=True)
    assert project_dir() == site / "fink" / "data" / "project"


def test_the_pom_is_package_data(monkeypatch, tmp_path):
    from fink.runtime import jvm

    assert jvm.pom_path() == PACKAGE / "data" / "jvm" / "pom.xml"
    other = tmp_path / "pom.xml"
    other.write_text("<project/>")
    monkeypatch.setenv("FINK_POM", str(other))
    assert jvm.pom_path() == other
