"""Write the project's notebooks from their cell lists in ``tools/notebooks/*.py``.

The cell lists are the source; the ``.ipynb`` files are written from them stripped (no
outputs, no execution counts), with stable cell ids and their tags, so that diffs stay
readable. ``tests/unit/test_packaging.py`` checks that the committed notebooks are what
this script writes.

Usage (from the repository root)::

    python tools/nbbuild.py            # rewrite the notebooks in place
    python tools/nbbuild.py OUT_DIR    # write them under OUT_DIR instead
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import nbformat

SOURCES = Path(__file__).resolve().parent / "notebooks"

#: the parameters every service notebook takes: the keys of conf/*.yaml (fink.config.FinkConfig)
COMMON_PARAMETERS = '''kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook'''
ROOT = Path(__file__).resolve().parents[1]


def notebook(cells: list[tuple]) -> nbformat.NotebookNode:
    """Build a notebook from ``(kind, source[, tags])`` tuples, kind being ``md`` or ``code``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(cells):
        kind, source = cell[0], cell[1].strip("\n")
        new = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        new.id = f"cell-{i:02d}"
        if len(cell) > 2:
            new.metadata["tags"] = list(cell[2])
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


def build(root: Path = ROOT) -> list[Path]:
    """Write every notebook of ``tools/notebooks/*.py`` under ``root``; return their paths."""
    written = []
    sys.path.insert(0, str(SOURCES.parent))  # the sources import COMMON_PARAMETERS from here
    for source in sorted(SOURCES.glob("*.py")):
        for rel, cells in runpy.run_path(str(source))["NOTEBOOKS"].items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook(cells), str(path))
            written.append(path)
    return written


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(p)
