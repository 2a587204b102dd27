"""Evaluate step timings on the test split, and what the project's own metric code saves over plain loops.

Runs the evaluate step on a preprocess output's test split, timed in its parts (model over the
test split; metrics, figures and reports), then times the metric core (`evaluate_predictions`)
on the same predictions. The core computes the generic metrics with scikit-learn itself, so
scikit-learn is no baseline for it; what the project still computes itself (joint decoding over
the category tree, hierarchy consistency, top-5 with ties in the true class's favour, P@k with
each product's own k, per-group arg-max accuracy) is timed twice: in its numpy form and as plain
Python loops per product. The plain way also recomputes every shared scalar with direct
scikit-learn calls, so the largest difference checks the core's wiring (labels, averages,
zero_division) too.

    .venv/bin/python -m bench.evaluate --data /tmp/full-preprocess --model runs/cpu-full/model

`--untrained` builds the preset's network with random weights instead (timings only; the
metrics are then meaningless). Prints the full metric table. Last line: JSON with
"ratio" = Python-loop seconds / numpy seconds of the project's own metric pieces.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.evaluate.scalars import group_key
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


def own_numpy(p: dict[str, np.ndarray], schema: LabelSchema) -> dict[str, float]:
    """The pieces scikit-learn lacks, as the evaluate step computes them (its numpy functions)."""
    from components.evaluate import metrics as m

    out: dict[str, float] = {}
    allowed = m.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    cat_p, sub_p = p["category"], p["subcategory"]
    joint_c, joint_s, _ = m.joint_decode(cat_p, sub_p, allowed)
    for name, (cat, sub) in {"independent": (cat_p.argmax(1), sub_p.argmax(1)), "joint": (joint_c, joint_s)}.items():
        out[f"{name}_hierarchy_consistency"] = m.hierarchy_consistency(cat, sub, allowed)
    for level in ("category", "subcategory"):
        out[f"{level}_top5_accuracy"] = m.top_k_accuracy(p[f"true_{level}"], p[level], 5)
    true, scores = p["true_attributes"], p["attributes"]
    at_k = m.metrics_at_k(true, scores)
    out.update({f"attributes_{k}": at_k[k] for k in ("precision_at_k", "recall_at_k", "f1_at_k")})
    for group, g in m.group_accuracy(true, scores, schema.attribute_groups).items():
        out[group_key(group)] = g["accuracy"]
    return out


def own_loops(p: dict[str, np.ndarray], schema: LabelSchema) -> dict[str, float]:
    """The same pieces the plain way: a Python loop per product."""
    out: dict[str, float] = {}
    allowed = set(schema.allowed_pairs())
    n = len(p["ids"])
    cat_p, sub_p = p["category"], p["subcategory"]
    joint_c, joint_s = np.empty(n, dtype=int), np.empty(n, dtype=int)
    for i in range(n):
        joint_c[i], joint_s[i] = max(allowed, key=lambda pair: cat_p[i, pair[0]] * sub_p[i, pair[1]])
    for name, (cat, sub) in {"independent": (cat_p.argmax(1), sub_p.argmax(1)), "joint": (joint_c, joint_s)}.items():
        out[f"{name}_hierarchy_consistency"] = float(
            np.mean([(c, s) in allowed for c, s in zip(cat, sub, strict=True)])
        )
    for level in ("category", "subcategory"):
        # A tie with the true class counts for it, as in the core (scikit-learn breaks ties by class index).
        hits = [(row > row[t]).sum() < 5 for t, row in zip(p[f"true_{level}"], p[level], strict=True)]
        out[f"{level}_top5_accuracy"] = float(np.mean(hits))
    true, scores = p["true_attributes"], p["attributes"]
    at_k = []
    for i in range(n):
        k = int(true[i].sum())
        if k:
            top = np.argsort(-scores[i], kind="stable")[:k]
            at_k.append(true[i, top].sum() / k)
    for key in ("precision_at_k", "recall_at_k", "f1_at_k"):
        out[f"attributes_{key}"] = float(np.mean(at_k))
    for group, idx in schema.attribute_groups.items():
        has = true[:, idx].any(axis=1)
        best = np.asarray(idx)[scores[:, idx].argmax(axis=1)]
        out[group_key(group)] = float(true[np.arange(n), best][has].mean())
    return out


def sklearn_direct(p: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """The generic scalars by direct scikit-learn calls, to check how the core calls it (independent decoding)."""
    from sklearn import metrics as skm

    out: dict[str, float] = {}
    for level in ("category", "subcategory"):
        true, pred = p[f"true_{level}"], p[level].argmax(1)
        out[f"{level}_accuracy"] = skm.accuracy_score(true, pred)
        labels = np.arange(p[level].shape[1])
        op, or_, of1, _ = skm.precision_recall_fscore_support(
            true, pred, labels=labels, average="weighted", zero_division=0
        )
        out.update({f"{level}_op": op, f"{level}_or": or_, f"{level}_of1": of1})
        out[f"{level}_macro_f1"] = skm.f1_score(true, pred, average="macro", zero_division=0)
    true, scores = p["true_attributes"], p["attributes"]
    decided = scores > threshold
    op, or_, of1, _ = skm.precision_recall_fscore_support(true, decided, average="micro", zero_division=0)
    out.update({"attributes_op": op, "attributes_or": or_, "attributes_of1": of1})
    aps = [skm.average_precision_score(true[:, j], scores[:, j]) for j in range(true.shape[1]) if true[:, j].any()]
    out["attributes_map"] = float(np.mean(aps))
    return out


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    """The least wall time of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def compare_metrics(p: dict[str, np.ndarray], schema: LabelSchema, threshold: float, repeats: int) -> dict:
    """Time the metric core and the project's own pieces (numpy vs loops); check every value against the plain way.

    Returns:
        `core_s` (all of `evaluate_predictions`), `own_numpy_s`, `own_loops_s`, `ratio`
        (loops / numpy), `max_difference` (over every scalar the plain way computes) and the
        core's `scalars`.

    """
    from components.evaluate import evaluate_predictions

    core_s, evaluation = best_of(repeats, lambda: evaluate_predictions(p, schema, threshold))
    numpy_s, mine = best_of(repeats, lambda: own_numpy(p, schema))
    loops_s, loops = best_of(repeats, lambda: own_loops(p, schema))
    s = evaluation.scalars
    reference = {**loops, **sklearn_direct(p, threshold)}
    shared = [k for k in reference if k in s]
    return {
        "core_s": core_s,
        "own_numpy_s": numpy_s,
        "own_loops_s": loops_s,
        "ratio": loops_s / numpy_s,
        "max_difference": max(
            [abs(s[k] - reference[k]) for k in shared] + [abs(mine[k] - loops[k]) for k in loops if k in mine]
        ),
        "compared": len(shared),
        "scalars": s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="preprocess output folder (its test split is evaluated)")
    parser.add_argument("--model", help="trained model folder")
    parser.add_argument("--untrained", action="store_true", help="build the preset's network with random weights")
    parser.add_argument("--preset", default="cpu-full")
    parser.add_argument("--out", help="evaluation folder to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3, help="metric timings: best of this many")
    args = parser.parse_args()
    if not args.model and not args.untrained:
        parser.error("give --model DIR or --untrained")

    from components.evaluate import write_evaluation
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
        c = compare_metrics(predictions, schema, threshold, args.repeats)
        print(
            f"metric core (scikit-learn for the generic metrics): {c['core_s']:.3f} s; the project's own pieces "
            f"alone: numpy {c['own_numpy_s']:.3f} s, Python loops {c['own_loops_s']:.3f} s; "
            f"largest difference over {c['compared']} scalars {c['max_difference']:.2g}"
        )
        print()
        print("| metric | value |")
        print("|---|---|")
        for key, value in c["scalars"].items():
            print(f"| {key} | {value:,.0f} |" if key == "num_test_examples" else f"| {key} | {value:.4f} |")
        print()
        print(f"gate: {result.reason}")
        figures = {
            "ratio": round(c["ratio"], 2),
            "test_products": n,
            "predict_s": round(predicted - loaded, 2),
            "metrics_report_s": round(written - predicted, 2),
            "total_s": round(written - started, 2),
            "core_s": round(c["core_s"], 4),
            "own_numpy_s": round(c["own_numpy_s"], 4),
            "own_loops_s": round(c["own_loops_s"], 4),
            "max_difference": c["max_difference"],
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
