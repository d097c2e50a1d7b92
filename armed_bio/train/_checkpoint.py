"""Checkpoints that let an interrupted training run continue as if it had never stopped.

A checkpoint is Lightning's own (weights, both optimizers, the loops' counters) plus what
Lightning does not keep: the plan's step counter, the epoch history, the random number
generators' states (so shuffling and random-effect draws continue the same sequence) and a
record of the run's settings, checked on resume. It is written to a temporary file and renamed
over ``last.ckpt``, so a run killed while writing still has the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "last.ckpt"
#: Key of armed_bio's own part of a Lightning checkpoint.
CHECKPOINT_KEY = "armed_bio"


def rng_states() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's and Python's global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global state is what to keep
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": keys.tolist(), "pos": int(pos), "gauss": [int(has_gauss), cached]},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", np.asarray(numpy["keys"], dtype=np.uint32), numpy["pos"], *numpy["gauss"])
    )
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint(trainer, dirpath: str | os.PathLike) -> Path:
    """Save the trainer's checkpoint to ``dirpath/last.ckpt`` atomically (every rank calls it)."""
    folder = Path(dirpath)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / CHECKPOINT_FILE
    partial = folder / f".{CHECKPOINT_FILE}.partial"
    trainer.save_checkpoint(partial)  # a collective call; rank 0 writes the file
    if trainer.is_global_zero:
        os.replace(partial, final)
    return final


def read_checkpoint_run(path: str | os.PathLike) -> dict[str, Any]:
    """The run settings recorded in a checkpoint (read without unpickling any object)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return json.loads(checkpoint[CHECKPOINT_KEY]["run"])
    except Exception as err:  # any failure means the same to the user
        raise ValueError(
            f"{path} is not a readable armed_bio training checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''}). Delete it to train from "
            "the start, or pass another checkpoint_dir."
        ) from err


def check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Raise unless a checkpoint's run settings equal this run's."""
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        lines = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{path} is a checkpoint of a different run ({lines}). Resume with the same data, "
            "model and train() arguments, or train from the start in another checkpoint_dir."
        )
