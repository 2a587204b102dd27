"""The `cpu-full` preset end to end on a preprocess output: unified model and independent-heads ablation.

Trains each head with the real trainer (`train_model`, the same code as `fashion train`) on the
same shards, then scores the test split with `predict_split`:

    .venv/bin/python -m bench.train_cpu_full --data /tmp/full-preprocess --out /tmp/cpu-full-models

Prints per head the training time, test top-1 accuracy of category and sub-category and the
arg-max accuracy of each attribute group. Last line: a JSON object with "ratio" = unified /
independent test sub-category accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.train_accuracy import accuracy_summary
from components.train.model_folder import load_model, predict_split
from components.train.step import train_model
from core.config import load_config, parse_overrides
from core.layouts import read_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="output folder of `fashion preprocess` (cpu-full preset)")
    parser.add_argument("--out", required=True, help="parent folder of the model folders")
    parser.add_argument("--preset", default="cpu-full")
    parser.add_argument("--heads", nargs="+", default=["unified", "independent"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    schema = read_labels(args.data)
    summary: dict = {}
    for head in args.heads:
        overrides = parse_overrides(args.overrides)
        overrides.setdefault("model", {})["head"] = head
        config = load_config(args.preset, overrides=overrides)
        start = time.time()
        result = train_model(args.data, str(Path(args.out) / head), config)
        seconds = time.time() - start
        pred = predict_split(load_model(result.model_dir), args.data, "test")
        truth = {k: pred[f"true_{k}"] for k in ("category", "subcategory", "attributes")}
        scores = {f"test_{k}": round(v, 4) for k, v in accuracy_summary(pred, truth, schema).items()}
        summary[head] = {
            "train_seconds": round(seconds, 1),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "test_examples": len(pred["ids"]),
            **scores,
        }
        print(json.dumps({head: summary[head]}), flush=True)
    if "unified" in summary and "independent" in summary:
        ratio = summary["unified"]["test_subcategory_accuracy"] / summary["independent"]["test_subcategory_accuracy"]
        summary["ratio"] = round(ratio, 4)
    else:
        summary["ratio"] = 1.0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
