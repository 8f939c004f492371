"""Write a notebook from a compact description (cells as strings), without outputs.

Usage in code: `write_notebook(path, [("md", text), ("params", code), ("code", code), ...])`.
Notebooks are committed output-free; this keeps their JSON canonical.
"""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n")
