"""The evaluate step end to end: a real Keras model over real TFRecord shards -> metrics, reports, gate.

A hand-built model answers each photo's colour with a fixed row of probabilities, so every metric
of the run is known in advance; a second test runs the trainer's real network on real demo photos.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from components.evaluate import evaluate_model, evaluate_predictions
from components.evaluate.outputs import select_samples
from core import layouts, records
from core.config import load_config
from core.errors import StepError
from core.labels import LabelSchema
from pipeline import cli
from tests.support.serving import tiny_schema

HEIGHT, WIDTH = 16, 12
# Categories: Bags, Bottomwear, Shoes, Topwear. Sub-categories: Backpacks, Casual Shoes, Handbags,
# Jeans, Shirts, Trousers, Tshirts. Attributes: baseColour Black/Blue/White, season Summer/Winter,
# usage Casual, gender Men/Women.
# (true category, true sub, true attributes, predicted category, predicted sub)
PRODUCTS = [
    ("Topwear", "Tshirts", [1, 3, 5, 6], "Topwear", "Tshirts"),
    ("Topwear", "Shirts", [2, 3, 6], "Topwear", "Tshirts"),  # sub-category wrong
    ("Bottomwear", "Jeans", [1, 4, 5, 7], "Bottomwear", "Jeans"),
    ("Bottomwear", "Trousers", [0, 4, 6], "Bottomwear", "Trousers"),
    ("Bags", "Handbags", [0, 3, 7], "Bags", "Handbags"),
    ("Bags", "Backpacks", [0, 5, 6], "Shoes", "Backpacks"),  # category wrong: a pair outside the tree
    ("Shoes", "Casual Shoes", [2, 3, 5, 7], "Shoes", "Casual Shoes"),
    ("Topwear", "Tshirts", [1, 4, 6], "Topwear", "Shirts"),  # sub-category wrong
]
# One solid colour per product; the model recognises it.
COLOURS = [
    (0, 0, 0),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
]


def _tables(schema: LabelSchema) -> dict[str, np.ndarray]:
    """The probabilities the model answers for each product."""
    cats = np.full((len(PRODUCTS), 4), 0.1 / 3)
    subs = np.full((len(PRODUCTS), 7), 0.1 / 6)
    attrs = np.full((len(PRODUCTS), 8), 0.1)
    for i, (_, _, true_attr, pc, ps) in enumerate(PRODUCTS):
        cats[i, schema.categories.index(pc)] = 0.9
        subs[i, schema.subcategories.index(ps)] = 0.9
        attrs[i, true_attr] = 0.9
    # Product 5: Shoes 0.55 vs Bags 0.45; joint decoding picks (Bags, Backpacks): the tree has no
    # (Shoes, Backpacks).
    cats[5] = [0.45, 0.0, 0.55, 0.0]
    attrs[0, 6] = 0.6  # a true attribute below the threshold
    attrs[3, 1] = 0.8  # a false one above it
    attrs[2, 3] = 0.95  # Summer above the true Winter: the season arg-max is wrong
    return {"category": cats, "subcategory": subs, "attributes": attrs}


def _colour_model(schema: LabelSchema):
    """image -> mean colour -> nearest product colour (one-hot) -> that product's probability rows."""
    import keras

    tables = _tables(schema)
    centres = np.array(COLOURS, dtype=np.float32) / 255.0
    sharp = 2000.0
    image = keras.Input((HEIGHT, WIDTH, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Nearest centre as a linear score: c.x - |c|^2 / 2.
    x = keras.layers.Dense(
        len(COLOURS),
        kernel_initializer=keras.initializers.Constant(sharp * centres.T),
        bias_initializer=keras.initializers.Constant(-sharp * (centres**2).sum(axis=1) / 2),
    )(x)
    which = keras.layers.Softmax()(x)
    outputs = {
        name: keras.layers.Dense(
            table.shape[1], use_bias=False, kernel_initializer=keras.initializers.Constant(table), name=name
        )(which)
        for name, table in tables.items()
    }
    return keras.Model(image, outputs)


def _png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), colour).save(buf, "PNG")
    return buf.getvalue()


