"""`fashion evaluate`: the paper's metrics on the test split, the readable report and the gate decision."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from core.errors import StepError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained model on the test split, write the report and decide the gate",
        description="Run the model over the test shards; write metrics.json (flat scalars and per-class "
        "details), report.html and report.md with figures, predictions.jsonl, the category confusion "
        "matrix for kfp, and gate.json: blessed when every metric reaches its floor "
        "(evaluate.floors) and none is worse than the champion's by more than its tolerance "
        "(evaluate.tolerances). Exit status 0 when blessed, 3 when not (1: the evaluation failed).",
    )
    parser.add_argument("--model", required=True, help="the trainer's model folder")
    parser.add_argument("--data", required=True, help="output folder of `fashion preprocess` (its test split)")
    parser.add_argument("--out", required=True, help="folder to write the evaluation into")
    parser.add_argument(
        "--champion-metrics",
        help="JSON file with the production champion's metrics (a metrics.json of an earlier evaluation, "
        "or a flat {name: value} object); without it only the floors apply",
    )
    parser.add_argument("--threshold", type=float, help="override evaluate.attribute_threshold")
    parser.add_argument(
        "--hierarchical-decoding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="headline figures with the best pair the category tree allows (override evaluate.hierarchical_decoding)",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def read_champion_metrics(path: str) -> dict[str, float]:
    """Flat metrics from a champion file: `{"scalars": {...}}` (an evaluation's metrics.json) or `{...}`.

    Raises:
        StepError: the file is missing, not JSON, or holds no numeric metrics.
    """
    file = Path(path)
    if not file.is_file():
        raise StepError(f"--champion-metrics {path} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise StepError(f"--champion-metrics {path} is not JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("scalars"), dict):
        data = data["scalars"]
    if not isinstance(data, dict):
        raise StepError(f"--champion-metrics {path}: expected a JSON object of metric name -> value")
    values = {
        str(k): float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if not values:
        raise StepError(f"--champion-metrics {path} holds no numeric metrics")
    return values


def run(args: argparse.Namespace) -> int:
    """Handle `fashion evaluate`."""
    from components.evaluate import evaluate_model
    from pipeline.cli import resolve_config

    config = resolve_config(
        args,
        {"evaluate": {"attribute_threshold": args.threshold, "hierarchical_decoding": args.hierarchical_decoding}},
    )
    champion = read_champion_metrics(args.champion_metrics) if args.champion_metrics else None
    result = evaluate_model(args.model, args.data, args.out, config, champion_metrics=champion)
    s = result.scalars
    print(
        f"evaluated {result.num_examples:,} test products in {sum(result.seconds.values()):.1f}s: "
        f"category accuracy {s['category_accuracy']:.4f}, sub-category accuracy {s['subcategory_accuracy']:.4f}, "
        f"attributes OF1 {s['attributes_of1']:.4f}, mAP {s['attributes_map']:.4f}, "
        f"hierarchy consistency {s['hierarchy_consistency']:.4f}"
    )
    print(f"gate: {result.reason}")
    print(f"report: {result.files['report_html']}")
    from pipeline.cli import EXIT_GATE_REJECTED, EXIT_OK

    return EXIT_OK if result.blessed else EXIT_GATE_REJECTED
