"""Paired comparison of a recipe change against the baseline recipe, per level and attribute group.

Each `--pair BASELINE_DIR CANDIDATE_DIR` is one seed of both recipes trained on the same shards
(e.g. by `bench/train_cpu_full.py` with and without a `--set`). Both models score the same test
photos, so per level (category and sub-category, per-level arg-max and joint decoding) and per
attribute group (arg-max within the group, over the photos that have a value in it) it prints both
accuracies, the photos only one of them gets right, the exact McNemar p-value and a paired
bootstrap 95% interval of the difference; with several pairs, the means over them.
`--flip` compares each model with itself under flip test-time augmentation (`serving.flip_tta`)
instead, so `--pair` then takes the same folder twice.

    .venv/bin/python -m bench.compare_models --data DATA --pair BASE/unified NEW/unified

Last line: a JSON object with the means and "ratio" = mean candidate / mean baseline baseColour
accuracy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench.compare_heads import compare, correct_per_photo, macro_f1_per_level, predict_pair
from components.evaluate import metrics as m
from components.train.model_folder import FlipAveraged, load_model
from core.labels import LabelSchema
from core.layouts import read_labels

NAMES = ("baseline", "candidate")


def correct_per_group(pred: dict[str, np.ndarray], allowed: np.ndarray, schema: LabelSchema) -> dict[str, np.ndarray]:
    """Boolean per photo: both levels and decodings, and each attribute group's arg-max.

    An attribute group is scored on the photos that have a value in it, the same photos for both
    models, so the comparison stays paired.
    """
    out = correct_per_photo(pred, allowed)
    attrs = np.asarray(pred["true_attributes"])
    for group, idx in schema.attribute_groups.items():
        idx = np.asarray(idx)
        has = attrs[:, idx].sum(1) > 0
        if not has.any():
            continue  # no photo of the split has a value in this group: nothing to compare
        hit = np.argmax(pred["attributes"][:, idx], 1) == np.argmax(attrs[:, idx], 1)
        out[group] = hit[has]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="output folder of `fashion preprocess` both were trained on")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        required=True,
        metavar=("BASELINE_DIR", "CANDIDATE_DIR"),
        help="model folders of one seed of both recipes; repeat for several seeds",
    )
    parser.add_argument("--flip", action="store_true", help="candidate = the model itself with flip averaging")
    args = parser.parse_args()
    schema = read_labels(args.data)
    allowed = m.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    runs = []
    for baseline_dir, candidate_dir in args.pair:
        candidate = load_model(candidate_dir)
        models = [load_model(baseline_dir), FlipAveraged(candidate) if args.flip else candidate]
        preds = predict_pair(models, (baseline_dir, candidate_dir), args.data, args.split)
        rows = compare(*(correct_per_group(p, allowed, schema) for p in preds), names=NAMES)
        runs.append(rows)
        pair = [baseline_dir, candidate_dir + (" (flip)" if args.flip else "")]
        f1 = dict(zip(NAMES, (macro_f1_per_level(p, allowed) for p in preds), strict=True))
        print(json.dumps({"pair": pair, "photos": len(preds[0]["ids"]), **rows, "macro_f1": f1}), flush=True)
    means = {key: {n: round(float(np.mean([r[key][n] for r in runs])), 4) for n in NAMES} for key in runs[0]}
    for key, row in means.items():
        print(f"{key:<22} baseline {row['baseline']:.2%}  candidate {row['candidate']:.2%}")
    colour = means.get("baseColour", means["subcategory"])
    print(json.dumps({"runs": len(runs), "mean": means, "ratio": round(colour["candidate"] / colour["baseline"], 4)}))


if __name__ == "__main__":
    main()
