"""Two-process Lightning DDP training on CPU (gloo), run for real in a subprocess.

Lightning's DDP launcher re-runs the calling script once per rank, so the training runs in a
small script of its own rather than inside pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import armed_bio as ab

    out = sys.argv[1]
    adata = ab.datasets.simulate_counts(n_cells=300, n_genes=50, n_batches=3, n_cell_types=3)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ab.model.ArmedRNA(adata, n_hidden=32, seed=0)
    model.train(max_epochs=2, batch_size=64, accelerator="cpu", devices=2,
                strategy="ddp_find_unused_parameters_true", enable_progress_bar=False,
                checkpoint_dir=f"{out}/checkpoints")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    params = {k: float(p.detach().double().sum()) for k, p in model.module.named_parameters()}
    record = {"params": params, "logged": sorted(model.history)}
    if rank == 0:
        record["latent_shape"] = list(model.get_latent_representation(kind="fe").shape)
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(record, fh)
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_in_sync(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Gradients are all-reduced: both ranks end with the same weights, although each saw
    # a different half of the cells.
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        np.testing.assert_allclose(value, ranks[1]["params"][name], rtol=1e-6, err_msg=name)
    # The extra metrics (synced across ranks at epoch end) were logged, not dropped.
    assert "reconstruction_loss_fe_train" in ranks[0]["logged"]
    assert ranks[0]["latent_shape"] == [300, 10]
    # Checkpointing under DDP: one checkpoint, written by rank 0, after the last epoch.
    from armed_bio.train._checkpoint import CHECKPOINT_FILE, read_checkpoint_run

    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [CHECKPOINT_FILE]
    assert read_checkpoint_run(tmp_path / "checkpoints" / CHECKPOINT_FILE)["max_epochs"] == 2
