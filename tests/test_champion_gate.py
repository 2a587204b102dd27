"""The fair gate: the champion's model sits the challenger's exam, on the same test photos, in the same step.

Hand-built Keras models answer each photo's solid colour with a fixed row of probabilities, so
both models' metrics are known in advance. The champion was trained on an older catalogue: it does
not know `Shirts`, still knows `Sandals`, orders its classes differently and takes smaller photos.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from components.evaluate import evaluate_model
from components.evaluate.champion import Champion, align_predictions, union_schema
from components.evaluate.step import comparison_metrics, log_comparison
from core import layouts, records
from core.catalogue import CatalogueSnapshot
from core.config import load_config
from tests.support.serving import tiny_schema

SIZE = (16, 12)
CHAMPION_SIZE = (8, 6)
COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255,) * 3]
# (true category, true sub-category) of the eight test products.
TRUTH = [
    ("Topwear", "Tshirts"),
    ("Topwear", "Shirts"),  # a class the champion does not know
    ("Bottomwear", "Jeans"),
    ("Bottomwear", "Trousers"),
    ("Bags", "Handbags"),
    ("Bags", "Backpacks"),
    ("Shoes", "Casual Shoes"),
    ("Topwear", "Tshirts"),
]
# What each model answers per product (category, sub-category).
CHALLENGER = [*TRUTH[:3], ("Bottomwear", "Jeans"), *TRUTH[4:]]  # 7 of 8 sub-categories right
WORSE = [*TRUTH[:2], ("Bags", "Handbags"), ("Bags", "Handbags"), ("Shoes", "Casual Shoes"), *TRUTH[5:]]  # 5 of 8
CHAMPION = [TRUTH[0], ("Topwear", "Tshirts"), *TRUTH[2:6], ("Shoes", "Sandals"), TRUTH[7]]  # 6 of 8: Shirts, Sandals


def champion_schema():
    """The schema of the champion's older catalogue: no Shirts, Sandals still there, other orders."""
    schema = tiny_schema()
    return dataclasses.replace(
        schema,
        categories=["Topwear", "Shoes", "Bottomwear", "Bags"],
        subcategories=["Tshirts", "Sandals", "Jeans", "Trousers", "Handbags", "Backpacks", "Casual Shoes"],
        attributes=list(reversed(schema.attributes)),
        tree={**schema.tree, "Shoes": ["Casual Shoes", "Sandals"], "Topwear": ["Tshirts"]},
    )


def answer_model(schema, answers, size):
    """image -> nearest product colour -> one-hot rows of that product's answer (in `schema`'s order)."""
    import keras

    tables = {
        "category": np.full((8, len(schema.categories)), 0.02),
        "subcategory": np.full((8, len(schema.subcategories)), 0.02),
        "attributes": np.full((8, len(schema.attributes)), 0.1),
    }
    for i, (cat, sub) in enumerate(answers):
        tables["category"][i, schema.categories.index(cat)] = 0.9
        tables["subcategory"][i, schema.subcategories.index(sub)] = 0.9
    centres = np.array(COLOURS, dtype=np.float32) / 255.0
    image = keras.Input((*size, 3), dtype="uint8", name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0 / 255.0)(image))
    x = keras.layers.Dense(
        8,
        kernel_initializer=keras.initializers.Constant(2000.0 * centres.T),
        bias_initializer=keras.initializers.Constant(-1000.0 * (centres**2).sum(axis=1)),
    )(x)
    which = keras.layers.Softmax()(x)
    outputs = {
        name: keras.layers.Dense(
            t.shape[1], use_bias=False, kernel_initializer=keras.initializers.Constant(t), name=name
        )(which)
        for name, t in tables.items()
    }
    return keras.Model(image, outputs)


def _png(colour, size) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), colour).save(buf, "PNG")
    return buf.getvalue()


def model_folder(path: Path, schema, answers, size, catalogue: CatalogueSnapshot) -> Path:
    path.mkdir(parents=True)
    answer_model(schema, answers, size).save(path / layouts.MODEL)
    schema.save(path / layouts.LABELS)
    catalogue.save(path / layouts.CATALOGUE)
    return path


