"""Small real datasets bundled with armed_bio (no download at run time)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

_FILES = {"cellbench_lung5": "cellbench_lung5_hvg2k.h5ad"}


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset file, in the installed package or the source checkout."""
    if name not in _FILES:
        raise KeyError(f"unknown bundled dataset {name!r}; available: {sorted(_FILES)}.")
    filename = _FILES[name]
    candidates = [
        Path(__file__).resolve().parent / "_data" / filename,  # wheel install
        Path(__file__).resolve().parents[2] / "data" / filename,  # source checkout
    ]
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"bundled file {filename} not found (looked in {[str(p) for p in candidates]}). "
        "Reinstall armed_bio or run from the repository checkout."
    )


def cellbench_lung5() -> ad.AnnData:
    """CellBench lung adenocarcinoma cell lines: 1,021 cells x 2,000 HVGs, 5 batches.

    Four CEL-seq2 plates and one Drop-seq run (``obs["batch"]``, a strong protocol effect) of
    five cell lines (``obs["cell_type"]``); raw counts in ``.X``. Tian et al., Nat Methods 16,
    479-487 (2019), MIT licence; provenance in ``uns["source"]`` and ``data/README.md``.
    """
    return ad.read_h5ad(bundled_path("cellbench_lung5"))
