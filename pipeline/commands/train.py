"""`fashion train`: train the unified model on preprocessed shards; rerun the same command to resume."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "train",
        help="train the model on the output of `fashion preprocess`",
        description="Train the unified model (category, sub-category, attributes) with class-weighted "
        "losses, a checkpoint every epoch and early stopping. Running the same command again after "
        "a crash resumes from the last completed epoch.",
    )
    parser.add_argument("--data", required=True, help="output folder of `fashion preprocess`")
    parser.add_argument("--out", required=True, help="model folder to write (resumed when it holds checkpoints)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--head", choices=("unified", "independent"), help="override model.head")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion train`."""
    from components.train.step import train_model
    from pipeline.cli import resolve_config

    config = resolve_config(
        args,
        {"train": {"epochs": args.epochs, "batch_size": args.batch_size}, "model": {"head": args.head}},
    )
    result = train_model(args.data, args.out, config)
    best = result.final_metrics
    shown = ", ".join(
        f"{k} {best[k]:.4f}" for k in ("val_category_accuracy", "val_subcategory_accuracy", "val_loss") if k in best
    )
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    print(f"trained {result.epochs_run} epochs{resumed}; best epoch {result.best_epoch}: {shown}")
    print(f"model folder: {result.model_dir}")
    return 0
