"""The scikit-image front end against ground truth: simulated fields and real crops re-tiled.

1. Simulated still fields and time-lapses (``armed_bio.datasets.simulate_fields``): nuclei
   found vs placed.
2. Real images rebuilt into fields: BBBC021 MCF-7 crops (centred on one nucleus each) have
   their central 36 x 36 window pasted on a jittered grid into 8 x 8-crop fields per plate,
   written as TIFF files and read back through the path route; the truth is the pasted crop
   centres. Neighbouring nuclei cut by the window are real extra objects, so precision counts
   detections matched to a centre and reports the rest.

    .venv/bin/python benchmarks/image_frontend.py

Results: benchmarks/results/image_frontend.{json,md} and image_frontend_field.png.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tifffile
from _common import RESULTS, SHARED, machine, write_results

import armed_bio as ab

WINDOW, SPACING, GRID = 36, 48, 8


def rebuild_fields(adata: ad.AnnData, plate: str, n_fields: int, rng) -> tuple[list, pd.DataFrame]:
    idx = np.flatnonzero((adata.obs["batch"] == plate).to_numpy())
    crops = adata.obsm["image"]
    c, h, _ = crops.shape[1:]
    lo = (h - WINDOW) // 2
    size = SPACING * GRID + 16
    fields, truth = [], []
    for f in range(n_fields):
        field = np.zeros((c, size, size), dtype=crops.dtype)
        pick = rng.choice(idx, GRID * GRID, replace=False)
        for k, cell in enumerate(pick):
            gy, gx = divmod(k, GRID)
            y0 = 8 + gy * SPACING + rng.integers(0, SPACING - WINDOW + 1)
            x0 = 8 + gx * SPACING + rng.integers(0, SPACING - WINDOW + 1)
            field[:, y0 : y0 + WINDOW, x0 : x0 + WINDOW] = crops[
                cell, :, lo : lo + WINDOW, lo : lo + WINDOW
            ]
            truth.append(
                {
                    "field": f"{plate}_f{f}.tif",
                    "frame": 0,
                    "y": y0 + WINDOW / 2 - 0.5,
                    "x": x0 + WINDOW / 2 - 0.5,
                }
            )
        fields.append(field)
    return fields, pd.DataFrame(truth)


def main() -> None:
    rows = {}
    fields, batches, truth = ab.datasets.simulate_fields(n_fields=12, n_nuclei=40, seed=0)
    t0 = time.perf_counter()
    sim = ab.pp.crop_objects(fields, batch=batches, crop_size=32, progress_bar=False)
    rows["simulated fields (12 x 192 x 192, 2 batches)"] = {
        **ab.metrics.match_objects(sim.obs, truth, 4.0),
        "seconds": time.perf_counter() - t0,
    }
    fields, batches, truth = ab.datasets.simulate_fields(
        n_fields=4, n_nuclei=30, n_frames=5, seed=1
    )
    t0 = time.perf_counter()
    lapse = ab.pp.crop_objects(fields, batch=batches, crop_size=32, progress_bar=False)
    rows["simulated time-lapses (4 x 5 frames)"] = {
        **ab.metrics.match_objects(lapse.obs, truth, 4.0),
        "seconds": time.perf_counter() - t0,
    }

    adata = ad.read_h5ad(SHARED / "bbbc021_mcf7_crops_4plates.h5ad")
    rng = np.random.default_rng(0)
    plates = sorted(adata.obs["batch"].astype(str).unique())
    with tempfile.TemporaryDirectory() as tmp:
        paths, field_batches, truths = [], [], []
        for plate in plates:
            pf, pt = rebuild_fields(adata, plate, 2, rng)
            for i, field in enumerate(pf):
                path = Path(tmp) / f"{plate}_f{i}.tif"
                tifffile.imwrite(path, field)
                paths.append(path)
                field_batches.append(plate)
            truths.append(pt)
        truth = pd.concat(truths, ignore_index=True)
        t0 = time.perf_counter()
        real = ab.pp.crop_objects(
            paths,
            batch=field_batches,
            crop_size=68,
            channel=0,
            progress_bar=False,
            min_size=30,
            min_distance=6,
        )
        seconds = time.perf_counter() - t0
        first = tifffile.imread(paths[0])
    rows["BBBC021 crops re-tiled (8 TIFF fields, 512 nuclei)"] = {
        **ab.metrics.match_objects(real.obs, truth, 6.0),
        "seconds": seconds,
    }
    ab.pp.image_qc(real)
    qc = real.obs.groupby("batch", observed=True)[
        ["qc_brightness_ch0", "qc_sharpness_ch0", "qc_snr_ch0"]
    ].mean()

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(first[0], cmap="gray")
    obs = real.obs[real.obs["field"] == paths[0].name]
    tr = truth[truth["field"] == paths[0].name]
    ax.scatter(tr["x"], tr["y"], s=60, facecolors="none", edgecolors="lime", label="truth")
    ax.scatter(obs["centroid_x"], obs["centroid_y"], s=8, c="red", label="found")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(
        f"{paths[0].name}: DNA channel, crop centres (green) vs detections (red)", fontsize=8
    )
    ax.axis("off")
    fig.savefig(RESULTS / "image_frontend_field.png", dpi=110, bbox_inches="tight")

    table = [
        "| input | objects true | found | matched | precision | recall | F1 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        table.append(
            f"| {name} | {r['n_true']} | {r['n_found']} | {r['n_matched']} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{r['seconds']:.1f} |"
        )
    table += [
        "",
        "Mean QC of the re-tiled real crops per plate (DNA channel):",
        "",
        "| plate | brightness | sharpness | SNR |",
        "|---|---|---|---|",
    ]
    table += [
        f"| {p} | {r.qc_brightness_ch0:.1f} | {r.qc_sharpness_ch0:.1f} | {r.qc_snr_ch0:.2f} |"
        for p, r in qc.iterrows()
    ]
    write_results(
        "image_frontend",
        {"machine": machine(), "results": rows, "qc_per_plate": qc.to_dict()},
        "\n".join(table) + "\n",
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
