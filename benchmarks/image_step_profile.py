"""Where a training step of the image models spends its time (CPU, one thread).

Times forward + backward of each component of ``ArmedImageModule`` (the conv autoencoder)
on one minibatch of BBBC021-shaped crops (64 x 3 x 68 x 68, 4 plates), and the whole main
step (the module's forward, loss and backward) of the autoencoder and of the plain CNN
(``ArmedCNNModule``, ``mode="fixed"``, no adversary) it is compared with. Synthetic pixels:
the cost of a step does not depend on the values.

Run: ``.venv/bin/python benchmarks/image_step_profile.py LABEL [name=value ...]`` (e.g.
``before``, ``after``; ``name=value`` are autoencoder arguments such as
``fe_reconstruction_weight=0``, or ``heap=1``: measure inside
:func:`armed_bio._malloc.heap_kept_for_training`, as the models' ``train`` runs since 0.9.2);
each label's row is kept in
``results/image_step_profile.json`` and the table lists them all.
"""

from __future__ import annotations

import ast
import json
import sys
import time

import torch
from _common import RESULTS, machine, write_results
from torch.nn import functional as F

from armed_bio._malloc import heap_kept_for_training
from armed_bio.module import ArmedCNNModule, ArmedImageModule
from armed_bio.module._image_base import random_dihedral
from armed_bio.nn._conv import pooled_features

B, C, H, W, K = 64, 3, 68, 68, 4
REPEATS = 10
STEM = "image_step_profile"


def timed(fn, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def forward_backward(module, f):
    def run():
        module.zero_grad(set_to_none=True)
        out = f()
        out = out if isinstance(out, torch.Tensor) else out[0]
        out.float().pow(2).mean().backward()

    return run


def whole_step(module, tensors):
    def run():
        module.zero_grad(set_to_none=True)
        _, _, loss = module(tensors, loss_kwargs={})
        loss.loss.backward()

    return run


def profile(**kwargs) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W)
    batch = torch.randint(0, K, (B, 1))
    design = F.one_hot(batch.view(-1), K).float()
    tensors = {"image": x, "batch": batch.float(), "labels": torch.zeros(B, 1)}
    ae = ArmedImageModule(C, (H, W), K, **kwargs).train()
    z = torch.randn(B, ae.n_latent, requires_grad=True)
    features = [f.detach() for f in ae.encoder(x)[1]]
    rows = {
        "augmentation (flips, rotations)": timed(lambda: random_dihedral(x)),
        "FE encoder": timed(forward_backward(ae, lambda: ae.encoder(x))),
        "RE encoder": timed(forward_backward(ae, lambda: ae.re_encoder(x, design))),
        "decoder, mixed (Z)": timed(forward_backward(ae, lambda: ae.decoder(z, design))),
        "decoder, batch-free (Z = 0)": timed(forward_backward(ae, lambda: ae.decoder(z, None))),
        "Z-predictor": timed(forward_backward(ae, lambda: ae.z_predictor(x))),
        "adversary": timed(
            forward_backward(
                ae,
                lambda: ae.adversary(
                    ae.with_label(pooled_features(features, z.detach()), {"z": z.detach()})
                ),
            )
        ),
        "autoencoder: whole main step": timed(whole_step(ae, tensors)),
    }
    plain = ArmedCNNModule(C, (H, W), K, mode="fixed", adversary_weight=0.0, n_labels=2).train()
    tensors["labels"] = torch.randint(0, 2, (B, 1)).float()
    rows["plain CNN: whole main step"] = timed(whole_step(plain, tensors))
    rows["autoencoder / plain CNN"] = (
        rows["autoencoder: whole main step"] / rows["plain CNN: whole main step"]
    )
    return rows


def table(payload: dict) -> str:
    """The markdown table of every labelled run in ``payload``."""
    labels = list(payload["runs"])
    names = list(payload["runs"][labels[-1]])
    lines = [
        "# Image models: one training step, forward + backward, by component\n",
        f"Minibatch {B} x {C} x {H} x {W} (BBBC021 crops), {K} plates; CPU, one torch thread; "
        f"median of {REPEATS} calls, milliseconds (absolute times drift with the load on the "
        "shared cores: compare columns measured together, or the ratio row). Command: "
        "`.venv/bin/python benchmarks/image_step_profile.py LABEL`.\n",
        "| component | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in names:
        cells = []
        for lab in labels:
            v = payload["runs"][lab].get(name)
            cells.append("" if v is None else (f"{v:.2f}x" if "/" in name else f"{v:.1f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(label: str, heap: int = 0, **kwargs) -> None:
    torch.set_num_threads(1)
    path = RESULTS / f"{STEM}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    payload["machine"] = machine()
    payload["minibatch"] = [B, C, H, W]
    if heap:
        with heap_kept_for_training():
            payload["runs"][label] = profile(**kwargs)
    else:
        payload["runs"][label] = profile(**kwargs)
    write_results(STEM, payload, table(payload))


if __name__ == "__main__":
    args = sys.argv[1:] or ["current"]
    main(args[0], **{k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in args[1:])})
