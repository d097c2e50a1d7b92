"""Command line: ``armed-bio demo`` and ``armed-bio fit``."""

from __future__ import annotations

import argparse
import sys


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    """Run the ``armed-bio`` command line; return its exit status."""
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
    fit.add_argument("--labels-key", default=None)
    fit.add_argument("--mode", default="mixed", choices=["mixed", "fixed", "random"])
    fit.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson", "gaussian"])
    fit.add_argument("--max-epochs", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--model-dir", default=None, help="also save the model here")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    args = parser.parse_args(argv)
    _set_threads(args.threads)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
        else:
            import anndata as ad

            from .tl import armed

            adata = ad.read_h5ad(args.input)
            kwargs = {"mode": args.mode, "likelihood": args.likelihood}
            if args.max_epochs is not None:
                kwargs["max_epochs"] = args.max_epochs
            model = armed(
                adata,
                batch_key=args.batch_key,
                layer=args.layer,
                labels_key=args.labels_key,
                seed=args.seed,
                **kwargs,
            )
            adata.write_h5ad(args.output)
            if args.model_dir:
                model.save(args.model_dir, overwrite=True)
            print(f"wrote {args.output}")
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"armed-bio: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
