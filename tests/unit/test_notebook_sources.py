"""The notebooks are the source: each .ipynb and its py:percent twin agree, and the service
notebooks declare the common ``conf/`` parameters.

The pairing is configured once, in ``notebooks/jupytext.toml``; these tests ask jupytext where
each twin is, so moving the twins only changes that file.
"""

import ast
import dataclasses
import difflib
from pathlib import Path

import pytest
import yaml

from fink.config import FinkConfig
from fink.ops import runner

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: the notebooks of notebooks/ that are not services (no stop_file, no conf/ file): users run them by hand
USER_NOTEBOOKS = {"client", "archive_explorer", "science_module", "fink_modules", "replay"}


def twin_of(notebook: Path) -> tuple[Path, dict]:
    """Return the text twin of ``notebook`` and its jupytext format, as the configuration pairs them."""
    from jupytext.config import load_jupytext_config
    from jupytext.formats import long_form_multiple_formats
    from jupytext.paired_paths import paired_paths

    config = load_jupytext_config(str(notebook))
    assert config is not None, f"{notebook}: no jupytext configuration found above it"
    formats = long_form_multiple_formats(config.default_formats(str(notebook)))
    twins = [(Path(path), fmt) for path, fmt in paired_paths(str(notebook), "ipynb", formats)
             if fmt["extension"] != ".ipynb"]
    assert len(twins) == 1, f"{notebook}: expected one text twin, jupytext pairs {twins}"
    return twins[0]


def cells(nb) -> list[tuple[str, str, dict]]:
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


def out_of_sync(notebook: Path) -> str | None:
    """Say how ``notebook`` and its twin differ, or return None when they hold the same cells."""
    import jupytext

    twin, fmt = twin_of(notebook)
    shown = twin.relative_to(notebook.parent)
    if not twin.exists():
        return f"{notebook.name}: no twin {shown}"
    # the cells the twin should hold: the .ipynb as jupytext writes it (same cell metadata filter), read back
    expected = cells(jupytext.reads(jupytext.writes(jupytext.read(notebook), fmt=fmt), fmt=fmt))
    actual = cells(jupytext.read(twin, fmt=fmt))
    if expected == actual:
        return None
    if len(expected) != len(actual):
        return f"{notebook.name}: {len(expected)} cells, {shown}: {len(actual)}"
    i, (want, got) = next((i, pair) for i, pair in enumerate(zip(expected, actual, strict=True)) if pair[0] != pair[1])
    if want[1] != got[1]:
        diff = difflib.unified_diff(want[1].splitlines(), got[1].splitlines(), ".ipynb", "twin", n=0, lineterm="")
        detail = "\n".join(f"    {line}" for line in list(diff)[2:12])
    else:
        detail = f"    .ipynb: {want[0]} {want[2]}\n    twin:   {got[0]} {got[2]}"
    return f"{notebook.name} and {shown} differ from cell {i}:\n{detail}"


def test_every_notebook_and_its_twin_hold_the_same_cells():
    assert NOTEBOOKS
    problems = [p for p in map(out_of_sync, NOTEBOOKS) if p]
    assert not problems, ("notebooks out of sync with their twins (make notebooks, i.e. jupytext --sync, "
                          "takes the newer file of each pair):\n" + "\n".join(problems))


def test_every_twin_has_its_notebook():
    twins = {twin_of(nb)[0] for nb in NOTEBOOKS}
    folders = {t.parent for t in twins}
    orphans = sorted(str(p.relative_to(ROOT)) for folder in folders for p in folder.glob("*.py") if p not in twins)
    assert not orphans, f"twins without a notebook (delete them, or restore the .ipynb): {orphans}"


def test_the_sync_check_names_the_notebook_edited_on_one_side(tmp_path):
    """Edit one side of a pair in a scratch copy: the check must fail and name that notebook."""
    import shutil

    scratch = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", scratch)
    twin, _ = twin_of(scratch / "smoke.ipynb")
    text = twin.read_text()
    assert "n_alerts: int = 200" in text
    twin.write_text(text.replace("n_alerts: int = 200", "n_alerts: int = 201"))
    message = out_of_sync(scratch / "smoke.ipynb")
    assert message and message.startswith("smoke.ipynb and ") and "n_alerts: int = 201" in message
    assert out_of_sync(scratch / "checkstream.ipynb") is None


def parameters_cell(notebook: Path) -> str:
    import nbformat

    tagged = [c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged 'parameters'"
    return tagged[0].source


def service_notebooks() -> list[Path]:
    """The notebooks ``fink start`` can run: they declare ``stop_file`` (the runner requires it)."""
    return [nb for nb in NOTEBOOKS if "stop_file" in runner.notebook_parameters(nb)]


def test_the_services_are_every_notebook_but_the_user_ones():
    services = {nb.stem for nb in service_notebooks()}
    assert services == {nb.stem for nb in NOTEBOOKS} - USER_NOTEBOOKS, \
        "a notebook of notebooks/ is either a service (declares stop_file) or listed in USER_NOTEBOOKS"


def test_conf_files_hold_the_typed_config_keys():
    for conf in sorted((ROOT / "conf").glob("*.yaml")):
        assert set(yaml.safe_load(conf.read_text())) == set(FinkConfig.field_names()), conf.name


@pytest.mark.parametrize("notebook", service_notebooks(), ids=lambda p: p.stem)
def test_service_notebook_declares_the_common_conf_parameters(notebook):
    """Each key of FinkConfig (the keys of conf/*.yaml): typed as the config, its default, a help comment."""
    declared = runner.notebook_parameters(notebook)
    defaults = FinkConfig()
    source = parameters_cell(notebook)
    for field in dataclasses.fields(FinkConfig):
        assert field.name in declared, f"{notebook.name}: no '{field.name}' parameter (conf/*.yaml sets it)"
        param = declared[field.name]
        assert param["inferred_type_name"] == field.type, f"{notebook.name}: {field.name}: {param}"
        default = getattr(defaults, field.name)
        assert ast.literal_eval(param["default"]) == default, \
            f"{notebook.name}: {field.name} defaults to {param['default']}, FinkConfig to {default!r}"
        assert param["help"], f"{notebook.name}: {field.name} has no help comment (papermill --help-notebook shows it)"
        assert sum(line.startswith(f"{field.name}: ") for line in source.splitlines()) == 1, \
            f"{notebook.name}: {field.name} declared more than once"


def test_service_notebooks_declare_the_common_parameters_alike():
    """The same line in every service notebook, help comment included (what COMMON_PARAMETERS was)."""
    lines: dict[str, dict[str, list[str]]] = {name: {} for name in FinkConfig.field_names()}
    for notebook in service_notebooks():
        for line in parameters_cell(notebook).splitlines():
            name = line.split(":")[0]
            if name in lines:
                lines[name].setdefault(line, []).append(notebook.stem)
    differing = {name: variants for name, variants in lines.items() if len(variants) > 1}
    assert not differing, "common parameters declared differently: " + "; ".join(
        f"{name}: " + " | ".join(f"{line!r} in {', '.join(nbs)}" for line, nbs in variants.items())
        for name, variants in differing.items())