def snapshot(products: dict[str, tuple[str, str]]) -> CatalogueSnapshot:
    rows = [{"id": item_id, "category": c, "subcategory": s} for item_id, (c, s) in products.items()]
    return CatalogueSnapshot.from_rows(rows, ())


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """Test shards of the eight products, the challenger, a worse challenger and the champion."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("exam")
    schema = tiny_schema()
    data = root / "data"
    data.mkdir()
    with tf.io.TFRecordWriter(str(data / "test-00000-of-00001.tfrecord")) as writer:
        for i, (cat, sub) in enumerate(TRUTH):
            example = records.make_example(
                _png(COLOURS[i], SIZE), "png", str(100 + i), schema.categories.index(cat),
                schema.subcategories.index(sub), [0] * len(schema.attributes), SIZE,
            )  # fmt: skip
            writer.write(example)
    stats = {
        "image_height": SIZE[0], "image_width": SIZE[1], "image_format": "png", "compression": "none",
        "manifest": None, "records": 8,
        "splits": {"test": {"count": 8, "files": ["test-00000-of-00001.tfrecord"]}}, "labels": schema.to_dict(),
    }  # fmt: skip
    (data / layouts.STATS).write_text(json.dumps(stats))
    schema.save(data / layouts.LABELS)
    now = snapshot({str(100 + i): t for i, t in enumerate(TRUTH)})
    # The champion learnt from a catalogue without the Shirts product and with a Sandals one.
    then = snapshot({**{str(100 + i): t for i, t in enumerate(TRUTH) if t[1] != "Shirts"}, "200": ("Shoes", "Sandals")})
    return {
        "data": data,
        "challenger": model_folder(root / "challenger", schema, CHALLENGER, SIZE, now),
        "worse": model_folder(root / "worse", schema, WORSE, SIZE, now),
        "champion": Champion(
            model_folder(root / "champion", champion_schema(), CHAMPION, CHAMPION_SIZE, then),
            "champion version 7 (models:/fashion-classifier/7)",
            "7",
            "run-7",
        ),
        "root": root,
    }


def gate_config(tolerance: float):
    return load_config(
        "ci",
        overrides={
            "evaluate": {"floors": {"subcategory_accuracy": 0.5}, "tolerances": {"subcategory_accuracy": tolerance}}
        },
    )


def test_the_champions_answers_are_mapped_by_label_into_a_union_of_both_vocabularies():
    schema, old = tiny_schema(), champion_schema()
    union = union_schema(schema, old)
    assert union.subcategories == [*schema.subcategories, "Sandals"]
    assert union.categories == schema.categories and union.attributes == schema.attributes
    probs = np.eye(len(old.subcategories), dtype=np.float32)
    predictions = {
        "ids": np.array(["a"] * len(probs)),
        "category": np.full((len(probs), 4), 0.25, dtype=np.float32),
        "subcategory": probs,
        "attributes": np.zeros((len(probs), len(old.attributes)), dtype=np.float32),
        "true_category": np.zeros(len(probs), dtype=np.int64),
        "true_subcategory": np.zeros(len(probs), dtype=np.int64),
        "true_attributes": np.zeros((len(probs), len(schema.attributes)), dtype=np.int64),
    }
    aligned, _ = align_predictions(predictions, old, union_schema(schema, old))
    for row, label in enumerate(old.subcategories):
        assert union.subcategories[int(aligned["subcategory"][row].argmax())] == label
    assert aligned["subcategory"][:, union.subcategories.index("Shirts")].max() == 0  # never its answer


def test_the_champion_is_scored_on_the_same_photos_and_the_gate_compares_with_that(exam, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_model(
        str(exam["challenger"]), str(exam["data"]), str(out), gate_config(0.0), champion=exam["champion"]
    )
    metrics = json.loads((out / layouts.METRICS).read_text())
    assert metrics["scalars"]["subcategory_accuracy"] == pytest.approx(7 / 8)
    # Shirts (unknown to it) and the retired Sandals answer are the champion's two errors.
    assert metrics["champion"]["subcategory_accuracy"] == pytest.approx(6 / 8)
    assert metrics["champion"]["num_test_examples"] == 8
    model = metrics["champion_model"]
    assert model["unknown_classes"]["subcategory"] == {"Shirts": 1} and model["unknown_test_products"] == 1
    assert model["retired_classes"]["subcategory"] == ["Sandals"]
    assert model["photos_resized"] == "16x12 -> 8x6"
    assert result.blessed
    checks = json.loads((out / layouts.GATE).read_text())["checks"]
    (check,) = [c for c in checks if c["kind"] == "champion" and c["metric"] == "subcategory_accuracy"]
    assert check["reference"] == pytest.approx(6 / 8)
    assert "against champion version 7 (models:/fashion-classifier/7) on the same 8 test photos" in result.reason
    assert result.champion == {
        "model": "champion version 7 (models:/fashion-classifier/7)",
        "version": "7",
        "scalars": {"category_accuracy": 1.0, "subcategory_accuracy": pytest.approx(6 / 8)},  # the gated ones
    }
    report = (out / layouts.REPORT_MD).read_text()
    assert "## Challenger vs champion on the same test photos" in report
    assert "| sub-category accuracy (gated) | 87.5% | 75.0% | +12.5 pts |" in report
    assert "1 test photo is of a class the champion does not know (sub-categories: Shirts (1)" in report
    assert "Sandals" in report and "resized for the champion's input (16x12 -> 8x6)" in report
    assert "Challenger vs champion" in (out / layouts.REPORT_HTML).read_text()


def test_a_challenger_worse_than_the_champion_on_the_same_photos_is_not_blessed(exam, tmp_path):
    # 5 of 8 against the champion's 6 of 8: beyond a 0.1 tolerance. The champion's own recorded
    # metrics (from another test split) play no part.
    out = tmp_path / "eval"
    result = evaluate_model(
        str(exam["worse"]), str(exam["data"]), str(out), gate_config(0.1), champion=exam["champion"]
    )
    assert not result.blessed
    assert "subcategory_accuracy 0.6250 worse than champion 0.7500 (-0.1250, tolerance 0.1000" in result.reason
    # Within the tolerance it would pass: the tolerances apply to the same-photo comparison.
    assert evaluate_model(
        str(exam["worse"]), str(exam["data"]), str(tmp_path / "lenient"), gate_config(0.2), champion=exam["champion"]
    ).blessed


def test_the_report_and_metrics_show_the_catalogue_drift_since_the_champions_training_data(exam, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_model(
        str(exam["challenger"]), str(exam["data"]), str(out), gate_config(0.0), champion=exam["champion"]
    )
    drift = json.loads((out / layouts.METRICS).read_text())["drift"]
    assert (drift["new"], drift["vanished"], drift["relabelled"]) == (1, 1, 0)
    sub = next(level for level in drift["levels"] if level["level"] == "subcategory")
    assert sub["appeared"] == {"Shirts": 1} and sub["disappeared"] == {"Sandals": 1}
    assert result.drift == drift["summary"]
    report = (out / layouts.REPORT_MD).read_text()
    assert "## Catalogue drift since the champion's training data" in report
    assert "| sub-category | 7 -> 7 | Shirts (1) | Sandals (1) | 0 |" in report


def test_the_comparison_goes_to_the_models_mlflow_run(exam, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "eval"
    evaluate_model(str(exam["challenger"]), str(exam["data"]), str(out), gate_config(0.0), champion=exam["champion"])
    metrics = json.loads((out / layouts.METRICS).read_text())
    values = comparison_metrics(metrics)
    assert values["champion.subcategory_accuracy"] == pytest.approx(6 / 8)
    assert values["drift.new_products"] == 1 and values["drift.subcategory.appeared_classes"] == 1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x", artifact_location=str(tmp_path / "artifacts")))
    log_comparison(uri, run.info.run_id, out)
    logged = client.get_run(run.info.run_id).data
    assert logged.metrics["champion.subcategory_accuracy"] == pytest.approx(6 / 8)
    assert logged.metrics["drift.vanished_products"] == 1
    assert logged.tags["champion_compared"] == "champion version 7 (models:/fashion-classifier/7)"
    assert logged.tags["catalogue_drift"] == metrics["drift"]["summary"]


def test_an_unchanged_catalogue_is_not_evaluated_and_not_blessed(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / layouts.UNCHANGED).write_text(
        json.dumps({"unchanged": True, "champion": "models:/m/2", "message": "unchanged since champion version 2"})
    )
    result = evaluate_model(str(model), str(tmp_path / "no-data"), str(tmp_path / "eval"), load_config("ci"))
    assert not result.blessed and result.unchanged and result.scalars == {}
    assert json.loads((tmp_path / "eval" / layouts.GATE).read_text())["unchanged"] is True
    assert "NOT EVALUATED: unchanged since champion version 2" in (tmp_path / "eval" / layouts.REPORT_MD).read_text()
