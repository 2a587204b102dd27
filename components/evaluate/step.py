"""The evaluate step: score a trained model on the test split, decide the gate, write metrics and reports.

Output folder (docs/ARTIFACTS.md): `metrics.json` (flat `scalars` plus details), `gate.json`,
`report.html` (self-contained), `report.md`, the PNG figures, `predictions.jsonl`,
`classification_metrics.json` (the category confusion matrix for kfp), `config.yaml`, `labels.json`.
Given the MLflow store, the evaluation and the gate's decision and reasons also go to the run the
train step opened for the model, which ends here when the gate rejects the candidate.

In a pipeline run (`evaluate_against_champion`) the registry's serving champion is scored on the
same test photos in this step (`champion`), both are reported side by side (metrics.json, the
report, MLflow `champion.*` metrics) and the gate's tolerances apply to that comparison; the report
also shows how the catalogue drifted since the champion's training data (`core.catalogue`). A
model folder whose training was skipped (`unchanged.json`: the catalogue and settings are the
champion's) is not evaluated: the gate is not passed, and the report says why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate import figures as fig
from components.evaluate import outputs, report
from components.evaluate.champion import Champion, ChampionScore, fetch_champion, score_champion
from components.evaluate.evaluation import Evaluation, evaluate_predictions
from components.evaluate.gate import decide
from core import layouts
from core.catalogue import CatalogueDrift, CatalogueSnapshot, compare
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema

log = logging.getLogger(__name__)

SPLIT = "test"
PREDICT_BATCH = 256
SMOKE_PHOTOS = 32  # photos exported next to predictions.jsonl when the manifest's are out of reach
ELSEWHERE = "the champion's metrics measured elsewhere, not on these photos"

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
        mlflow_run_id: the MLflow run the evaluation was logged to ('' when none was).
        unchanged: nothing was evaluated: training was skipped (the catalogue and settings are the champion's).
        champion: the champion it was compared with: `model`, `version` and the gated metrics
            (`scalars`); {} on the first run.
        drift: one line on how the catalogue changed since the champion's training data ('' when unknown).

    """

    out_dir: str
    blessed: bool
    reason: str
    scalars: dict[str, float]
    files: dict[str, str]
    num_examples: int
    seconds: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    unchanged: bool = False
    champion: dict[str, Any] = field(default_factory=dict)
    drift: str = ""

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
    champion: ChampionScore | None = None,
    drift: CatalogueDrift | None = None,
    drift_note: str = "",
) -> EvaluationResult:
    """Measure predictions, decide the gate and write every output file.

    Args:
        predictions: the arrays of `components.train.model_folder.predict_split` on the test split.
        schema: the label schema of the model and the shards.
        data_dir: the preprocess folder the predictions came from (photos for the sample grid and
            for predictions.jsonl, when the ingest manifest is out of reach).
        out_dir: the folder to write.
        config: the resolved config (`evaluate` section).
        champion_metrics: the production champion's flat scalars from elsewhere (`fashion evaluate
            --champion-metrics`); None on the first run. Ignored when `champion` is given.
        context: lines to show under the report's title (model, data, ...).
        seconds: timings measured before (e.g. `predict`), kept in metrics.json.
        champion: the champion scored on the same test photos (`champion.score_champion`): the
            gate's tolerances apply to it, and the report and metrics.json show both side by side.
        drift: how the catalogue changed since the champion's training data.
        drift_note: why there is no drift to show, when there is a champion but no `drift`.

    Returns:
        The EvaluationResult.

    """
    started = time.perf_counter()
    ev = config.evaluate
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate_predictions(predictions, schema, ev.attribute_threshold, ev.hierarchical_decoding)
    n = len(predictions["ids"])
    if champion is not None:
        champion_metrics = champion.scalars
        source = f"{champion.champion.description} on the same {n:,} test photos"
    else:
        source = ELSEWHERE if champion_metrics is not None else ""
    gate = decide(evaluation.scalars, champion_metrics, ev.floors, ev.tolerances, champion_source=source)

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
    elif champion is not None:
        lines.setdefault("champion", f"{champion.champion.description}, scored in this step on the same test photos")
    blocks = report.build_blocks(evaluation, gate, made, lines, champion=champion, drift=drift, drift_note=drift_note)
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
            "champion_model": champion.to_dict() if champion is not None else None,
            "drift": drift.to_dict() if drift is not None else None,
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
    compared: dict[str, Any] = {}
    if champion_metrics is not None:
        gated = sorted(set(ev.tolerances) & set(champion_metrics))
        compared = {
            "model": champion.champion.description if champion is not None else ELSEWHERE,
            "version": champion.champion.version if champion is not None else "",
            "scalars": {k: float(champion_metrics[k]) for k in gated},
        }
    return EvaluationResult(
        out_dir=str(out),
        blessed=gate.blessed,
        reason=gate.reason,
        scalars=evaluation.scalars,
        files={k: str(out / v) for k, v in files.items()},
        num_examples=len(ids),
        seconds=timing,
        champion=compared,
        drift=drift.summary() if drift is not None else drift_note,
    )


