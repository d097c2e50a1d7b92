"""Command line: ``armed-bio demo``, ``armed-bio fit`` and ``armed-bio plot``.

Bad input ends with one line on stderr, ``armed-bio: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Errors that mean "the input or the arguments are wrong": one line and exit status 2.
INPUT_ERRORS = (KeyError, ValueError, TypeError, IndexError, OSError)


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armed-bio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train ARMED on the bundled CellBench data")
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--max-epochs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    fit = sub.add_parser("fit", help="fit ARMED to an .h5ad and write the annotated copy")
    fit.add_argument("input", help="input .h5ad with raw counts")
    fit.add_argument("output", help="output .h5ad (gains obsm X_armed_fe/X_armed_re)")
    fit.add_argument("--batch-key", required=True)
    fit.add_argument("--layer", default=None)
    fit.add_argument("--labels-key", default=None, help="obs column of cell labels (optional)")
    fit.add_argument("--mode", default="mixed", choices=["mixed", "fixed", "random"])
    fit.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson", "gaussian"])
    fit.add_argument("--max-epochs", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--model-dir", default=None, help="also save the model here")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    plot = sub.add_parser("plot", help="draw the demo's figures for a fitted .h5ad")
    plot.add_argument("input", help="an .h5ad written by `armed-bio fit`")
    plot.add_argument("--model-dir", required=True, help="the model saved by `fit --model-dir`")
    plot.add_argument("--out", required=True, help="folder for the figures")
    plot.add_argument("--label-key", default=None, help="obs column to colour and score by")
    plot.add_argument("--seed", type=int, default=0)
    plot.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def _fit(args: argparse.Namespace) -> None:

    from . import metrics, pp
    from ._figures import score_table
    from .tl import armed

    adata = _read(args.input)
    kwargs = {"mode": args.mode, "likelihood": args.likelihood}
    if args.max_epochs is not None:
        kwargs["max_epochs"] = args.max_epochs
    # A progress bar on a terminal; none in a log file.
    kwargs["enable_progress_bar"] = sys.stderr.isatty()
    start = time.perf_counter()
    model = armed(
        adata,
        batch_key=args.batch_key,
        layer=args.layer,
        labels_key=args.labels_key,
        seed=args.seed,
        **kwargs,
    )
    seconds = time.perf_counter() - start
    sizes = adata.obs[args.batch_key].value_counts(sort=False)
    print(
        f"fit: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {len(sizes)} batches in "
        f"{args.batch_key!r} ({', '.join(f'{b} {n:,}' for b, n in sizes.items())})"
    )
    epochs = model.train_params_["epochs_trained"]
    print(f"trained {epochs} epochs in {seconds:.0f} s (mode={args.mode}, seed={args.seed})")
    keys = list(adata.uns["armed"]["obsm_keys"].values())
    if "X_pca" not in adata.obsm:
        pp.log_pca(adata, layer=args.layer, seed=args.seed)
    scores = metrics.cluster_scores(
        adata, ["X_pca", *keys], batch_key=args.batch_key, label_key=args.labels_key
    )
    print("cluster scores (X_pca: uncorrected)\n" + score_table(scores))
    adata.write_h5ad(args.output)
    print(f"wrote {args.output} (obsm: {', '.join(['X_pca', *keys])}; uns: armed)")
    if args.model_dir:
        model.save(args.model_dir, overwrite=True)
        print(f"saved the model to {args.model_dir}")


def _read(path: str):
    import anndata as ad

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is not a file; pass the path of an .h5ad file.")
    return ad.read_h5ad(path)


def _plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ._figures import draw_rna_figures
    from .model import ArmedRNA

    adata = _read(args.input)
    if "armed" not in adata.uns:
        raise ValueError(
            f"{args.input} has no uns['armed'] record: it was not written by `armed-bio fit` "
            "(or `model.write_to_adata`). Fit it first: armed-bio fit IN.h5ad OUT.h5ad ..."
        )
    model = ArmedRNA.load(args.model_dir, adata)
    setup = model.registry_["setup_args"]
    label_key = args.label_key or setup.get("labels_key")
    if label_key is not None and label_key not in adata.obs:
        raise KeyError(f"--label-key {label_key!r} is not a column of adata.obs.")
    keys = ["X_pca", *adata.uns["armed"]["obsm_keys"].values()]
    paths, _ = draw_rna_figures(
        model,
        adata,
        args.out,
        batch_key=setup["batch_key"],
        label_key=label_key,
        obsm_keys=keys,
        seed=args.seed,
    )
    print(f"wrote {len(paths)} figures to {args.out}: {', '.join(p.name for p in paths)}")


def main(argv: list[str] | None = None) -> int:
    """Run the ``armed-bio`` command line; return its exit status."""
    args = _parser().parse_args(argv)
    _set_threads(args.threads)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
        elif args.command == "fit":
            _fit(args)
        else:
            _plot(args)
    except INPUT_ERRORS as err:
        print(f"armed-bio: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
