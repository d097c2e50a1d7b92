"""The tutorials run end to end as scripts (short training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


@pytest.mark.slow
def test_microscopy_tutorial_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / "microscopy.py"), "--out", str(tmp_path), "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "segmentation vs truth" in result.stdout
    assert "ME head accuracy on the unseen batch" in result.stdout
    assert (tmp_path / "image_counterfactuals.png").stat().st_size > 5000
    adata = ad.read_h5ad(tmp_path / "microscopy_armed.h5ad")
    assert {"X_armed_fe", "X_armed_re", "image"} <= set(adata.obsm)
