r"""What resumable training costs: ArmedRNA epochs with checkpoints on vs off, next to scVI.

On the 100k-cell simulated sparse counts of ``rna_speed.py`` (2,000 genes, 10 batches, batch
size 128), trains ``ArmedRNA`` without checkpoints, ``ArmedRNA`` with
``train(checkpoint_dir=...)`` at the default interval (a checkpoint after every epoch) and
scVI, alternating the three in one process (the order flips every round). An epoch is timed
from its start to the next epoch's start (the last one to the end of training), so the
checkpoint written at its end is inside it. The first epoch is left out (start-up costs).
Also reports the checkpoint's size and the time of one atomic write. The divergence check
(always on) is in both ArmedRNA rows.

    .venv/bin/python benchmarks/rna_checkpoint_overhead.py            # 100k cells, 2 rounds
    .venv/bin/python benchmarks/rna_checkpoint_overhead.py --n-cells 20000 --rounds 1
    .venv/bin/python benchmarks/rna_checkpoint_overhead.py --report     # table from the JSON

Writes results/rna_checkpoint_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from _common import RESULTS, machine, write_results
from rna_speed import BATCH_SIZE, load, make_model

from armed_bio.train import ArmedTrainingPlan
from armed_bio.train._checkpoint import CHECKPOINT_FILE

RUNS = ["armed", "armed_checkpointed", "scvi"]


class EpochStarts(pl.Callback):
    """Times from one epoch's start to the next (the last: to the end of training)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return list(np.diff(self.marks))


class TimedPlan(ArmedTrainingPlan):
    """The training plan, timing its epoch-end hook: where the checkpoint is written.

    The hook's time with and without checkpoints differs only by the checkpoint, and is
    free of the epoch-to-epoch noise of this shared machine.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_end_seconds: list[float] = []

    def on_train_epoch_end(self) -> None:
        t0 = time.perf_counter()
        super().on_train_epoch_end()
        self.epoch_end_seconds.append(time.perf_counter() - t0)


def fit(name: str, n_cells: int, epochs: int, folder: Path) -> dict:
    adata = load(n_cells)
    model = make_model("scvi" if name == "scvi" else "armed", adata)
    if name != "scvi":
        model._training_plan_cls = TimedPlan
    timer = EpochStarts()
    kwargs = {}
    if name == "armed_checkpointed":
        shutil.rmtree(folder, ignore_errors=True)
        kwargs["checkpoint_dir"] = folder
    model.train(
        max_epochs=epochs,
        batch_size=BATCH_SIZE,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[timer],
        **kwargs,
    )
    out = {"epoch_seconds": timer.times}
    if name != "scvi":
        out["epoch_end_hook_seconds"] = model.trainer.lightning_module.epoch_end_seconds
    if name == "armed_checkpointed":
        checkpoint = folder / CHECKPOINT_FILE
        out["checkpoint_mib"] = checkpoint.stat().st_size / 2**20
        t0 = time.perf_counter()
        model.trainer.save_checkpoint(folder / "timing.ckpt")
        out["one_write_s"] = time.perf_counter() - t0
    del model, adata
    gc.collect()
    return out


def report(rows: list[dict], n_cells: int, epochs: int, rounds: int) -> None:
    """Write the table and JSON from the runs."""
    med = {
        name: float(np.median([r["epoch_s"] for r in rows if r["run"] == name])) for name in RUNS
    }
    ck = [r for r in rows if r["run"] == "armed_checkpointed"]
    overhead = med["armed_checkpointed"] / med["armed"] - 1
    write_s = float(np.median([r["one_write_s"] for r in ck]))
    hook = {
        name: float(
            np.median([t for r in rows if r["run"] == name for t in r["epoch_end_hook_seconds"]])
        )
        for name in ("armed", "armed_checkpointed")
    }
    hook_overhead = (hook["armed_checkpointed"] - hook["armed"]) / med["armed"]
    labels = {
        "armed": "ArmedRNA, no checkpoints",
        "armed_checkpointed": "ArmedRNA, a checkpoint every epoch (default)",
        "scvi": "scVI",
    }
    lines = [
        "# Resumable training: the cost of checkpoints (CPU, one thread)\n",
        f"{n_cells:,} simulated cells x 2,000 genes (sparse), 10 batches, batch size "
        f"{BATCH_SIZE}; {epochs} epochs per run, {rounds} alternating rounds; median "
        "seconds per epoch (start to next start, first epoch left out), so the checkpoint "
        "written at an epoch's end counts in it.\n",
        "| run | s/epoch | ratio to scVI |",
        "|---|---|---|",
        *(f"| {labels[name]} | {med[name]:.2f} | {med[name] / med['scvi']:.2f} |" for name in RUNS),
        "\nThe checkpoint is written in the training plan's epoch-end hook, the only code "
        "that differs between the two ArmedRNA runs. Timed inside the runs, that hook takes "
        f"{1e3 * hook['armed']:.1f} ms without checkpoints and "
        f"{1e3 * hook['armed_checkpointed']:.1f} ms with them (medians over every epoch): "
        f"**checkpoint overhead {100 * hook_overhead:.2f} % of an epoch** (target: under 5 %). "
        f"One checkpoint is {np.median([r['checkpoint_mib'] for r in ck]):.1f} MiB (a further "
        f"write after training: {1e3 * write_s:.0f} ms).",
        f"\nWhole epochs timed start to start differ by {100 * overhead:+.1f} %, which is this "
        "shared machine's epoch-to-epoch noise (epochs of one run vary by several seconds, "
        "every epoch is in the JSON), not the checkpoint.",
    ]
    payload = {
        "runs": rows,
        "median_epoch_s": med,
        "overhead": overhead,
        "epoch_end_hook_s": hook,
        "checkpoint_overhead_of_epoch": hook_overhead,
        "n_cells": n_cells,
        "epochs": epochs,
        "rounds": rounds,
        "machine": machine(),
    }
    write_results("rna_checkpoint_overhead", payload, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--report", action="store_true", help="redraw the table from the committed JSON"
    )
    args = parser.parse_args()
    if args.report:
        stored = json.loads((RESULTS / "rna_checkpoint_overhead.json").read_text())
        report(stored["runs"], stored["n_cells"], stored.get("epochs", 3), stored.get("rounds", 2))
        return
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in RUNS if r % 2 == 0 else RUNS[::-1]:
                res = fit(name, args.n_cells, args.epochs, Path(tmp) / "checkpoints")
                row = {
                    "run": name,
                    "round": r,
                    **res,
                    "epoch_s": float(np.median(res["epoch_seconds"][1:])),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    report(rows, args.n_cells, args.epochs, args.rounds)


if __name__ == "__main__":
    main()
