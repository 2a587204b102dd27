"""Paired comparison of trained unified models against their independent-heads ablations.

Each `--pair UNIFIED_DIR INDEPENDENT_DIR` is one training run of both heads on the same shards
(as `bench/train_cpu_full.py` writes them). Both models score the same test photos, so the
comparison is paired: per level it prints each model's accuracy, with per-level arg-max and with
joint decoding over the category tree, the photos only one of the two gets right, the exact
McNemar p-value, and a paired bootstrap 95% interval of the accuracy difference. With several
pairs it also prints the means over runs.

    .venv/bin/python -m bench.compare_heads --data DATA --pair RUN/unified RUN/independent

Last line: a JSON object with "ratio" = mean unified / mean independent test sub-category
accuracy (per-level arg-max, the decoding `bench/train_cpu_full.py` reports).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from components.evaluate import metrics as m
from components.evaluate.evaluation import LEVELS
from components.train.model_folder import load_model, predict_split
from core.layouts import read_labels


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial, p = 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def bootstrap_interval(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(a) - mean(b), a and b boolean per photo."""
    rng = np.random.default_rng(seed)
    diff = a.astype(np.float64) - b.astype(np.float64)
    idx = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def correct_per_photo(pred: dict[str, np.ndarray], allowed: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean per photo and level, for per-level arg-max and for joint decoding."""
    cat, sub, _ = m.joint_decode(pred["category"], pred["subcategory"], allowed)
    out = {}
    for level, joint in zip(LEVELS, (cat, sub), strict=True):
        out[level] = pred[level].argmax(axis=1) == pred[f"true_{level}"]
        out[f"{level}_joint"] = joint == pred[f"true_{level}"]
    return out


def macro_f1_per_level(pred: dict[str, np.ndarray], allowed: np.ndarray) -> dict[str, float]:
    """Macro-F1 of each level, per-level arg-max and joint decoding: rare classes weigh as much as common ones."""
    from sklearn.metrics import f1_score

    cat, sub, _ = m.joint_decode(pred["category"], pred["subcategory"], allowed)
    out = {}
    for level, joint in zip(LEVELS, (cat, sub), strict=True):
        true = pred[f"true_{level}"]
        out[level] = round(float(f1_score(true, pred[level].argmax(axis=1), average="macro", zero_division=0)), 4)
        out[f"{level}_joint"] = round(float(f1_score(true, joint, average="macro", zero_division=0)), 4)
    return out


def compare(
    unified: dict[str, np.ndarray],
    independent: dict[str, np.ndarray],
    names: tuple[str, str] = ("unified", "independent"),
) -> dict[str, Any]:
    """Per level and decoding: both accuracies, discordant photos, McNemar p, bootstrap interval."""
    rows = {}
    first, second = names
    for key in unified:
        a, b = unified[key], independent[key]
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        lo, hi = bootstrap_interval(a, b)
        rows[key] = {
            first: round(float(a.mean()), 4),
            second: round(float(b.mean()), 4),
            f"only_{first}": only_a,
            f"only_{second}": only_b,
            "mcnemar_p": round(mcnemar_exact(only_a, only_b), 3),
            "diff_95": [round(lo, 4), round(hi, 4)],
        }
    return rows


def predict_pair(models: Sequence[Any], dirs: Sequence[str], data: str, split: str) -> list[dict[str, np.ndarray]]:
    """Both models' predictions on `split`, checked to cover the same photos."""
    preds = [predict_split(model, data, split) for model in models]
    if not np.array_equal(preds[0]["ids"], preds[1]["ids"]):
        raise SystemExit(f"{dirs[0]} and {dirs[1]} scored different photos: same --data for both")
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="output folder of `fashion preprocess` the models were trained on"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        required=True,
        metavar=("UNIFIED_DIR", "INDEPENDENT_DIR"),
        help="model folders of one run of both heads; repeat for several runs",
    )
    args = parser.parse_args()
    schema = read_labels(args.data)
    allowed = m.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    runs = []
    for unified_dir, independent_dir in args.pair:
        dirs = (unified_dir, independent_dir)
        preds = predict_pair([load_model(d) for d in dirs], dirs, args.data, args.split)
        rows = compare(*(correct_per_photo(p, allowed) for p in preds))
        runs.append(rows)
        f1 = dict(zip(("unified", "independent"), (macro_f1_per_level(p, allowed) for p in preds), strict=True))
        print(
            json.dumps(
                {"pair": [unified_dir, independent_dir], "photos": len(preds[0]["ids"]), **rows, "macro_f1": f1}
            ),
            flush=True,
        )
    means = {
        key: {h: round(float(np.mean([r[key][h] for r in runs])), 4) for h in ("unified", "independent")}
        for key in runs[0]
    }
    ratio = means["subcategory"]["unified"] / means["subcategory"]["independent"]
    print(json.dumps({"runs": len(runs), "mean": means, "ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()
