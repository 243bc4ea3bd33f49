"""Benchmark figures as data: each run writes one JSON file, the docs render the newest.

Every benchmark ends with ``save(name, figures)``, which writes
``benchmarks/results/<YYYY-MM-DD>-<name>.json``; a second run of the same benchmark on the
same day replaces that day's file. ``mkdocs build`` loads this file as a hook
(``hooks:`` in ``mkdocs.yml``): it reads the newest file of each name and puts its figures,
as tables, and its plots, as PNG images made with matplotlib, where ``docs/benchmarks.md``
holds the marker ``<!-- benchmark results -->``.

A file holds ``{"name", "date", "command", "machine", "figures", "plots"?, "notes"?}``.
``figures`` is any JSON mapping. Its scalars make one table of figures; a mapping of scalars
makes a table of its own; a list of mappings, or a mapping of mappings, makes a table with
one row per item (nested mappings flattened as ``latency_s.p50``). ``plots`` lists the
series to draw: ``{"title", "table", "x", "y": [columns], "ylabel"}`` over one such table.
A file without ``figures`` (written by hand or by an older benchmark) is read whole as its
figures, its name and date taken from the file name.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MARKER = "<!-- benchmark results -->"
_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)\.json$")


def save(name: str, figures: dict, *, plots: list[dict] | None = None, notes: str | None = None,
         date: str | None = None, directory: Path = RESULTS) -> Path:
    """Write one benchmark run's figures to ``<directory>/<date>-<name>.json``.

    Parameters
    ----------
    name : str
        The benchmark's name (``e2e``, ``stream2raw``, ...): one table section per name.
    figures : dict
        What the run measured, JSON-serialisable.
    plots : list of dict, optional
        Series to draw, each ``{"title", "table", "x", "y", "ylabel"}`` (see the module).
    notes : str, optional
        One paragraph shown under the section's heading.
    date : str, optional
        ``YYYY-MM-DD``; today (local time) by default.
    directory : Path
        Where the results go; ``benchmarks/results/`` by default.

    Returns
    -------
    Path
        The file written.
    """
    import platform

    date = date or time.strftime("%Y-%m-%d")
    payload: dict[str, Any] = {
        "name": name, "date": date, "command": " ".join(["python", *sys.argv]),
        "machine": {"host": platform.node(), "cpus": os.cpu_count()}, "figures": figures}
    if plots:
        payload["plots"] = plots
    if notes:
        payload["notes"] = notes
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{date}-{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def load(path: Path) -> dict:
    """Read one result file, in the shape :func:`save` writes."""
    data = json.loads(Path(path).read_text())
    match = _FILE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: a result file is named <YYYY-MM-DD>-<name>.json")
    if "figures" not in data:  # a bare mapping of figures
        data = {"figures": {k: v for k, v in data.items() if k != "date"}}
    data.setdefault("date", match.group(1))
    data.setdefault("name", match.group(2))
    return data


def latest(directory: Path = RESULTS) -> dict[str, tuple[Path, dict]]:
    """The newest result file of each benchmark name, by the date in its file name."""
    newest: dict[str, Path] = {}
    for path in sorted(Path(directory).glob("*.json")):  # sorted: a later date replaces an earlier one
        match = _FILE.match(path.name)
        if match:
            newest[match.group(2)] = path
    return {name: (path, load(path)) for name, path in sorted(newest.items())}


def _flat(value: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def rows(value: Any) -> list[dict[str, Any]] | None:
    """The rows of a list of mappings or a mapping of mappings (keyed ``name``), else None."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_flat(v) for v in value]
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **_flat(v)} for k, v in value.items()]
    return None


def _table(header: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def markdown(result: dict, images: dict[str, str] | None = None) -> str:
    """One result as a Markdown section: its figures as tables, then its plots' images.

    Parameters
    ----------
    result : dict
        A result as :func:`load` returns it.
    images : dict, optional
        Plot title -> the image's path relative to the page.
    """
    figures = result["figures"]
    parts = [f"## {result['name']} ({result['date']})"]
    if result.get("notes"):
        parts.append(result["notes"])
    if result.get("command"):
        parts.append(f"`{result['command']}`")
    scalars = {k: v for k, v in figures.items() if not isinstance(v, dict) and rows(v) is None}
    if scalars:
        parts.append(_table(["figure", "value"], [[k, v] for k, v in scalars.items()]))
    for key, value in figures.items():
        table = rows(value)
        if table is not None:
            columns = list(dict.fromkeys(c for row in table for c in row))
            parts.append(f"**{key}**\n\n" + _table(columns, [[row.get(c) for c in columns] for row in table]))
        elif isinstance(value, dict):
            parts.append(f"**{key}**\n\n" + _table(["figure", "value"], [[k, v] for k, v in _flat(value).items()]))
    for spec in result.get("plots", []):
        if images and spec["title"] in images:
            parts.append(f"![{spec['title']}]({images[spec['title']]})")
    return "\n\n".join(parts) + "\n"


def plot_png(result: dict, spec: dict) -> bytes:
    """Draw one plot of a result (grouped bars of ``y`` per ``x``) as PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

    table = rows(result["figures"][spec["table"]]) or []
    labels = [str(row.get(spec["x"])) for row in table]
    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.subplots()
    width = 0.8 / max(1, len(spec["y"]))
    for i, column in enumerate(spec["y"]):
        values = [row.get(column) if isinstance(row.get(column), (int, float)) else float("nan") for row in table]
        ax.bar([x + i * width for x in range(len(table))], values, width, label=column)
    ax.set_xticks([x + width * (len(spec["y"]) - 1) / 2 for x in range(len(table))], labels)
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.set_title(f"{result['name']} ({result['date']}): {spec['title']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---- the mkdocs hook (mkdocs.yml: hooks) ----

_PAGE = "benchmarks.md"
_rendered: dict[str, str] = {}


def on_files(files, config):  # noqa: ANN001, ANN201 - mkdocs' hook signature
    """Render the newest results, adding each plot to the site as a generated file."""
    from mkdocs.structure.files import File

    directory = Path(config.config_file_path).parent / "benchmarks" / "results"
    sections = []
    for name, (_, result) in latest(directory).items():
        images = {}
        for i, spec in enumerate(result.get("plots", [])):
            uri = f"img/benchmarks/{result['date']}-{name}-{i}.png"
            files.append(File.generated(config, uri, content=plot_png(result, spec)))
            images[spec["title"]] = uri  # relative to docs/: mkdocs rewrites it for the page's URL
        sections.append(markdown(result, images))
    _rendered[_PAGE] = "\n".join(sections) or "No results yet under `benchmarks/results/`.\n"
    return files


def on_page_markdown(markdown_text, page, config, files):  # noqa: ANN001, ANN201 - mkdocs' hook signature
    """Put the rendered results where the benchmarks page holds the marker."""
    if page.file.src_uri != _PAGE:
        return markdown_text
    if MARKER not in markdown_text:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"docs/{_PAGE}: the marker {MARKER} is missing")
    return markdown_text.replace(MARKER, _rendered.get(_PAGE, ""))
