"""Every tutorial notebook runs top to bottom, on reduced settings, so none can rot.

Each notebook has one cell tagged ``parameters``; the test inserts a cell after it that
overrides those values (fewer epochs, fewer cells, no progress bars), as papermill does, then
runs the notebook with a real Jupyter kernel (nbclient) in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import SHARED_DATA
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
QUIET = {"PROGRESS": False, "THREADS": 1}

# Reduced settings, and a line each run must print.
NOTEBOOKS = {
    "01_scrna_scanpy_workflow.ipynb": (
        {"MAX_EPOCHS": 4, "SCVI_EPOCHS": 4},
        "wrote cellbench_armed.h5ad",
    ),
    "02_seeing_batch_effects.ipynb": ({"MAX_EPOCHS": 4}, "mean counts per 10k of H1975 cells"),
    "03_new_donors_and_batches.ipynb": (
        {"N_CELLS": 2000, "MAX_EPOCHS": 3, "ADAPT_EPOCHS": 2},
        "kNN on z_FE",
    ),
    "04_microscopy.ipynb": (
        {"N_CROPS": 300, "AE_EPOCHS": 1, "CNN_EPOCHS": 1},
        "FE head on the unseen plate",
    ),
    "05_live_cell_time_lapse.ipynb": ({"DOWNSAMPLE": 4, "MAX_EPOCHS": 1}, "movie-free images"),
}


def parameter_cell(book) -> int:
    """Position of the cell tagged ``parameters`` (exactly one per notebook)."""
    tagged = [i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a tutorial needs exactly one cell tagged 'parameters'"
    return tagged[0]


def execute(path: Path, overrides: dict, workdir: Path):
    """Run the notebook at ``path`` with ``overrides`` in ``workdir``; return it executed."""
    book = nbformat.read(path, as_version=4)
    lines = [f"{name} = {value!r}" for name, value in overrides.items()]
    if "DATA =" in book.cells[parameter_cell(book)].source:
        lines.append(f"DATA = Path({str(SHARED_DATA)!r})")
    injected = nbformat.v4.new_code_cell("\n".join(lines))
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(parameter_cell(book) + 1, injected)
    client = NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return book


def printed(book) -> str:
    return "\n".join(
        out.get("text", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


def test_notebooks_are_committed_without_outputs():
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    assert {p.name for p in paths} == set(NOTEBOOKS)
    for path in paths:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        parameter_cell(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs, f"{path.name}: strip outputs before committing"
                assert cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, tmp_path):
    overrides, expected = NOTEBOOKS[name]
    uses_shared = "DATA =" in nbformat.read(TUTORIALS / name, as_version=4).cells[1].source
    if uses_shared and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not available")
    book = execute(TUTORIALS / name, {**QUIET, **overrides}, tmp_path)
    assert expected in printed(book)
    images = [
        out
        for cell in book.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{name} drew no figure"
