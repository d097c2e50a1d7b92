"""The command line, run for real in a subprocess: the demo on bundled real data, and fit."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

import armed_bio as ab
from armed_bio._demo import FIGURES as DEMO_FIGURES

CLI = [sys.executable, "-m", "armed_bio.cli"]


def run(args, cwd):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_demo_end_to_end_on_bundled_real_data(tmp_path):
    out = tmp_path / "demo"
    proc = run(["demo", "--out", str(out), "--threads", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch silhouette" in proc.stdout
    for name in ("cellbench_armed.h5ad", "scores.csv", "most_batch_affected_genes.csv"):
        assert (out / name).stat().st_size > 0
    for name in DEMO_FIGURES:
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    adata = ad.read_h5ad(out / "cellbench_armed.h5ad")
    for key in ("X_pca", "X_armed_fe", "X_armed_re", "X_armed_fe_umap"):
        assert key in adata.obsm
    assert adata.uns["armed"]["setup"]["batch_key"] == "batch"
    scores = pd.read_csv(out / "scores.csv", index_col=0)
    sil_b, sil_l = scores["silhouette_batch"], scores["silhouette_label"]
    # CellBench's protocol/plate effect: FE mixes batches better than uncorrected PCA, keeps
    # the cell lines apart, and the RE latent is organised by batch.
    assert sil_b["X_armed_fe"] < sil_b["X_pca"]
    assert sil_l["X_armed_fe"] > 0.2
    assert sil_b["X_armed_re"] - sil_b["X_armed_fe"] > 0.3


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_writes_annotated_copy_and_saves_model(tmp_path):
    src = tmp_path / "sim.h5ad"
    ab.datasets.simulate_counts(n_cells=200, n_genes=40).write_h5ad(src)
    before = _digest(src)
    proc = run(
        [
            "fit",
            str(src),
            str(tmp_path / "out.h5ad"),
            "--batch-key",
            "batch",
            "--max-epochs",
            "2",
            "--model-dir",
            str(tmp_path / "model"),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["X_armed_fe"].shape == (200, 10)
    assert (tmp_path / "model" / "model.pt").exists()
    assert _digest(src) == before


def test_fit_bad_batch_key_fails_clearly_and_writes_nothing(tmp_path):
    src = tmp_path / "sim.h5ad"
    ab.datasets.simulate_counts(n_cells=100, n_genes=30).write_h5ad(src)
    before = _digest(src)
    proc = run(["fit", str(src), str(tmp_path / "out.h5ad"), "--batch-key", "plate"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "batch_key 'plate' is not a column of adata.obs" in proc.stderr
    assert not (tmp_path / "out.h5ad").exists()
    assert _digest(src) == before
