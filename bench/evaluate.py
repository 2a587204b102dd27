"""Evaluate step timings on the test split, and what the vectorised metric core saves over the plain way.

Runs the evaluate step on a preprocess output's test split, timed in its parts (model over the
test split; metrics, figures and reports), then computes the same metrics twice on the same
predictions: with the project's numpy core (`evaluate_predictions`) and with the plain baseline
(scikit-learn calls per level and per label, Python loops where scikit-learn has no metric).

    .venv/bin/python -m bench.evaluate --data /tmp/full-preprocess --model runs/cpu-full/model

`--untrained` builds the preset's network with random weights instead (timings only; the
metrics are then meaningless). Prints the full metric table. Last line: JSON with
"ratio" = baseline seconds / numpy core seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from core.config import load_config
from core.labels import LabelSchema
from core.layouts import read_labels, read_stats


def _untrained_model(data_dir: str, preset: str, out: Path) -> str:
    from components.train.model import build_model

    config = load_config(preset)
    stats = read_stats(data_dir)
    schema = read_labels(data_dir)
    model = build_model(config.model, schema.sizes, (int(stats["image_height"]), int(stats["image_width"])))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    schema.save(out / "labels.json")
    return str(out)


def baseline_metrics(p: dict[str, np.ndarray], schema: LabelSchema, threshold: float) -> dict[str, float]:
    """The same figures the plain way: scikit-learn per level and label, Python loops elsewhere."""
    from sklearn import metrics as skm

    out: dict[str, float] = {}
    allowed = set(schema.allowed_pairs())
    n = len(p["ids"])
    cat_p, sub_p = p["category"], p["subcategory"]
    joint_c, joint_s = np.empty(n, dtype=int), np.empty(n, dtype=int)
    for i in range(n):
        best = max(allowed, key=lambda pair: cat_p[i, pair[0]] * sub_p[i, pair[1]])
        joint_c[i], joint_s[i] = best
    decodings = {"independent": (cat_p.argmax(1), sub_p.argmax(1)), "joint": (joint_c, joint_s)}
    for name, (cat, sub) in decodings.items():
        for level, pred in (("category", cat), ("subcategory", sub)):
            true = p[f"true_{level}"]
            labels = np.arange(p[level].shape[1])
            out[f"{name}_{level}_accuracy"] = skm.accuracy_score(true, pred)
            out[f"{name}_{level}_top5_accuracy"] = skm.top_k_accuracy_score(true, p[level], k=5, labels=labels)
            op, or_, of1, _ = skm.precision_recall_fscore_support(true, pred, average="weighted", zero_division=0)
            out.update({f"{name}_{level}_op": op, f"{name}_{level}_or": or_, f"{name}_{level}_of1": of1})
            out[f"{name}_{level}_macro_f1"] = skm.f1_score(true, pred, average="macro", zero_division=0)
            skm.precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
            skm.confusion_matrix(true, pred, labels=labels)
        out[f"{name}_hierarchy_consistency"] = float(
            np.mean([(c, s) in allowed for c, s in zip(cat, sub, strict=True)])
        )
    true, scores = p["true_attributes"], p["attributes"]
    decided = scores > threshold
    op, or_, of1, _ = skm.precision_recall_fscore_support(true, decided, average="micro", zero_division=0)
    out.update({"attributes_op": op, "attributes_or": or_, "attributes_of1": of1})
    skm.precision_recall_fscore_support(true, decided, average=None, zero_division=0)
    aps = [skm.average_precision_score(true[:, j], scores[:, j]) for j in range(true.shape[1]) if true[:, j].any()]
    out["attributes_map"] = float(np.mean(aps))
    at_k = []
    for i in range(n):
        k = int(true[i].sum())
        if k:
            top = np.argsort(-scores[i], kind="stable")[:k]
            at_k.append(true[i, top].sum() / k)
    out["attributes_precision_at_k"] = float(np.mean(at_k))
    for group, idx in schema.attribute_groups.items():
        has = true[:, idx].any(axis=1)
        best = np.asarray(idx)[scores[:, idx].argmax(axis=1)]
        out[f"attributes_{group}_accuracy"] = float(true[np.arange(n), best][has].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="preprocess output folder (its test split is evaluated)")
    parser.add_argument("--model", help="trained model folder")
    parser.add_argument("--untrained", action="store_true", help="build the preset's network with random weights")
    parser.add_argument("--preset", default="cpu-full")
    parser.add_argument("--out", help="evaluation folder to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of the metric cores: best of this many")
    args = parser.parse_args()
    if not args.model and not args.untrained:
        parser.error("give --model DIR or --untrained")

    from components.evaluate import evaluate_predictions, write_evaluation
    from components.train.model_folder import load_model, predict_split

    config = load_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or _untrained_model(args.data, args.preset, Path(tmp) / "model")
        out_dir = args.out or str(Path(tmp) / "eval")
        schema = read_labels(model_dir)
        started = time.perf_counter()
        model = load_model(model_dir)
        loaded = time.perf_counter()
        predictions = predict_split(model, args.data, "test", batch_size=256)
        predicted = time.perf_counter()
        result = write_evaluation(predictions, schema, args.data, out_dir, config, None, {"model": model_dir})
        written = time.perf_counter()

        n = len(predictions["ids"])
        print(f"test products: {n:,}   model: {model_dir}{' (untrained)' if args.untrained else ''}")
        print(f"load model     {loaded - started:7.2f} s")
        print(f"predict        {predicted - loaded:7.2f} s   ({n / (predicted - loaded):,.0f} products/s)")
        print(f"metrics+report {written - predicted:7.2f} s   (metrics, figures, HTML, Markdown, predictions.jsonl)")
        print(f"total          {written - started:7.2f} s")

        threshold = config.evaluate.attribute_threshold
        core, base = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            evaluation = evaluate_predictions(predictions, schema, threshold)
            core.append(time.perf_counter() - t)
            t = time.perf_counter()
            reference = baseline_metrics(predictions, schema, threshold)
            base.append(time.perf_counter() - t)
        s = evaluation.scalars
        worst = max(abs(s[k] - v) for k, v in reference.items() if k in s)
        print(f"metric core: numpy {min(core):.3f} s, baseline {min(base):.3f} s; largest difference {worst:.2g}")
        print()
        print("| metric | value |")
        print("|---|---|")
        for key, value in s.items():
            print(f"| {key} | {value:,.0f} |" if key == "num_test_examples" else f"| {key} | {value:.4f} |")
        print()
        print(f"gate: {result.reason}")
        figures = {
            "ratio": round(min(base) / min(core), 2),
            "test_products": n,
            "predict_s": round(predicted - loaded, 2),
            "metrics_report_s": round(written - predicted, 2),
            "total_s": round(written - started, 2),
            "core_s": round(min(core), 4),
            "baseline_s": round(min(base), 4),
            "max_difference": worst,
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