def write_shards(
    data_dir: Path,
    schema: LabelSchema,
    items: list[tuple[str, bytes, int, int, list[int]]],
    size: tuple[int, int],
    image_format: str,
    manifest: Path | None = None,
) -> Path:
    """A preprocess output folder: test shards of `items` (id, photo, category, sub, attributes), stats, labels."""
    import tensorflow as tf

    data_dir.mkdir(parents=True, exist_ok=True)
    halves = [items[: len(items) // 2], items[len(items) // 2 :]]
    files = []
    for n, half in enumerate(halves):
        name = f"test-{n:05d}-of-00002.tfrecord"
        files.append(name)
        with tf.io.TFRecordWriter(str(data_dir / name)) as writer:
            for item_id, photo, cat, sub, attrs in half:
                multi_hot = [1 if j in attrs else 0 for j in range(len(schema.attributes))]
                writer.write(records.make_example(photo, image_format, item_id, cat, sub, multi_hot, size))
    stats = {
        "image_height": size[0],
        "image_width": size[1],
        "image_format": image_format,
        "compression": "none",
        "manifest": str(manifest) if manifest else None,
        "records": len(items),
        "splits": {
            "train": {"count": 0, "files": []},
            "validation": {"count": 0, "files": []},
            "test": {"count": len(items), "files": files},
        },
        "labels": schema.to_dict(),
    }
    (data_dir / layouts.STATS).write_text(json.dumps(stats))
    schema.save(data_dir / layouts.LABELS)
    return data_dir


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """Shards of the eight products and the colour model's folder."""
    root = tmp_path_factory.mktemp("colour")
    schema = tiny_schema()
    items = [
        (str(100 + i), _png(COLOURS[i]), schema.categories.index(c), schema.subcategories.index(s), attrs)
        for i, (c, s, attrs, _, _) in enumerate(PRODUCTS)
    ]
    manifest = root / "ingest" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image_uri", "split"])
        writer.writerows([[item_id, f"/catalogue/images/{item_id}.jpg", "test"] for item_id, *_ in items])
    data_dir = write_shards(root / "data", schema, items, (HEIGHT, WIDTH), "png", manifest)
    model_dir = root / "model"
    model_dir.mkdir()
    _colour_model(schema).save(model_dir / "model.keras")
    schema.save(model_dir / layouts.LABELS)
    return {"root": root, "data": data_dir, "model": model_dir, "schema": schema, "items": items}


@pytest.fixture(scope="module")
def evaluated(colour_run):
    """One evaluation of the colour model, no champion, the ci preset's permissive floors."""
    out = colour_run["root"] / "eval"
    result = evaluate_model(str(colour_run["model"]), str(colour_run["data"]), str(out), load_config("ci"))
    return result, out


def test_metrics_of_a_known_model_are_exactly_the_expected_ones(evaluated, colour_run):
    result, out = evaluated
    s = json.loads((out / "metrics.json").read_text())["scalars"]
    assert s == result.scalars
    assert s["num_test_examples"] == 8
    assert s["category_accuracy"] == pytest.approx(7 / 8)
    assert s["subcategory_accuracy"] == pytest.approx(6 / 8)
    assert s["hierarchy_consistency"] == pytest.approx(7 / 8)
    assert s["joint_category_accuracy"] == pytest.approx(1.0)
    assert s["joint_subcategory_accuracy"] == pytest.approx(6 / 8)
    assert s["joint_hierarchy_consistency"] == 1.0
    tables = _tables(colour_run["schema"])
    true_attr = np.zeros((8, 8), dtype=int)
    for i, (_, _, attrs, _, _) in enumerate(PRODUCTS):
        true_attr[i, attrs] = 1
    p, r, f, _ = skm.precision_recall_fscore_support(true_attr, tables["attributes"] > 0.75, average="micro")
    assert (s["attributes_op"], s["attributes_or"], s["attributes_of1"]) == pytest.approx((p, r, f))
    # Product 2's top 4 holds the false Summer and 3 of its 4 true labels; the others hit all k.
    assert s["attributes_precision_at_k"] == pytest.approx((7 + 3 / 4) / 8)
    assert s["attributes_season_accuracy"] == pytest.approx(6 / 7)  # product 5 has no season: not scored
    assert s["attributes_gender_accuracy"] == 1.0  # product 0's Men scores 0.6, below the threshold but the arg-max
    assert s["attributes_map"] == pytest.approx(
        skm.average_precision_score(true_attr, tables["attributes"], average="macro"), abs=1e-6
    )


def test_outputs_are_written_in_the_documented_layout(evaluated):
    result, out = evaluated
    expected = {
        "metrics.json", "gate.json", "predictions.jsonl", "classification_metrics.json", "report.html", "report.md",
        "confusion_category.png", "confusion_subcategory.png", "attribute_pr_curves.png", "samples.png",
        "config.yaml", "labels.json",
    }  # fmt: skip
    assert expected <= {p.name for p in out.iterdir()}
    from PIL import Image

    for name in ("confusion_category.png", "confusion_subcategory.png", "attribute_pr_curves.png", "samples.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 300
    metrics = json.loads((out / "metrics.json").read_text())
    tshirts = next(r for r in metrics["subcategory"]["per_class"] if r["name"] == "Tshirts")
    assert (tshirts["support"], tshirts["predicted"], tshirts["recall"]) == (2, 2, 0.5)
    assert metrics["hierarchy"]["top_inconsistent_pairs"] == [
        {"category": "Shoes", "subcategory": "Backpacks", "count": 1}
    ]
    assert metrics["decoding"] == "independent" and metrics["champion"] is None
    kfp = json.loads((out / "classification_metrics.json").read_text())
    assert kfp["labels"] == ["Bags", "Bottomwear", "Shoes", "Topwear"]
    assert kfp["matrix"][0] == [1, 0, 1, 0]  # one bag right, one predicted as shoes


def test_gate_without_champion_applies_the_floors_and_says_so(evaluated):
    result, out = evaluated
    gate = json.loads((out / "gate.json").read_text())
    assert gate["blessed"] is True and result.blessed
    assert gate["reason"].startswith("blessed: all 1 checks passed (no champion yet: floors only)")
    assert gate["checks"][0]["metric"] == "category_accuracy"


def test_predictions_jsonl_has_one_record_per_product_with_labels_scores_and_photo(evaluated, colour_run):
    _, out = evaluated
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [item[0] for item in colour_run["items"]]
    bag = rows[5]
    assert (bag["true_category"], bag["pred_category"], bag["joint_category"]) == ("Bags", "Shoes", "Bags")
    assert bag["pred_subcategory"] == "Backpacks" and bag["category_score"] == pytest.approx(0.55, abs=1e-4)
    assert bag["correct"] is False
    assert bag["image_uri"] == "/catalogue/images/105.jpg"  # from the ingest manifest
    assert rows[3]["pred_attributes"] == ["baseColour=Black", "baseColour=Blue", "season=Winter", "gender=Men"]
    assert rows[0]["attribute_scores"]["gender=Men"] == pytest.approx(0.6, abs=1e-4)
    assert rows[0]["correct"] is True

    from components.deploy.smoke import load_expected

    expected = load_expected(out / "predictions.jsonl", limit=3)
    assert [e["category"] for e in expected] == ["Topwear", "Topwear", "Bottomwear"]


def test_report_is_a_self_contained_page_and_a_markdown_summary(evaluated):
    _, out = evaluated
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == 4
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "Gate: BLESSED" in page and "87.5%" in page  # category accuracy
    assert "<summary>All sub-categories (7), by test products</summary>" in page
    md = (out / "report.md").read_text()
    assert md.startswith("# Model evaluation on the test split")
    assert "| accuracy | 87.5% | 75.0% |" in md
    assert "| Tshirts | Shirts | 1 |" in md  # a most frequent mistake
    assert "![Test photos, mistakes first" in md and "(samples.png)" in md
    assert "| attributes_map |" in md  # the metric names are explained


def test_sample_grid_puts_mistakes_first(evaluated, colour_run):
    schema = colour_run["schema"]
    tables = _tables(schema)
    items = colour_run["items"]
    preds = {
        "ids": np.array([i[0] for i in items]),
        **tables,
        "true_category": np.array([i[2] for i in items]),
        "true_subcategory": np.array([i[3] for i in items]),
        "true_attributes": np.array([[int(j in i[4]) for j in range(8)] for i in items]),
    }
    rows = select_samples(evaluate_predictions(preds, schema), size=5)
    assert sorted(rows[:3]) == [1, 5, 7]
    assert len(rows) == 5 and set(rows[3:]) <= {0, 2, 3, 4, 6}
    joint = select_samples(evaluate_predictions(preds, schema, hierarchical_decoding=True), size=8)
    assert sorted(joint[:2]) == [1, 7]  # joint decoding fixes product 5


def test_cli_compares_with_a_champion_and_exits_3_when_the_gate_fails(colour_run, tmp_path, capsys):
    champion = tmp_path / "champion.json"
    champion.write_text(json.dumps({"scalars": {"category_accuracy": 0.95, "subcategory_accuracy": 0.7}}))
    args = ["evaluate", "--model", str(colour_run["model"]), "--data", str(colour_run["data"]), "--preset", "ci"]
    gate = [
        "--set",
        "evaluate.floors={category_accuracy: 0.5}",
        "--set",
        "evaluate.tolerances={category_accuracy: 0.05}",
    ]
    code = cli.main([*args, "--out", str(tmp_path / "a"), "--champion-metrics", str(champion), *gate])
    printed = capsys.readouterr().out
    assert code == 3  # the gate's own exit code: evaluated fine, not blessed
    assert "category accuracy 0.8750" in printed
    assert "category_accuracy 0.8750 worse than champion 0.9500 (-0.0750, tolerance 0.0500" in printed
    decision = json.loads((tmp_path / "a" / "gate.json").read_text())
    assert decision["blessed"] is False

    # Joint decoding gets every category right: better than the champion.
    code = cli.main(
        [*args, "--out", str(tmp_path / "b"), "--champion-metrics", str(champion), *gate, "--hierarchical-decoding"]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["decoding"] == "joint" and metrics["scalars"]["category_accuracy"] == pytest.approx(1.0)
    assert metrics["champion"] == {"category_accuracy": 0.95, "subcategory_accuracy": 0.7}


def test_cli_reports_an_unreadable_champion_file(colour_run, tmp_path, capsys):
    bad = tmp_path / "champion.json"
    bad.write_text("not json")
    code = cli.main(
        ["evaluate", "--model", str(colour_run["model"]), "--data", str(colour_run["data"]), "--out", str(tmp_path),
         "--champion-metrics", str(bad)]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"--champion-metrics {bad} is not JSON" in err


def test_a_model_of_another_label_vocabulary_is_refused(colour_run, tmp_path):
    other = tiny_schema()
    other.subcategories = [*other.subcategories[:-1], "Tops"]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    other.save(model_dir / layouts.LABELS)
    with pytest.raises(StepError, match="different subcategories.*model only: \\['Tops'\\]"):
        evaluate_model(str(model_dir), str(colour_run["data"]), str(tmp_path / "out"), load_config("ci"))


def _demo_items(demo_dir: Path, schema: LabelSchema, limit: int = 16) -> list[tuple[str, bytes, int, int, list[int]]]:
    from PIL import Image

    items = []
    with open(demo_dir / "styles.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["subCategory"] not in schema.categories or row["articleType"] not in schema.subcategories:
                continue
            photo = demo_dir / "images" / f"{row['id']}.jpg"
            if not photo.is_file():
                continue
            with Image.open(photo) as image:
                buf = io.BytesIO()
                image.convert("RGB").resize((60, 80)).save(buf, "JPEG", quality=95)
            cat, sub, attrs = schema.encode(row)
            items.append((row["id"], buf.getvalue(), cat, sub, attrs))
            if len(items) == limit:
                break
    return items


def test_the_trainers_network_on_real_photos_without_a_manifest(demo_dir, tmp_path):
    from tests.support.serving import make_model_dir

    schema = tiny_schema()
    items = _demo_items(demo_dir, schema)
    assert len(items) == 16
    data_dir = write_shards(tmp_path / "data", schema, items, (80, 60), "jpeg", manifest=None)
    model_dir = make_model_dir(tmp_path / "model")
    out = tmp_path / "eval"
    result = evaluate_model(str(model_dir), str(data_dir), str(out), load_config("ci"))
    assert result.num_examples == 16
    assert 0.0 <= result.scalars["subcategory_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # Without the ingest manifest, the evaluated photos themselves are the reference photos.
    first = Path(rows[0]["image_uri"])
    assert first.parent == out / "photos" and first.read_bytes() == items[0][1]
    assert all(Path(r["image_uri"]).is_file() for r in rows)


class _Artifact:
    """Stands in for a kfp output artifact: path, metadata, the logging calls of Metrics/ClassificationMetrics."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.metadata: dict = {}
        self.logged: dict = {}
        self.confusion: tuple | None = None

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value

    def log_confusion_matrix(self, labels: list[str], matrix: list[list[int]]) -> None:
        self.confusion = (labels, matrix)


def test_the_pipeline_step_turns_the_folder_into_kfp_artifacts(evaluated, tmp_path):
    from pipeline.metadata import record_evaluation

    result, out = evaluated
    evaluation, metrics, confusion, page, summary = (_Artifact(tmp_path / n) for n in ("e", "m", "c", "r.html", "s.md"))
    assert record_evaluation(result, evaluation, metrics, confusion, page, summary) is True
    assert evaluation.metadata["reason"] == result.reason
    assert metrics.logged == result.scalars
    assert confusion.confusion == (
        ["Bags", "Bottomwear", "Shoes", "Topwear"],
        [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 3]],
    )
    assert Path(page.path).read_text() == (out / "report.html").read_text()
    assert Path(summary.path).read_text().startswith("# Model evaluation")
    assert evaluation.metadata["category_accuracy"] == pytest.approx(7 / 8)
