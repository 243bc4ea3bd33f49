"""Write a notebook from a list of (kind, source[, tags]) cells, without outputs.

Usage in a build script: ``write(path, [("md", "..."), ("code", "...", ["parameters"])])``.
Notebooks are committed stripped (no outputs, no execution counts) and keep their tags.
"""

from __future__ import annotations

import sys

import nbformat


def write(path: str, cells: list[tuple]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(cells):
        kind, source = cell[0], cell[1].strip("\n")
        tags = cell[2] if len(cell) > 2 else []
        new = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        new.id = f"cell-{i:02d}"
        if tags:
            new.metadata["tags"] = list(tags)
        nb.cells.append(new)
    nbformat.validate(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    sys.exit("import tools.nbbuild and call write()")
