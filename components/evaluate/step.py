"""The evaluate step: score a trained model on the test split, decide the gate, write metrics and reports.

Output folder (docs/ARTIFACTS.md): `metrics.json` (flat `scalars` plus details), `gate.json`,
`report.html` (self-contained), `report.md`, the PNG figures, `predictions.jsonl`,
`classification_metrics.json` (the category confusion matrix for kfp), `config.yaml`, `labels.json`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate import figures as fig
from components.evaluate import outputs, report
from components.evaluate.evaluation import Evaluation, evaluate_predictions
from components.evaluate.gate import decide
from core import layouts
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema

log = logging.getLogger(__name__)

SPLIT = "test"
PREDICT_BATCH = 256
SMOKE_PHOTOS = 32  # photos exported next to predictions.jsonl when the manifest's are out of reach

FIGURES = {
    "confusion_category": "confusion_category.png",
    "confusion_subcategory": "confusion_subcategory.png",
    "attribute_pr_curves": "attribute_pr_curves.png",
    "samples": "samples.png",
}


@dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation wrote and decided.

    Attributes:
        out_dir: the output folder.
        blessed: the gate's decision.
        reason: the gate's readable reason.
        scalars: the flat metrics.
        files: output name -> path.
        num_examples: test products evaluated.
        seconds: wall time of `predict` (model over the test split) and `report` (metrics, figures, files).

    """

    out_dir: str
    blessed: bool
    reason: str
    scalars: dict[str, float]
    files: dict[str, str]
    num_examples: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def check_same_labels(model_schema: LabelSchema, data_schema: LabelSchema, model_dir: str, data_dir: str) -> None:
    """Fail when the model and the shards index labels differently (they come from different ingests)."""
    for level in ("categories", "subcategories", "attributes"):
        a, b = getattr(model_schema, level), getattr(data_schema, level)
        if a != b:
            extra = sorted(set(a) - set(b))[:3]
            lacking = sorted(set(b) - set(a))[:3]
            raise StepError(
                f"the model in {model_dir} and the data in {data_dir} have different {level} "
                f"({len(a)} vs {len(b)}; model only: {extra}, data only: {lacking}): evaluate the model on the "
                "shards it was trained from"
            )


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _finite(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy with non-finite numbers as None (JSON has no NaN)."""
    if values is None:
        return None
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in values.items()}


def _figures(evaluation: Evaluation, out: Path, photos: dict[str, bytes], sample_rows: list[int]) -> dict[str, Path]:
    schema = evaluation.schema
    made: dict[str, Path] = {}
    for level, names, label in (
        ("subcategory", schema.subcategories, "Sub-category"),
        ("category", schema.categories, "Category"),
    ):
        cm = evaluation.chosen.levels[level].confusion
        made[f"confusion_{level}"] = fig.confusion_figure(
            cm, names, out / FIGURES[f"confusion_{level}"], f"{label}: most frequent classes, test split"
        )
    if schema.attributes:
        made["attribute_pr_curves"] = fig.pr_curves_figure(
            evaluation.attributes["true"],
            evaluation.attributes["scores"],
            schema.attributes,
            schema.attribute_groups,
            evaluation.attributes["ap"],
            evaluation.threshold,
            out / FIGURES["attribute_pr_curves"],
        )
    if sample_rows:
        made["samples"] = fig.samples_figure(_samples(evaluation, photos, sample_rows), out / FIGURES["samples"])
    return made


def _samples(evaluation: Evaluation, photos: dict[str, bytes], rows: list[int]) -> list[fig.Sample]:
    p = evaluation.predictions
    schema = evaluation.schema
    chosen = evaluation.chosen
    ids = np.asarray(p["ids"]).astype(str)
    samples = []
    for r in rows:
        if ids[r] not in photos:
            continue
        true_cat, true_sub = int(p["true_category"][r]), int(p["true_subcategory"][r])
        cat, sub = int(chosen.category[r]), int(chosen.subcategory[r])
        # Only a wrong category is worth a line: the sub-category usually implies it.
        notes = [f"cat: {schema.categories[cat]} ≠ {schema.categories[true_cat]}"] if cat != true_cat else []
        image = outputs.decode_photo(photos[ids[r]])
        correct = cat == true_cat and sub == true_sub
        samples.append(
            fig.Sample(
                image,
                schema.subcategories[true_sub],
                schema.subcategories[sub],
                correct,
                float(chosen.subcategory_score[r]),
                tuple(notes),
                ids[r],
            )
        )
    return samples


def write_evaluation(
    predictions: Mapping[str, np.ndarray],
    schema: LabelSchema,
    data_dir: str | Path,
    out_dir: str | Path,
    config: Config,
    champion_metrics: Mapping[str, Any] | None = None,
    context: Mapping[str, str] | None = None,
    seconds: Mapping[str, float] | None = None,
) -> EvaluationResult:
    """Measure predictions, decide the gate and write every output file.

    Args:
        predictions: the arrays of `components.train.model_folder.predict_split` on the test split.
        schema: the label schema of the model and the shards.
        data_dir: the preprocess folder the predictions came from (photos for the sample grid and
            for predictions.jsonl, when the ingest manifest is out of reach).
        out_dir: the folder to write.
        config: the resolved config (`evaluate` section).
        champion_metrics: the production champion's flat scalars; None on the first run.
        context: lines to show under the report's title (model, data, ...).
        seconds: timings measured before (e.g. `predict`), kept in metrics.json.

    Returns:
        The EvaluationResult.

    """
    started = time.perf_counter()
    ev = config.evaluate
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate_predictions(predictions, schema, ev.attribute_threshold, ev.hierarchical_decoding)
    gate = decide(evaluation.scalars, champion_metrics, ev.floors, ev.tolerances)

    ids = np.asarray(predictions["ids"]).astype(str)
    stats = layouts.read_stats(data_dir)
    uris = outputs.manifest_uris(stats.get("manifest"))
    sample_rows = outputs.select_samples(evaluation, ev.sample_grid_size)
    # The deploy step re-predicts the first records' photos; without the manifest's, export them.
    unreachable = [i for i in ids[:SMOKE_PHOTOS] if i not in uris]
    photos = outputs.read_photos(data_dir, SPLIT, [ids[r] for r in sample_rows] + unreachable)
    if unreachable:
        suffix = "png" if stats.get("image_format") == "png" else "jpg"
        folder = out / "photos"
        folder.mkdir(exist_ok=True)
        for item_id in unreachable:
            path = folder / f"{item_id}.{suffix}"
            path.write_bytes(photos[item_id])
            uris[item_id] = str(path.resolve())

    with open(out / layouts.PREDICTIONS, "w") as fh:
        for record in outputs.prediction_records(evaluation, uris):
            fh.write(json.dumps(record) + "\n")
    _json(out / layouts.CLASSIFICATION_METRICS, outputs.classification_metrics(evaluation))
    made = _figures(evaluation, out, photos, sample_rows)
    lines = dict(context or {})
    if champion_metrics is None:
        lines.setdefault("champion", "none in production yet (the gate applies the floors only)")
    blocks = report.build_blocks(evaluation, gate, made, lines)
    (out / layouts.REPORT_MD).write_text(report.to_markdown(blocks))
    (out / layouts.REPORT_HTML).write_text(report.to_html(blocks))
    timing = {**(seconds or {}), "report": round(time.perf_counter() - started, 3)}
    _json(
        out / layouts.METRICS,
        {
            "scalars": evaluation.scalars,
            "split": SPLIT,
            **evaluation.details,
            "champion": _finite(champion_metrics),
            "seconds": timing,
        },
    )
    _json(out / layouts.GATE, gate.to_dict())
    config.save(out / layouts.CONFIG)
    schema.save(out / layouts.LABELS)
    files = {
        "metrics": layouts.METRICS,
        "gate": layouts.GATE,
        "predictions": layouts.PREDICTIONS,
        "classification_metrics": layouts.CLASSIFICATION_METRICS,
        "report_html": layouts.REPORT_HTML,
        "report_md": layouts.REPORT_MD,
        **{k: FIGURES[k] for k in made},
    }
    log.info("evaluated %d test products: %s", len(ids), gate.reason.split("; ")[0])
    return EvaluationResult(
        out_dir=str(out),
        blessed=gate.blessed,
        reason=gate.reason,
        scalars=evaluation.scalars,
        files={k: str(out / v) for k, v in files.items()},
        num_examples=len(ids),
        seconds=timing,
    )


def evaluate_model(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    config: Config,
    champion_metrics: dict | None = None,
) -> EvaluationResult:
    """Evaluate a trained model folder on the test split of the shards and decide the gate.

    Args:
        model_dir: the trainer's output folder (`model.keras`, `labels.json`).
        data_dir: the preprocess output folder (shards, `stats.json`, `labels.json`).
        out_dir: the folder to write (see the module docstring).
        config: the resolved config; `evaluate` holds the threshold, decoding, floors and tolerances.
        champion_metrics: the serving champion's flat scalars (from the MLflow registry alias
            `champion`); None when nothing is in production: only the floors apply.

    Returns:
        The EvaluationResult.

    Raises:
        StepError: a folder is not what the step expects, or the model and the data disagree on labels.

    """
    from components.train.model_folder import load_model, predict_split

    model_schema = layouts.read_labels(model_dir)
    check_same_labels(model_schema, layouts.read_labels(data_dir), model_dir, data_dir)
    started = time.perf_counter()
    model = load_model(model_dir)
    predictions = predict_split(model, data_dir, SPLIT, batch_size=PREDICT_BATCH)
    predict_s = round(time.perf_counter() - started, 3)
    log.info("predicted %d test products in %.1fs", len(predictions["ids"]), predict_s)
    return write_evaluation(
        predictions,
        model_schema,
        data_dir,
        out_dir,
        config,
        champion_metrics,
        context={"model": str(model_dir), "data": str(data_dir)},
        seconds={"predict": predict_s},
    )
