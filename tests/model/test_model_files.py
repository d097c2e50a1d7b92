"""Model files: atomic saves, recorded versions, and named errors for damaged or foreign files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from armed_bio.model import ArmedImageClassifier, ArmedRNA
from armed_bio.model._save_load import FORMAT_VERSION

# Trains model A and saves it; trains model B and saves it over A, while a thread kills the
# process (SIGKILL, no clean-up) as soon as B's temporary folder appears. A big extra obsm
# makes the AnnData's write long enough for the kill to land in the middle of the save.
INTERRUPTED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    import numpy as np, torch
    torch.set_num_threads(1)
    import armed_bio as ab

    target = Path(sys.argv[1])
    adata = ab.datasets.simulate_counts(n_cells=300, n_genes=60, n_batches=3, seed=0)
    adata.obsm["padding"] = np.random.default_rng(0).random((300, 40_000))
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
    fit = dict(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    a = ab.model.ArmedRNA(adata, seed=0)
    a.train(seed=0, **fit)
    a.save(target, save_anndata=True)
    np.save(target.parent / "a_latent.npy", a.get_latent_representation())
    b = ab.model.ArmedRNA(adata, seed=1)
    b.train(seed=1, **fit)

    def kill_when_saving():
        while not list(target.parent.glob(f".{target.name}.saving-*")):
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_when_saving, daemon=True).start()
    b.save(target, overwrite=True, save_anndata=True)
    print("the save finished before the kill")
    """
)


@pytest.mark.slow
def test_an_interrupted_save_leaves_the_previous_model_intact(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(INTERRUPTED_SAVE)
    target = tmp_path / "model"
    run = subprocess.run(
        [sys.executable, str(script), str(target)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == -9, run.stdout + run.stderr  # killed, not finished
    leftovers = list(tmp_path.glob(".model.saving-*"))
    assert len(leftovers) == 1  # the kill landed inside the save
    model = ArmedRNA.load(target)  # the previous model, whole, with its AnnData
    np.testing.assert_array_equal(
        model.get_latent_representation(), np.load(tmp_path / "a_latent.npy")
    )
    # The next save clears what the killed one left behind.
    model.save(target, overwrite=True)
    assert not list(tmp_path.glob(".model.saving-*"))


def test_the_file_records_its_format_and_the_package_version(trained, tmp_path):
    import armed_bio

    trained.save(tmp_path / "m")
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert payload["format"] == f"armed_bio.model/{FORMAT_VERSION}"
    assert payload["armed_bio_version"] == armed_bio.__version__
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["attributes.json", "model.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left over


def test_a_folder_with_other_files_is_never_replaced(trained, tmp_path):
    trained.save(tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not part of a saved model \(\['notes.txt'\]\)"):
        trained.save(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        trained.save(tmp_path / "file")


def test_a_truncated_model_file_names_the_file_and_the_fix(trained, tmp_path):
    trained.save(tmp_path / "m")
    model_file = tmp_path / "m" / "model.pt"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.pt is truncated or corrupted.*Copy the model"):
        ArmedRNA.load(tmp_path / "m", adata=trained.adata)
    trained.save(tmp_path / "m2")
    attributes = tmp_path / "m2" / "attributes.json"
    attributes.write_text(attributes.read_text()[:100])
    with pytest.raises(ValueError, match=r"attributes.json is truncated or corrupted"):
        ArmedRNA.load(tmp_path / "m2", adata=trained.adata)


def test_a_newer_format_says_to_upgrade(trained, tmp_path):
    trained.save(tmp_path / "m")
    model_file = tmp_path / "m" / "model.pt"
    payload = torch.load(model_file, weights_only=True)
    payload.update(format=f"armed_bio.model/{FORMAT_VERSION + 1}", armed_bio_version="9.0.0")
    torch.save(payload, model_file)
    with pytest.raises(ValueError, match=r"format 2, written by armed_bio 9.0.0.*pip install -U"):
        ArmedRNA.load(tmp_path / "m", adata=trained.adata)
    payload["format"] = "something else"
    torch.save(payload, model_file)
    with pytest.raises(ValueError, match="is not an armed_bio model file"):
        ArmedRNA.load(tmp_path / "m", adata=trained.adata)


def test_another_model_class_names_the_class_to_load_with(trained, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"holds a ArmedRNA model.*ArmedRNA.load"):
        ArmedImageClassifier.load(tmp_path / "m", adata=trained.adata)


def test_a_save_killed_between_its_renames_points_to_the_previous_model(trained, tmp_path):
    trained.save(tmp_path / "m")
    os.rename(tmp_path / "m", tmp_path / ".m.old-123-abc")  # what that kill leaves
    with pytest.raises(FileNotFoundError, match=r"interrupted; the previous model is in .*old"):
        ArmedRNA.load(tmp_path / "m", adata=trained.adata)
