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


def test_fit_prints_a_summary_then_plot_draws_the_demo_figures(tmp_path):
    src = tmp_path / "sim.h5ad"
    ab.datasets.simulate_counts(n_cells=240, n_genes=40).write_h5ad(src)
    fitted, model_dir, figures = tmp_path / "out.h5ad", tmp_path / "model", tmp_path / "figs"
    args = ["--batch-key", "batch", "--labels-key", "cell_type", "--max-epochs", "3"]
    proc = run(
        ["fit", str(src), str(fitted), *args, "--model-dir", str(model_dir), "--threads", "1"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fit: 240 cells x 40 genes, 3 batches in 'batch'" in proc.stdout
    assert "trained 3 epochs" in proc.stdout
    assert "batch silhouette (low = mixed)" in proc.stdout
    assert "X_armed_fe" in proc.stdout
    # Not a terminal here: no progress bar in the captured output.
    assert "Epoch 1/3" not in proc.stdout + proc.stderr
    before = _digest(fitted)
    proc = run(
        ["plot", str(fitted), "--model-dir", str(model_dir), "--out", str(figures)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in DEMO_FIGURES:
        assert (figures / f"{name}.png").stat().st_size > 5_000, name
    assert f"wrote {len(DEMO_FIGURES)} figures" in proc.stdout
    assert _digest(fitted) == before  # plot reads the file, never writes it


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "is not a file; pass the path of an .h5ad file"),
        ("not_fitted", "has no uns['armed'] record"),
        ("no_model", "model.pt"),
        ("bad_label", "--label-key 'tissue' is not a column of adata.obs"),
    ],
)
def test_plot_bad_input_is_one_line_and_exit_status_2(tmp_path, case, message):
    adata = ab.datasets.simulate_counts(n_cells=120, n_genes=30)
    path, model_dir = tmp_path / "x.h5ad", tmp_path / "model"
    if case in ("no_model", "bad_label"):
        ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
        model = ab.model.ArmedRNA(adata, seed=0)
        model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
        model.write_to_adata()
        if case == "bad_label":
            model.save(model_dir)
    if case != "missing_file":
        adata.write_h5ad(path)
    extra = ["--label-key", "tissue"] if case == "bad_label" else []
    proc = run(
        ["plot", str(path), "--model-dir", str(model_dir), "--out", str(tmp_path / "f"), *extra],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("armed-bio: error: ")
    assert message in line
    assert not (tmp_path / "f").exists()
