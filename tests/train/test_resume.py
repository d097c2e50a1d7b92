"""Checkpoints and resumed training: an interrupted run ends equal to an uninterrupted one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import FAST

import armed_bio as ab
from armed_bio.train._checkpoint import CHECKPOINT_FILE, read_checkpoint_run

TRAIN = {"max_epochs": 6, "batch_size": 64, "seed": 0, **FAST}


def _model():
    adata = ab.datasets.simulate_counts(n_cells=300, n_genes=50, n_batches=3, seed=0)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
    return ab.model.ArmedRNA(adata, seed=0)


class _Crash(RuntimeError):
    pass


class _Interrupt(pl.Callback):
    """Crash the run at the end of epoch ``at`` (counted from 0; before its checkpoint)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.at:
            raise _Crash


def _outputs(model) -> dict:
    return {
        "fe": model.get_latent_representation(),
        "re": model.get_latent_representation(kind="re"),
        "state": {k: v.clone() for k, v in model.module.state_dict().items()},
        "history": {k: v.iloc[:, 0].astype(float).tolist() for k, v in model.history_.items()},
    }


def _assert_equal(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["fe"], b["fe"])
    np.testing.assert_array_equal(a["re"], b["re"])
    assert a["state"].keys() == b["state"].keys()
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
    assert a["history"] == b["history"]


def test_a_run_interrupted_in_process_resumes_to_the_same_model(tmp_path):
    reference = _model()
    reference.train(**TRAIN)
    model = _model()
    with pytest.raises(_Crash):
        model.train(checkpoint_dir=tmp_path, callbacks=[_Interrupt(at=3)], **TRAIN)
    assert read_checkpoint_run(tmp_path / CHECKPOINT_FILE)["max_epochs"] == 6
    resumed = _model()  # a fresh model, as after a crash
    resumed.train(checkpoint_dir=tmp_path, resume=True, **TRAIN)
    _assert_equal(_outputs(reference), _outputs(resumed))
    assert resumed.train_params_["epochs_trained"] == 6


def test_checkpoints_are_written_every_n_epochs_and_after_the_last(tmp_path):
    model = _model()
    with pytest.raises(_Crash):
        model.train(
            checkpoint_dir=tmp_path,
            checkpoint_every_n_epochs=2,
            callbacks=[_Interrupt(at=3)],
            **TRAIN,
        )
    # epochs 1-4 ran; the checkpoint after epoch 2 is the last one (epoch 4's did not run).
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert not list(tmp_path.glob(".*partial"))


def test_resume_refuses_another_run_and_a_fresh_run_refuses_an_old_checkpoint(tmp_path):
    _model().train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 2})
    with pytest.raises(FileExistsError, match="Pass resume=True to continue it"):
        _model().train(checkpoint_dir=tmp_path, **TRAIN)
    with pytest.raises(ValueError, match=r"different run \(max_epochs: 2 then, 6 now\)"):
        _model().train(checkpoint_dir=tmp_path, resume=True, **TRAIN)
    with pytest.raises(ValueError, match=r"plan_kwargs: {} then, {'lr': 0.01} now"):
        _model().train(
            checkpoint_dir=tmp_path,
            resume=True,
            plan_kwargs={"lr": 1e-2},
            **{**TRAIN, "max_epochs": 2},
        )


def test_resuming_a_finished_run_trains_nothing_more(tmp_path):
    first = _model()
    first.train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 2})
    again = _model()
    again.train(checkpoint_dir=tmp_path, resume=True, **{**TRAIN, "max_epochs": 2})
    _assert_equal(_outputs(first), _outputs(again))


def test_bad_checkpoint_arguments_are_named(tmp_path, caplog):
    model = _model()
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        model.train(resume=True, **TRAIN)
    with pytest.raises(ValueError, match="checkpoint_every_n_epochs must be a positive integer"):
        model.train(checkpoint_dir=tmp_path, checkpoint_every_n_epochs=0, **TRAIN)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        model.train(checkpoint_dir=tmp_path / "file", **TRAIN)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable armed_bio training checkpoint"):
        model.train(checkpoint_dir=tmp_path / "bad", resume=True, **TRAIN)
    with caplog.at_level(logging.WARNING, logger="armed_bio"):
        model.train(checkpoint_dir=tmp_path / "new", resume=True, **{**TRAIN, "max_epochs": 1})
    assert "No checkpoint in" in caplog.text
    assert (tmp_path / "new" / CHECKPOINT_FILE).exists()


# A training run to be killed: many small epochs, a checkpoint after each.
KILLED_RUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    import armed_bio as ab

    mode, folder = sys.argv[1], sys.argv[2]
    adata = ab.datasets.simulate_counts(n_cells=600, n_genes=60, n_batches=3, seed=0)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ab.model.ArmedRNA(adata, seed=0)
    train = dict(max_epochs=40, batch_size=64, seed=0, accelerator="cpu",
                 enable_progress_bar=False)
    if mode == "reference":
        model.train(**train)
    else:
        model.train(checkpoint_dir=folder + "/checkpoints", resume=mode == "resume", **train)
    np.save(f"{folder}/{mode}_fe.npy", model.get_latent_representation())
    np.save(f"{folder}/{mode}_re.npy", model.get_latent_representation(kind="re"))
    history = {k: v.iloc[:, 0].astype(float).tolist() for k, v in model.history_.items()}
    json.dump(history, open(f"{folder}/{mode}_history.json", "w"))
    print("finished")
    """
)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), mode, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    checkpoint = tmp_path / "checkpoints" / CHECKPOINT_FILE
    victim = subprocess.Popen(
        [sys.executable, str(script), "checkpointed", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into the middle of a later epoch
    victim.kill()  # SIGKILL: no clean-up, no final checkpoint
    output = victim.communicate()[0].decode()
    assert victim.returncode == -9, output
    assert "finished" not in output
    epoch_at_kill = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 0 <= epoch_at_kill < 39  # killed part-way through the 40 epochs
    print(f"killed after the checkpoint of epoch {epoch_at_kill + 1} of 40")

    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run("reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Bitwise equal on this platform (CPU, one thread).
    for kind in ("fe", "re"):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"resume_{kind}.npy"), np.load(tmp_path / f"reference_{kind}.npy")
        )
    history = json.loads((tmp_path / "resume_history.json").read_text())
    assert history == json.loads((tmp_path / "reference_history.json").read_text())
    assert len(history["train_loss"]) == 40
