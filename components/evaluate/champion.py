"""The champion sits the challenger's exam: its model scored on the same test photos, in the same step.

The serving champion's Keras model folder comes from the registry (`components.register.champion`)
and runs over the very test split the challenger is scored on. Its vocabularies may differ from the
new catalogue's, so its answers are mapped by label string into a union of both vocabularies: a
class the champion does not know gets probability 0 (its products count as the champion's
errors), and a class it knows that the catalogue no longer has stays a possible answer (always a
wrong one). The metrics of both models then come from the same function on the same products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.evaluation import Evaluation, evaluate_predictions
from core import layouts
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema

log = logging.getLogger(__name__)

# The schema vocabulary of each prediction level.
VOCABULARIES = {"category": "categories", "subcategory": "subcategories", "attributes": "attributes"}


@dataclass(frozen=True)
class Champion:
    """A champion model folder to score.

    Attributes:
        model_dir: its Keras model folder (`model.keras`, `labels.json`, `catalogue.json` when recorded).
        description: how the report names it, e.g. `champion version 3 (models:/fashion-classifier/3)`.
        version: its registry version ('' for a folder given by hand).
        run_id: the MLflow run that trained it ('' when unknown).
    """

    model_dir: Path
    description: str
    version: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class ChampionScore:
    """The champion's evaluation on the challenger's test photos.

    Attributes:
        champion: which model it is.
        evaluation: its metrics, over the union of its and the catalogue's vocabularies.
        unknown: level -> {class: test products} of the test products' classes the champion does not know.
        unknown_products: test products whose category or sub-category the champion does not know.
        retired: level -> classes the champion knows that the catalogue no longer has.
        resized: `HxW -> HxW` when the test photos were resized to the champion's input size, else ''.
        seconds: the wall time of its predictions.
    """

    champion: Champion
    evaluation: Evaluation
    unknown: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_products: int = 0
    retired: dict[str, list[str]] = field(default_factory=dict)
    resized: str = ""
    seconds: float = 0.0

    @property
    def scalars(self) -> dict[str, float]:
        """The champion's flat metrics."""
        return self.evaluation.scalars

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for metrics.json (the metrics themselves are under `champion`)."""
        return {
            "model": self.champion.description,
            "version": self.champion.version,
            "run_id": self.champion.run_id,
            "unknown_classes": self.unknown,
            "unknown_test_products": self.unknown_products,
            "retired_classes": self.retired,
            "photos_resized": self.resized or None,
            "predict_seconds": round(self.seconds, 3),
        }


def union_schema(schema: LabelSchema, champion: LabelSchema) -> LabelSchema:
    """The catalogue's vocabularies followed by the labels only the champion knows; both trees' pairs."""
    extra = {
        vocab: [label for label in getattr(champion, vocab) if label not in set(getattr(schema, vocab))]
        for vocab in VOCABULARIES.values()
    }
    columns = [*schema.attribute_columns, *(c for c in champion.attribute_columns if c not in schema.attribute_columns)]
    tree: dict[str, set[str]] = {}
    for source in (schema.tree, champion.tree):
        for cat, subs in source.items():
            tree.setdefault(cat, set()).update(subs)
    return LabelSchema(
        category_column=schema.category_column,
        subcategory_column=schema.subcategory_column,
        attribute_columns=tuple(columns),
        categories=[*schema.categories, *extra["categories"]],
        subcategories=[*schema.subcategories, *extra["subcategories"]],
        attributes=[*schema.attributes, *extra["attributes"]],
        tree={c: sorted(s) for c, s in sorted(tree.items())},
    )


def align_predictions(
    predictions: Mapping[str, np.ndarray], champion_schema: LabelSchema, schema: LabelSchema
) -> tuple[dict[str, np.ndarray], LabelSchema]:
    """The champion's predictions (its vocabulary) and the test truth (the catalogue's) in the union vocabulary.

    Returns:
        (predictions in the union vocabulary, the union schema).
    """
    union = union_schema(schema, champion_schema)
    n = len(predictions["ids"])
    out: dict[str, np.ndarray] = {
        "ids": np.asarray(predictions["ids"]),
        "true_category": np.asarray(predictions["true_category"]),
        "true_subcategory": np.asarray(predictions["true_subcategory"]),
    }
    for level, vocab in VOCABULARIES.items():
        target = getattr(union, vocab)
        index = {label: i for i, label in enumerate(target)}
        probs = np.zeros((n, len(target)), dtype=np.float32)
        columns = [index[label] for label in getattr(champion_schema, vocab)]
        probs[:, columns] = np.asarray(predictions[level], dtype=np.float32)
        out[level] = probs
    true_attr = np.zeros((n, len(union.attributes)), dtype=np.int64)
    true_attr[:, : len(schema.attributes)] = np.asarray(predictions["true_attributes"])
    out["true_attributes"] = true_attr
    return out, union


class _AtInputSize:
    """A model fed photos resized to its own input size (the champion trained on photos stored at another size)."""

    def __init__(self, model: Any, size: tuple[int, int]) -> None:
        self.model = model
        self.size = size

    def __call__(self, images: Any, training: bool = False) -> Any:
        import tensorflow as tf

        resized = tf.image.resize(images, self.size, antialias=True)
        return self.model(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), training=training)


def _unknown(predictions: Mapping[str, np.ndarray], schema: LabelSchema, champion: LabelSchema) -> tuple[dict, int]:
    unknown: dict[str, dict[str, int]] = {}
    missing = np.zeros(len(predictions["ids"]), dtype=bool)
    for level, vocab in (("category", "categories"), ("subcategory", "subcategories")):
        known = set(getattr(champion, vocab))
        names = np.asarray(getattr(schema, vocab), dtype=object)[np.asarray(predictions[f"true_{level}"])]
        rows = np.array([name not in known for name in names], dtype=bool)
        missing |= rows
        labels, counts = np.unique(names[rows].astype(str), return_counts=True)
        unknown[level] = {str(k): int(v) for k, v in zip(labels, counts, strict=True)}
    return unknown, int(missing.sum())


def score_champion(
    champion: Champion,
    data_dir: str | Path,
    schema: LabelSchema,
    config: Config,
    split: str = "test",
    batch_size: int = 256,
    ids: np.ndarray | None = None,
) -> ChampionScore:
    """Run the champion over the split the challenger is scored on and measure it in the union vocabulary.

    Args:
        champion: the champion's model folder.
        data_dir: the challenger's preprocess folder.
        schema: the catalogue's label schema (the shards' indices).
        config: the resolved config (`evaluate`: threshold and decoding).
        split: the split both are scored on.
        batch_size: photos per inference batch.
        ids: the challenger's product ids in order, to check both saw the same photos.

    Raises:
        StepError: the folder is not a model folder, or the champion saw other photos.
    """
    from components.train.model_folder import answering_model, load_model, predict_split

    champion_schema = layouts.read_labels(champion.model_dir)
    started = time.perf_counter()
    model = load_model(champion.model_dir)
    stored = layouts.read_stats(data_dir)
    here = (int(stored["image_height"]), int(stored["image_width"]))
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    resized = ""
    runner: Any = model
    if size != here:
        runner = _AtInputSize(model, size)
        resized = f"{here[0]}x{here[1]} -> {size[0]}x{size[1]}"
        log.info("the champion takes %dx%d photos: the test photos are resized for it (%s)", *size, resized)
    # Scored the way this run's challenger is (flip averaging or not), so the comparison is fair.
    raw = predict_split(answering_model(runner, config), data_dir, split, batch_size=batch_size)
    seconds = time.perf_counter() - started
    if ids is not None and not np.array_equal(np.asarray(raw["ids"]).astype(str), np.asarray(ids).astype(str)):
        raise StepError(f"{champion.description} was scored on other photos than the challenger")
    aligned, union = align_predictions(raw, champion_schema, schema)
    ev = config.evaluate
    evaluation = evaluate_predictions(aligned, union, ev.attribute_threshold, ev.hierarchical_decoding)
    unknown, unknown_products = _unknown(raw, schema, champion_schema)
    retired = {
        level: [label for label in getattr(champion_schema, vocab) if label not in set(getattr(schema, vocab))]
        for level, vocab in VOCABULARIES.items()
    }
    log.info(
        "scored %s on the same %d test photos in %.1fs (%d of them of classes it does not know)",
        champion.description,
        len(aligned["ids"]),
        seconds,
        unknown_products,
    )
    return ChampionScore(champion, evaluation, unknown, unknown_products, retired, resized, seconds)


def fetch_champion(config: Config, dst_dir: str | Path) -> Champion | dict[str, float] | None:
    """The registry's serving champion (`config.registry`), its model folder downloaded into `dst_dir`.

    Returns:
        The Champion; None when there is no registry (`registry.tracking_uri` empty) or no champion
        yet; the champion's recorded test metrics (a dict) when its run logged no model folder to
        score (a version registered by other means), so the gate can still compare, less fairly.

    Raises:
        StepError: the store fails.
    """
    from components.register import Registry
    from components.register.champion import fetch_model_folder, find_version, has_model_folder

    if not config.registry.tracking_uri:
        return None
    registry = Registry(config.registry.tracking_uri, config.registry.model_name)
    found = find_version(registry)
    if found is None:
        return None
    if not has_model_folder(registry, found):
        log.warning(
            "champion version %s logged no Keras model folder: it cannot sit the same test; the gate compares "
            "with the metrics it recorded on its own test split",
            found.version,
        )
        return registry.champion_metrics() or None
    folder = fetch_model_folder(registry, found, Path(dst_dir) / f"champion-{found.version}")
    return Champion(folder, f"champion version {found.version} ({found.uri})", found.version, found.run_id)