def evaluate_model(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    config: Config,
    champion_metrics: dict | None = None,
    tracking_uri: str = "",
    champion: Champion | None = None,
) -> EvaluationResult:
    """Evaluate a trained model folder on the test split of the shards and decide the gate.

    Args:
        model_dir: the trainer's output folder (`model.keras`, `labels.json`); one holding
            `unchanged.json` instead (training was skipped) is not evaluated and not blessed.
        data_dir: the preprocess output folder (shards, `stats.json`, `labels.json`).
        out_dir: the folder to write (see the module docstring).
        config: the resolved config; `evaluate` holds the threshold, decoding, floors and tolerances.
        champion_metrics: the serving champion's flat scalars measured elsewhere (`fashion evaluate
            --champion-metrics`); None when nothing is in production: only the floors apply.
        tracking_uri: the MLflow store of the model's run (named by `mlflow_run.json` in `model_dir`):
            the test metrics, the champion's on the same photos (`champion.*`), the catalogue drift,
            the gate's decision and reasons and this folder are logged to that run, which ends
            (FINISHED) when the gate rejects the candidate and is marked FAILED when the evaluation
            fails. Empty, or a model folder that names no run: nothing is logged.
        champion: the champion's model folder, scored on the same test photos; the gate compares
            with it (and `champion_metrics` is not used).

    Returns:
        The EvaluationResult.

    Raises:
        StepError: a folder is not what the step expects, the model and the data disagree on labels,
            or the MLflow store cannot be reached or fails.

    """
    from components.train.retrain import read_unchanged

    unchanged = read_unchanged(model_dir)
    if unchanged is not None:
        return write_unchanged_evaluation(unchanged, out_dir, config)
    if not tracking_uri:
        return _evaluate(model_dir, data_dir, out_dir, config, champion_metrics, champion)
    from components.register import tracking
    from core.retry import call_with_retries

    try:
        result = _evaluate(model_dir, data_dir, out_dir, config, champion_metrics, champion)

        def record() -> tracking.RunRecord | None:
            recorded = tracking.record_evaluation(tracking_uri, model_dir, out_dir)
            if recorded is not None:
                log_comparison(tracking_uri, recorded.run_id, out_dir)
            return recorded

        recorded = call_with_retries(
            record, config.pipeline.retries, config.pipeline.retry_backoff_s, "log the evaluation to MLflow"
        )
    except BaseException as err:
        tracking.end_recorded_run(tracking_uri, model_dir, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    return replace(result, mlflow_run_id=recorded.run_id) if recorded else result


def evaluate_against_champion(model_dir: str, data_dir: str, out_dir: str, config: Config) -> EvaluationResult:
    """The pipeline's evaluate step: the model and the registry's serving champion on the same test photos.

    The champion (`config.registry`: the store and the registered model) is fetched into a
    temporary folder and scored in this step; without one (the first run) only the floors apply.
    The evaluation is logged to the model's MLflow run (`evaluate_model`).

    Raises:
        StepError: as `evaluate_model`, or the champion cannot be fetched.
    """
    import tempfile

    from components.train.retrain import read_unchanged
    from core.retry import call_with_retries

    tracking_uri = config.registry.tracking_uri
    if read_unchanged(model_dir) is not None:
        return evaluate_model(model_dir, data_dir, out_dir, config, tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        champion = call_with_retries(
            lambda: fetch_champion(config, tempfile.mkdtemp(dir=tmp)),
            config.pipeline.retries,
            config.pipeline.retry_backoff_s,
            "fetch the champion's model",
        )
        if champion is None:
            log.info("no champion of %r yet: the gate applies the floors only", config.registry.model_name)
        if isinstance(champion, dict):  # a champion without a model folder: its recorded metrics
            return evaluate_model(model_dir, data_dir, out_dir, config, champion, tracking_uri=tracking_uri)
        return evaluate_model(model_dir, data_dir, out_dir, config, tracking_uri=tracking_uri, champion=champion)


def _catalogue_drift(model_dir: str, champion: Champion | None) -> tuple[CatalogueDrift | None, str]:
    """The drift from the champion's training catalogue to the model's, or why it is unknown."""
    if champion is None:
        return None, ""
    new, old = Path(model_dir) / layouts.CATALOGUE, champion.model_dir / layouts.CATALOGUE
    if not old.is_file():
        return None, f"{champion.description} recorded no training catalogue: the drift is unknown"
    if not new.is_file():
        return None, f"{model_dir} holds no {layouts.CATALOGUE}: the drift is unknown"
    return compare(CatalogueSnapshot.load(old), CatalogueSnapshot.load(new)), ""


def _evaluate(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    config: Config,
    champion_metrics: dict | None,
    champion: Champion | None = None,
) -> EvaluationResult:
    from components.train.model_folder import answering_model, load_model, predict_split

    model_schema = layouts.read_labels(model_dir)
    check_same_labels(model_schema, layouts.read_labels(data_dir), model_dir, data_dir)
    started = time.perf_counter()
    model = load_model(model_dir)
    predictions = predict_split(answering_model(model, config), data_dir, SPLIT, batch_size=PREDICT_BATCH)
    predict_s = round(time.perf_counter() - started, 3)
    log.info("predicted %d test products in %.1fs", len(predictions["ids"]), predict_s)
    seconds = {"predict": predict_s}
    scored = None
    if champion is not None:
        scored = score_champion(champion, data_dir, model_schema, config, SPLIT, PREDICT_BATCH, predictions["ids"])
        seconds["champion_predict"] = round(scored.seconds, 3)
    drift, note = _catalogue_drift(model_dir, champion)
    if drift is not None:
        log.info("catalogue since %s: %s", champion.description, drift.summary())
    return write_evaluation(
        predictions,
        model_schema,
        data_dir,
        out_dir,
        config,
        champion_metrics,
        context={"model": str(model_dir), "data": str(data_dir)},
        seconds=seconds,
        champion=scored,
        drift=drift,
        drift_note=note,
    )


def write_unchanged_evaluation(unchanged: Mapping[str, Any], out_dir: str | Path, config: Config) -> EvaluationResult:
    """The evaluation of a skipped training: nothing measured, not blessed, the reason in gate.json and the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    message = str(unchanged.get("message") or "the catalogue and settings are the champion's")
    reason = f"not evaluated: not retrained, {message}"
    _json(out / layouts.GATE, {"blessed": False, "unchanged": True, "reason": reason, "checks": []})
    _json(out / layouts.METRICS, {"scalars": {}, "split": SPLIT, "unchanged": dict(unchanged), "champion": None})
    blocks = report.unchanged_blocks(message, str(unchanged.get("champion") or ""), str(unchanged.get("force") or ""))
    (out / layouts.REPORT_MD).write_text(report.to_markdown(blocks))
    (out / layouts.REPORT_HTML).write_text(report.to_html(blocks))
    config.save(out / layouts.CONFIG)
    log.info("%s", reason)
    files = {"metrics": layouts.METRICS, "gate": layouts.GATE, "report_html": layouts.REPORT_HTML}
    return EvaluationResult(
        out_dir=str(out),
        blessed=False,
        reason=reason,
        scalars={},
        files={k: str(out / v) for k, v in {**files, "report_md": layouts.REPORT_MD}.items()},
        num_examples=0,
        unchanged=True,
        drift=message,
    )


# MLflow names of the comparison: the champion's metrics on the same photos, and the catalogue drift.
CHAMPION_PREFIX = "champion."
DRIFT_PREFIX = "drift."
TAG_CHAMPION = "champion_compared"
TAG_DRIFT = "catalogue_drift"


def comparison_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """From metrics.json: `champion.<scalar>` (the champion on the same photos) and `drift.*` counts."""
    out: dict[str, float] = {}
    champion = metrics.get("champion") if metrics.get("champion_model") else None
    for key, value in (champion or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[CHAMPION_PREFIX + key] = float(value)
    model = metrics.get("champion_model") or {}
    if model:
        out[CHAMPION_PREFIX + "unknown_test_products"] = float(model.get("unknown_test_products", 0))
    drift = metrics.get("drift")
    if drift:
        out[DRIFT_PREFIX + "products_before"] = float(drift["products_before"])
        out[DRIFT_PREFIX + "products_after"] = float(drift["products_after"])
        for key in ("new", "vanished", "relabelled"):
            out[f"{DRIFT_PREFIX}{key}_products"] = float(drift[key])
        for level in drift["levels"]:
            name = level["level"]
            out[f"{DRIFT_PREFIX}{name}.appeared_classes"] = float(len(level["appeared"]))
            out[f"{DRIFT_PREFIX}{name}.disappeared_classes"] = float(len(level["disappeared"]))
            out[f"{DRIFT_PREFIX}{name}.relabelled_products"] = float(level["relabelled"])
            top = max((abs(sh["change"]) for sh in level["shifts"]), default=0.0)
            out[f"{DRIFT_PREFIX}{name}.largest_share_shift"] = float(top)
    return out


def log_comparison(tracking_uri: str, run_id: str, eval_dir: str | Path) -> None:
    """Log the champion's metrics on the same photos and the catalogue drift (metrics.json) to an MLflow run.

    Raises:
        StepError: the store cannot be reached or fails.
    """
    from mlflow.entities import Metric, RunTag

    from components.register.backend import backend_errors, make_client
    from components.register.coordination import now_ms
    from components.register.tracking import metric_name

    metrics = layouts.read_json(Path(eval_dir) / layouts.METRICS, "the evaluation's metrics")
    values = comparison_metrics(metrics)
    tags = []
    if metrics.get("champion_model"):
        tags.append(RunTag(TAG_CHAMPION, str(metrics["champion_model"]["model"])))
    if metrics.get("drift"):
        tags.append(RunTag(TAG_DRIFT, str(metrics["drift"]["summary"])[:5000]))
    if not values and not tags:
        return
    timestamp = now_ms()
    client = make_client(tracking_uri)
    with backend_errors(tracking_uri, f"log the champion comparison to MLflow run {run_id}"):
        client.log_batch(
            run_id, metrics=[Metric(metric_name(k), v, timestamp, 0) for k, v in sorted(values.items())], tags=tags
        )
