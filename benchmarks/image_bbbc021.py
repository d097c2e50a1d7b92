"""ARMED image models on BBBC021 MCF-7 crops (4 plates; DMSO vs protein synthesis inhibitor).

Parts (run all, or name some):
  heldout         20 % of cells held out (stratified by plate x label): accuracy/AUROC of the
                  ME-CNN's FE and ME heads vs a plain CNN of the same backbone, plate silhouette
                  of the embeddings, training throughput (images/s).
  lopo            leave-one-plate-out: each plate in turn is unseen; the ME head takes the
                  Z-predictor route. Extra arguments: plates, and seed=N (repeatable; default 0).
  counterfactual  ArmedImage (conv autoencoder) on all crops: one cell rendered as every plate
                  and batch-free; per-plate intensity of counterfactuals vs real crops.
  decoder_width   the counterfactual part's plate-shift correlation for ArmedImage's
                  decoder_width 1, 0.75 and 0.5 (or width=W ...), seeds 0 and 1 (or
                  seed=N ...).
  throughput      training images/s of each model on the same 2,000 crops, alternating in one
                  process (run it alone: the other parts share the cores).
  heap            the plain CNN's and the autoencoder's throughput with image training's heap
                  tuning (armed_bio._malloc) off and on, alternating, a process per run.

    .venv/bin/python benchmarks/image_bbbc021.py [heldout] [lopo [plate ...] [seed=N ...]]
        [counterfactual] [decoder_width] [throughput] [heap]

Results: benchmarks/results/image_bbbc021_<part>.{json,md}, figure
benchmarks/results/image_bbbc021_counterfactuals.png.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import torch
from _common import RESULTS, SHARED, EpochTimer, machine, steady, write_results
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score, silhouette_score
from sklearn.model_selection import cross_val_score

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier
from armed_bio.model._query import normalised_entropy

torch.set_num_threads(1)
logging.getLogger("armed_bio").setLevel(logging.WARNING)
DATA = SHARED / "bbbc021_mcf7_crops_4plates.h5ad"
POSITIVE = "Protein synthesis"
SEED = 0
MODELS = {  # name -> ArmedImageClassifier kwargs
    "ME-CNN (ARMED)": {"mode": "mixed"},
    "FE-CNN (adversary, no RE)": {"mode": "fixed"},
    "plain CNN": {"mode": "fixed", "adversary_weight": 0.0},
}


def load() -> ad.AnnData:
    return ad.read_h5ad(DATA)


def stratified_holdout(adata: ad.AnnData, frac: float = 0.2) -> np.ndarray:
    """Boolean mask of held-out cells, ``frac`` of every plate x label group."""
    rng = np.random.default_rng(SEED)
    held = np.zeros(adata.n_obs, dtype=bool)
    groups = adata.obs["batch"].astype(str) + "|" + adata.obs["label"].astype(str)
    for g in groups.unique():
        idx = np.flatnonzero(groups.to_numpy() == g)
        held[rng.choice(idx, int(round(frac * len(idx))), replace=False)] = True
    return held


def fit(train: ad.AnnData, seed: int = SEED, **kwargs) -> tuple[ArmedImageClassifier, dict]:
    ArmedImageClassifier.setup_anndata(train, batch_key="batch", labels_key="label")
    model = ArmedImageClassifier(train, seed=seed, **kwargs)
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.train(seed=seed, callbacks=[timer], enable_progress_bar=False)
    n_train = len(model.train_indices)
    epoch = steady(timer.times)
    return model, {
        "fit_s": time.perf_counter() - t0,
        "epochs": len(timer.times),
        "s_per_epoch": epoch,
        "train_images_per_s": n_train / epoch,
    }


def scores(model, test: ad.AnnData, kind: str) -> dict:
    proba = model.predict(test, head=kind, soft=True)
    truth = test.obs["label"].astype(str).to_numpy()
    pred = proba.columns.to_numpy()[proba.to_numpy().argmax(1)]
    out = {"accuracy": accuracy_score(truth, pred)}
    if len(set(truth)) == 2:
        out["auroc"] = roc_auc_score(truth == POSITIVE, proba[POSITIVE].to_numpy())
    return out


def plate_silhouettes(emb: np.ndarray, test: ad.AnnData) -> dict:
    plate = test.obs["batch"].astype(str).to_numpy()
    dmso = (test.obs["label"] == "DMSO").to_numpy()
    return {
        "plate_silhouette": float(silhouette_score(emb, plate)),
        # Within DMSO the biology is the same on every plate: plate structure is batch effect.
        "plate_silhouette_dmso": float(silhouette_score(emb[dmso], plate[dmso])),
        "label_silhouette": float(silhouette_score(emb, test.obs["label"].astype(str))),
        # How well a linear probe tells the plate of DMSO crops from the embedding (5-fold CV);
        # the majority-plate rate is the floor.
        "plate_probe_dmso": float(
            cross_val_score(LogisticRegression(max_iter=2000), emb[dmso], plate[dmso], cv=5).mean()
        ),
        "plate_probe_floor": float(
            np.unique(plate[dmso], return_counts=True)[1].max() / dmso.sum()
        ),
    }


def part_heldout() -> None:
    adata = load()
    held = stratified_holdout(adata)
    rows = {}
    for name, kwargs in MODELS.items():
        train, test = adata[~held].copy(), adata[held].copy()
        model, timing = fit(train, **kwargs)
        row = {"fe": scores(model, test, "fe"), **timing}
        if model.module.has_random_effects:
            row["me"] = scores(model, test, "me")
        row.update(plate_silhouettes(model.get_latent_representation(test), test))
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    table = [
        "| model | FE acc. | FE AUROC | ME acc. | ME AUROC | plate silhouette (all / DMSO) "
        "| plate probe acc. DMSO (floor) | label silhouette | train images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        me = r.get("me", {})
        table.append(
            f"| {name} | {r['fe']['accuracy']:.3f} | {r['fe']['auroc']:.3f} | "
            f"{me.get('accuracy', float('nan')):.3f} | {me.get('auroc', float('nan')):.3f} | "
            f"{r['plate_silhouette']:.3f} / {r['plate_silhouette_dmso']:.3f} | "
            f"{r['plate_probe_dmso']:.3f} ({r['plate_probe_floor']:.3f}) | "
            f"{r['label_silhouette']:.3f} | {r['train_images_per_s']:.0f} |"
        )
    write_results(
        "image_bbbc021_heldout",
        {"machine": machine(), "n_test": int(held.sum()), "results": rows},
        "\n".join(table) + "\n",
    )


def part_lopo(plates: list[str], seeds: list[int]) -> None:
    adata = load()
    folds_dir = RESULTS / "image_bbbc021_lopo_folds"
    folds_dir.mkdir(parents=True, exist_ok=True)
    plates = plates or sorted(adata.obs["batch"].astype(str).unique())
    for seed in seeds:
        for plate in plates:
            out = folds_dir / (f"{plate}.json" if seed == 0 else f"{plate}_seed{seed}.json")
            if out.exists():
                continue
            mask = (adata.obs["batch"] == plate).to_numpy()
            fold = {"plate": plate, "seed": seed, "n_cells": int(mask.sum())}
            for name in ("ME-CNN (ARMED)", "plain CNN"):
                train, test = adata[~mask].copy(), adata[mask].copy()
                train.obs["batch"] = train.obs["batch"].astype(str).astype("category")
                model, timing = fit(train, seed=seed, **MODELS[name])
                row = {"fe": scores(model, test, "fe"), "fit_s": timing["fit_s"]}
                if model.module.has_random_effects:
                    row["me"] = scores(model, test, "me")
                    proba = model.predict_batch_proba(test).to_numpy()
                    ent = normalised_entropy(torch.as_tensor(proba)).numpy()
                    row["fraction_on_z0"] = float((ent > model.entropy_threshold).mean())
                fold[name] = row
            out.write_text(json.dumps(fold, indent=2))
            print(json.dumps(fold), flush=True)
    folds = [json.loads(p.read_text()) for p in sorted(folds_dir.glob("*.json"))]
    table = [
        "| held-out plate | seed | cells | ME-CNN FE acc. | ME-CNN ME acc. (Z-predictor route) "
        "| plain CNN acc. | FE / ME / plain AUROC | ME cells on Z = 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(folds, key=lambda f: (f["plate"], f.get("seed", 0))):
        me, plain = f["ME-CNN (ARMED)"], f["plain CNN"]
        au = "n/a (one class)"
        if "auroc" in me["fe"]:
            au = f"{me['fe']['auroc']:.3f} / {me['me']['auroc']:.3f} / {plain['fe']['auroc']:.3f}"
        table.append(
            f"| {f['plate']} | {f.get('seed', 0)} | {f['n_cells']} | {me['fe']['accuracy']:.3f} | "
            f"{me['me']['accuracy']:.3f} | {plain['fe']['accuracy']:.3f} | {au} | "
            f"{me['fraction_on_z0']:.2f} |"
        )
    acc = {
        k: np.array([f[m][h]["accuracy"] for f in folds])
        for k, m, h in (
            ("fe", "ME-CNN (ARMED)", "fe"),
            ("me", "ME-CNN (ARMED)", "me"),
            ("plain", "plain CNN", "fe"),
        )
    }
    table.append(
        f"| **mean (s.d.) of {len(folds)} runs** | | | {acc['fe'].mean():.3f} "
        f"({acc['fe'].std():.3f}) | {acc['me'].mean():.3f} ({acc['me'].std():.3f}) | "
        f"{acc['plain'].mean():.3f} ({acc['plain'].std():.3f}) | | |"
    )
    wins = int((acc["me"] > acc["plain"]).sum())
    table.append(f"\nME head beats the plain CNN in {wins} of {len(folds)} runs.")
    write_results(
        "image_bbbc021_lopo", {"machine": machine(), "folds": folds}, "\n".join(table) + "\n"
    )


def plate_shifts(model: ArmedImage, adata: ad.AnnData) -> tuple:
    """How far rendering as plate k applies plate k's intensity shift.

    DMSO crops only (the same biology on every plate): the shift of each plate's real mean
    from the all-plate mean, vs the shift of the same 600 DMSO cells rendered as that plate
    from their batch-free render. Returns the real per-plate and all-plate channel means, the
    rendered ones, the batch-free render's, both shifts and the correlation of the 12 shifts.
    """
    plates = model.batch_categories_
    dmso = np.flatnonzero((adata.obs["label"] == "DMSO").to_numpy())
    sample = np.sort(np.random.default_rng(SEED).choice(dmso, 600, replace=False))
    images = adata.obsm["image"]
    real = {
        p: images[np.intersect1d(dmso, np.flatnonzero((adata.obs["batch"] == p).to_numpy()))].mean(
            axis=(0, 2, 3)
        )
        for p in plates
    }
    real_all = images[dmso].mean(axis=(0, 2, 3))
    rendered = {
        p: model.get_counterfactual_images(adata, batch=p, indices=sample).mean(axis=(0, 2, 3))
        for p in plates
    }
    free = model.get_counterfactual_images(adata, batch=None, indices=sample).mean(axis=(0, 2, 3))
    real_shift = np.array([real[p] - real_all for p in plates])
    model_shift = np.array([rendered[p] - free for p in plates])
    r = float(np.corrcoef(real_shift.ravel(), model_shift.ravel())[0, 1])
    return real, real_all, rendered, free, (real_shift, model_shift), r


def part_decoder_width(widths=(1.0, 0.75, 0.5), seeds=(0, 1)) -> None:
    """The counterfactual part's plate-shift fidelity for each decoder width and seed.

    Rows are kept by (release, width, seed): a run with the current release's defaults adds
    its rows beside those measured with earlier defaults.
    """
    adata = load()
    ArmedImage.setup_anndata(adata, batch_key="batch", labels_key="label")
    path = RESULTS / "image_bbbc021_decoder_width.json"
    rows = json.loads(path.read_text())["runs"] if path.exists() else []
    for row in rows:  # rows from before releases were recorded: the 0.6 defaults
        row.setdefault("release", "0.6")
    release = ".".join(ab.__version__.split(".")[:2])
    for width in widths:
        for seed in seeds:
            model = ArmedImage(adata, seed=seed, decoder_width=width)
            start = time.perf_counter()
            model.train(seed=seed, enable_progress_bar=False)
            minutes = (time.perf_counter() - start) / 60
            _, real_all, _, free, _, r = plate_shifts(model, adata)
            rows = [
                row
                for row in rows
                if (row["release"], row["decoder_width"], row["seed"]) != (release, width, seed)
            ]
            rows.append(
                {
                    "release": release,
                    "decoder_width": width,
                    "seed": seed,
                    "train_minutes": minutes,
                    "r": r,
                    "batch_free_channel_means": free.tolist(),
                }
            )
    table = [
        "# ArmedImage decoder width: do counterfactuals keep the plate shifts?\n",
        "BBBC021, 4 plates, with labels, the release's defaults but `decoder_width`; r as in "
        "`image_bbbc021_counterfactual.md`. Command: `.venv/bin/python "
        "benchmarks/image_bbbc021.py decoder_width [width=W ...] [seed=N ...]`.\n",
        "| defaults of | decoder_width | seed | train time | plate-shift r | batch-free render "
        f"mean (real DMSO: {', '.join(f'{v:.1f}' for v in real_all)}) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        free_text = ", ".join(f"{v:.1f}" for v in row["batch_free_channel_means"])
        table.append(
            f"| {row['release']} | {row['decoder_width']} | {row['seed']} | "
            f"{row['train_minutes']:.1f} min | {row['r']:.2f} | {free_text} |"
        )
    table.append(
        "\nThe 0.6 rows shared the cores with the test suite (the width-1 rows most): their "
        "train times are not comparable with each other; solo times are in `image_u373.md` "
        "and `image_bbbc021_probes.md`."
    )
    write_results(
        "image_bbbc021_decoder_width",
        {"machine": machine(), "real_dmso_all_plates": real_all.tolist(), "runs": rows},
        "\n".join(table) + "\n",
    )


def part_counterfactual() -> None:
    adata = load()
    ArmedImage.setup_anndata(adata, batch_key="batch", labels_key="label")
    model = ArmedImage(adata, seed=SEED)
    timer = EpochTimer()
    model.train(seed=SEED, callbacks=[timer], enable_progress_bar=False)
    plates = model.batch_categories_
    # One cell per plate (the first DMSO crop of each), rendered as every plate and Z = 0.
    cells = [
        int(
            np.flatnonzero(((adata.obs["batch"] == p) & (adata.obs["label"] == "DMSO")).to_numpy())[
                0
            ]
        )
        for p in plates
    ]
    fig = ab.pl.image_counterfactuals(model, adata, cells, return_fig=True)
    fig.savefig(RESULTS / "image_bbbc021_counterfactuals.png", dpi=120, bbox_inches="tight")
    real, real_all, rendered, free, (real_shift, model_shift), r = plate_shifts(model, adata)
    payload = {
        "machine": machine(),
        "epochs": len(timer.times),
        "s_per_epoch": steady(timer.times),
        "train_images_per_s": len(model.train_indices) / steady(timer.times),
        "cells": [adata.obs_names[c] for c in cells],
        "real_dmso_channel_means": {p: v.tolist() for p, v in real.items()},
        "real_dmso_all_plates": real_all.tolist(),
        "counterfactual_channel_means": {p: v.tolist() for p, v in rendered.items()},
        "batch_free_channel_means": free.tolist(),
        "shift_correlation": r,
    }
    table = [
        "| plate | real DMSO mean - all-plate DMSO mean (DNA, ch1, ch2) | "
        "600 DMSO cells rendered as this plate - batch-free render |",
        "|---|---|---|",
    ]
    for p, rs, ms in zip(plates, real_shift, model_shift, strict=True):
        table.append(
            f"| {p} | {', '.join(f'{v:+.1f}' for v in rs)} | {', '.join(f'{v:+.1f}' for v in ms)} |"
        )
    table += [
        "",
        f"Correlation of the 12 shifts (4 plates x 3 channels): r = {r:.2f}. "
        f"Batch-free render mean: {', '.join(f'{v:.1f}' for v in free)}; real DMSO mean: "
        f"{', '.join(f'{v:.1f}' for v in real_all)}.",
    ]
    write_results("image_bbbc021_counterfactual", payload, "\n".join(table) + "\n")


def throughput_rows(makers: dict, rounds: int = 2, epochs: int = 3) -> dict[str, dict]:
    """Training images/s of each ``name -> (class, kwargs)`` on the same 2,000 crops.

    The models alternate within each round, so drifts in machine load hit every model alike.
    """
    adata = load()
    sub = adata[np.sort(np.random.default_rng(SEED).choice(adata.n_obs, 2000, replace=False))]
    times: dict[str, list[float]] = {name: [] for name in makers}
    faults: dict[str, list[int]] = {name: [] for name in makers}
    n_train = {}
    for _ in range(rounds):
        for name, (cls, kw) in makers.items():
            data = sub.copy()
            cls.setup_anndata(data, batch_key="batch", labels_key="label")
            model = cls(data, seed=SEED, **kw)
            timer = EpochTimer()
            model.train(
                max_epochs=epochs,
                seed=SEED,
                callbacks=[timer],
                enable_progress_bar=False,
                check_val_every_n_epoch=epochs + 1,
            )
            times[name] += timer.times[1:]
            faults[name] += timer.page_faults[1:]
            n_train[name] = len(model.train_indices)
    return {
        name: {
            "s_per_epoch": float(np.median(t)),
            "images_per_s": n_train[name] / float(np.median(t)),
            "n_train": n_train[name],
            "page_faults_per_epoch": float(np.median(faults[name])),
        }
        for name, t in times.items()
    }


AUTOENCODER = "ArmedImage (conv autoencoder)"


def part_throughput() -> None:
    makers = {
        **{name: (ArmedImageClassifier, kw) for name, kw in MODELS.items()},
        AUTOENCODER: (ArmedImage, {}),
    }
    rows = throughput_rows(makers)
    plain = rows["plain CNN"]["s_per_epoch"]
    table = [
        "| model | s / epoch (1,800 crops) | training images/s | time vs plain CNN |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        table.append(
            f"| {name} | {r['s_per_epoch']:.2f} | {r['images_per_s']:.0f} | "
            f"{r['s_per_epoch'] / plain:.2f}x |"
        )
    write_results(
        "image_bbbc021_throughput",
        {"machine": machine(), "batch_size": 128, "results": rows},
        "\n".join(table) + "\n",
    )
    print("\n".join(table))


def heap_one(keep: bool) -> None:
    """Print (JSON) the plain CNN's and the autoencoder's throughput, heap tuning on or off."""
    from armed_bio.model._image_base import ArmedImageModelBase

    ArmedImageModelBase._keep_heap_in_training = keep
    makers = {
        "plain CNN": (ArmedImageClassifier, MODELS["plain CNN"]),
        AUTOENCODER: (ArmedImage, {}),
    }
    print(json.dumps(throughput_rows(makers, rounds=1)))


def part_heap(rounds: int = 3) -> None:
    """Throughput with image training's heap tuning (``armed_bio._malloc``) off and on.

    glibc's thresholds are process-wide and cannot be reset, so each run is a fresh process;
    off and on alternate.
    """
    runs = []
    for r in range(rounds):
        for keep in (False, True):
            proc = subprocess.run(
                [sys.executable, __file__, "heap_one", f"keep={int(keep)}"],
                capture_output=True,
                text=True,
                check=True,
            )
            rows = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append({"round": r, "heap_kept": keep, "results": rows})
    write_results(
        "image_bbbc021_heap",
        {"machine": machine(), "batch_size": 128, "runs": runs},
        heap_table(runs),
    )
    print(heap_table(runs))


def heap_table(runs: list[dict]) -> str:
    """The markdown of :func:`part_heap`'s runs."""
    table = [
        "# Image training with and without the heap kept (glibc thresholds)\n",
        "Plain CNN and ArmedImage (defaults, with labels), 3 epochs each on the same 1,800 "
        "BBBC021 training crops, batch 128, CPU, one torch thread; median of epochs 2-3. "
        "`heap kept`: trained inside `armed_bio._malloc.heap_kept_for_training` (the default "
        "since 0.9.2); `no`: glibc's dynamic thresholds (0.9.1). A fresh process per run, off "
        "and on alternating. Page faults: minor faults of the process per autoencoder epoch. "
        "Command: `.venv/bin/python benchmarks/image_bbbc021.py heap`.\n",
        "| round | heap kept in training | plain CNN s / epoch | autoencoder s / epoch | "
        "autoencoder images/s | time vs plain CNN | autoencoder page faults / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        plain, ae = run["results"]["plain CNN"], run["results"][AUTOENCODER]
        table.append(
            f"| {run['round'] + 1} | {'yes' if run['heap_kept'] else 'no'} | "
            f"{plain['s_per_epoch']:.2f} | {ae['s_per_epoch']:.2f} | {ae['images_per_s']:.0f} | "
            f"{ae['s_per_epoch'] / plain['s_per_epoch']:.2f}x | "
            f"{ae['page_faults_per_epoch']:,.0f} |"
        )
    return "\n".join(table) + "\n"


PARTS = ("heldout", "lopo", "counterfactual", "decoder_width", "throughput", "heap")

if __name__ == "__main__":
    if sys.argv[1:2] == ["heap_one"]:  # one run of part_heap, in its own process
        heap_one(sys.argv[2] == "keep=1")
        sys.exit()
    args = sys.argv[1:] or list(PARTS)
    parts = [a for a in args if a in PARTS]
    extra = [a for a in args if a not in parts]
    seeds = [int(a.split("=")[1]) for a in extra if a.startswith("seed=")]
    for part in parts:
        if part == "heldout":
            part_heldout()
        elif part == "lopo":
            part_lopo([a for a in extra if not a.startswith("seed=")], seeds or [0])
        elif part == "counterfactual":
            part_counterfactual()
        elif part == "decoder_width":
            widths = [float(a.split("=")[1]) for a in extra if a.startswith("width=")]
            part_decoder_width(tuple(widths) or (1.0, 0.75, 0.5), tuple(seeds) or (0, 1))
        elif part == "throughput":
            part_throughput()
        else:
            part_heap()
