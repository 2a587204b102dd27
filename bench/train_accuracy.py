"""Accuracy experiment: train the unified model and its independent-heads ablation on the shared data.

Loads the shared zip into memory (same labels and splits as the pipeline), trains with the
trainer's model, losses, optimiser and augmentation, and reports test-split top-1 accuracy of
category and sub-category and the arg-max accuracy of each attribute group.

    .venv/bin/python -m bench.train_accuracy --preset cpu-full --heads unified independent

Last line: a JSON object with the figures and "ratio" = unified / independent sub-category accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.train_arrays import load_arrays, stats_from_arrays
from components.train import data as train_data
from components.train.losses import build_losses
from components.train.model import build_model
from components.train.step import compile_model, set_seeds
from core.config import load_config, parse_overrides


def evaluate(model, split: dict, schema, batch_size: int = 256) -> dict[str, float]:
    probs = model.predict(split["images"], batch_size=batch_size, verbose=0)
    return accuracy_summary(probs, split, schema)


def accuracy_summary(probs: dict, truth: dict, schema) -> dict[str, float]:
    """Top-1 accuracy of category and sub-category, arg-max accuracy per attribute group.

    An attribute group counts only products that have a value in it.
    """
    out = {
        "category_accuracy": float(np.mean(np.argmax(probs["category"], 1) == truth["category"])),
        "subcategory_accuracy": float(np.mean(np.argmax(probs["subcategory"], 1) == truth["subcategory"])),
    }
    attrs = np.asarray(truth["attributes"])
    for group, idx in schema.attribute_groups.items():
        idx = np.asarray(idx)
        has = attrs[:, idx].sum(1) > 0
        pred = np.argmax(probs["attributes"][:, idx], 1)
        true = np.argmax(attrs[:, idx], 1)
        out[f"attribute_{group}_accuracy"] = float(np.mean(pred[has] == true[has]))
    return out


def run_one(head: str, splits: dict, schema, config, stats: dict) -> dict:
    set_seeds(config.train.seed)
    tc = config.train
    mc = config.model.__class__(**{**config.model.__dict__, "head": head})
    sizes = schema.sizes
    image_size = splits["train"]["images"].shape[1:3]
    model = build_model(mc, sizes, image_size)
    steps = tc.steps_per_epoch or len(splits["train"]["ids"]) // tc.batch_size
    losses = build_losses(stats, sizes, tc.class_weight_power, tc.label_smoothing)
    compile_model(model, tc, losses, steps)
    train_ds = train_data.batch_pipeline(
        train_data.from_arrays(splits["train"]["images"], splits["train"]), tc.batch_size, True, tc, repeat=True
    )
    val_ds = train_data.batch_pipeline(
        train_data.from_arrays(splits["validation"]["images"], splits["validation"]), 256, False, tc
    )
    start = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=tc.epochs, steps_per_epoch=steps, verbose=2)
    seconds = time.time() - start
    result = {"head": head, "params": model.count_params(), "train_seconds": round(seconds, 1)}
    result.update({f"test_{k}": round(v, 4) for k, v in evaluate(model, splits["test"], schema).items()})
    result["val_subcategory_accuracy_per_epoch"] = [round(v, 4) for v in history.history["val_subcategory_accuracy"]]
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-full")
    parser.add_argument("--zip", default="../shared/data/fashion-product-images-small.zip")
    parser.add_argument("--cache", default="/tmp/fashion-arrays.npz")
    parser.add_argument("--heads", nargs="+", default=["unified", "independent"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.preset, overrides=parse_overrides(args.overrides))
    splits, schema = load_arrays(args.zip, config, args.cache)
    print({s: len(d["ids"]) for s, d in splits.items()}, schema.sizes, flush=True)
    stats = stats_from_arrays(splits, schema)
    results = {head: run_one(head, splits, schema, config, stats) for head in args.heads}
    summary = {
        h: {k: v for k, v in r.items() if k.startswith("test_") or k == "train_seconds"} for h, r in results.items()
    }
    if "unified" in results and "independent" in results:
        summary["ratio"] = round(
            results["unified"]["test_subcategory_accuracy"] / results["independent"]["test_subcategory_accuracy"], 4
        )
    else:
        summary["ratio"] = 1.0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
