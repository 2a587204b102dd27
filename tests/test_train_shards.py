"""Tiny preprocess outputs made of real demo photos, and tests of the training input pipeline.

`write_shards` writes what the Beam step writes (shards through `make_example`, stats.json in the
documented shape, labels.json), so the trainer's tests need no Beam run.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import layouts, records
from core.config import TrainConfig
from core.labels import SPLITS, assign_split, build_schema

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
ARTICLE_TYPES = ("Tshirts", "Casual Shoes", "Watches", "Handbags")
HEIGHT, WIDTH = 80, 60


def _encode(path: Path) -> tuple[bytes, tuple[int, int]]:
    img = Image.open(path).convert("RGB")
    original = (img.height, img.width)
    canvas = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    img.thumbnail((WIDTH, HEIGHT))
    canvas.paste(img, ((WIDTH - img.width) // 2, (HEIGHT - img.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), original


def write_shards(out_dir: Path, per_type: int = 40, article_types: tuple[str, ...] = ARTICLE_TYPES) -> Path:
    """A preprocess output folder of real demo photos: 2 shards per split, stats.json, labels.json."""
    import tensorflow as tf

    with open(DEMO_DIR / "styles.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (DEMO_DIR / "images" / f"{r['id']}.jpg").is_file()]
    chosen = []
    for kind in article_types:
        chosen += [r for r in rows if r["articleType"] == kind][:per_type]
    schema = build_schema(chosen, "subCategory", "articleType", ("baseColour", "season", "usage", "gender"), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    labels: dict[str, list[tuple[int, int, np.ndarray]]] = {s: [] for s in SPLITS}
    for r in chosen:
        split = assign_split(r["id"], r["articleType"], 0.6, 0.2, "test-salt")
        cat, sub, attrs = schema.encode(r)
        multi = np.zeros(len(schema.attributes), dtype=np.int64)
        multi[attrs] = 1
        image, original = _encode(DEMO_DIR / "images" / f"{r['id']}.jpg")
        by_split[split].append(records.make_example(image, "jpeg", r["id"], cat, sub, multi.tolist(), original))
        labels[split].append((cat, sub, multi))
    files = {}
    for split, examples in by_split.items():
        names = [f"{split}-{i:05d}-of-00002.tfrecord" for i in range(2)]
        for i, name in enumerate(names):
            with tf.io.TFRecordWriter(str(out_dir / name)) as writer:
                for ex in examples[i::2]:
                    writer.write(ex)
        files[split] = names
    train = labels["train"]
    n = len(train)
    stats = {
        "image_height": HEIGHT,
        "image_width": WIDTH,
        "image_format": "jpeg",
        "compression": "none",
        "splits": {s: {"count": len(by_split[s]), "files": files[s]} for s in SPLITS},
        "class_counts": {},
        "class_weights": {},
        "labels": schema.to_dict(),
    }
    for level, index in (("category", 0), ("subcategory", 1)):
        k = schema.sizes[level]
        counts = Counter(t[index] for t in train)
        per_class = [counts.get(c, 0) for c in range(k)]
        stats["class_counts"][level] = {
            s: [sum(1 for t in labels[s] if t[index] == c) for c in range(k)] for s in SPLITS
        }
        stats["class_weights"][level] = [n / (k * max(c, 1)) for c in per_class]
    pos = np.sum([t[2] for t in train], axis=0).astype(float)
    stats["class_weights"]["attributes"] = {
        "positive": (n / (2 * np.maximum(pos, 1))).tolist(),
        "negative": (n / (2 * np.maximum(n - pos, 1))).tolist(),
    }
    (out_dir / layouts.STATS).write_text(json.dumps(stats, indent=1))
    schema.save(out_dir / layouts.LABELS)
    return out_dir


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def _batches(ds) -> list:
    return list(ds.as_numpy_iterator())


def test_training_batches_are_full_uint8_images_with_labels(shards):
    from components.train.data import make_dataset

    batches = _batches(make_dataset(shards, "train", 8, training=True, train_cfg=TrainConfig(seed=1)))
    assert batches, "no training batches"
    for images, labels in batches:
        assert images.shape == (8, HEIGHT, WIDTH, 3) and images.dtype == np.uint8
        assert labels["category"].shape == (8,) and labels["subcategory"].shape == (8,)
        assert labels["attributes"].dtype == np.float32 and set(np.unique(labels["attributes"])) <= {0.0, 1.0}


def test_evaluation_split_is_neither_shuffled_nor_augmented(shards):
    from components.train.data import make_dataset
    from core.records import read_split

    raw = [ex["image"] for ex in read_split(shards, "validation").as_numpy_iterator()]
    batches = _batches(make_dataset(shards, "validation", 4, training=False))
    images = np.concatenate([b[0] for b in batches])
    assert len(images) == len(raw), "evaluation must keep the last partial batch"
    np.testing.assert_array_equal(images, np.stack(raw))


def test_augmentation_changes_photos_but_keeps_labels_and_is_reproducible(shards):
    from components.train.data import make_dataset

    plain = TrainConfig(seed=3, augment=False, shuffle_buffer=1)
    augmented = TrainConfig(seed=3, augment=True, shuffle_buffer=1)
    a = _batches(make_dataset(shards, "train", 8, True, plain))
    b = _batches(make_dataset(shards, "train", 8, True, augmented))
    c = _batches(make_dataset(shards, "train", 8, True, augmented))
    for (xa, ya), (xb, yb), (xc, _) in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(ya["subcategory"], yb["subcategory"])
        assert not np.array_equal(xa, xb)
        np.testing.assert_array_equal(xb, xc)
        # Mild augmentation: the photo stays recognisably the same photo.
        assert np.mean(np.abs(xa.astype(float) - xb.astype(float))) < 60


def test_augmented_background_stays_white(shards):
    """Shifts and rotations fill with white, like the catalogue's own background, not black."""
    import tensorflow as tf

    from components.train.data import augment_batch

    white = tf.fill([4, HEIGHT, WIDTH, 3], tf.constant(255, tf.uint8))
    out = augment_batch(white, tf.constant([1, 2], tf.int64)).numpy()
    assert out.min() >= 200


def test_without_colour_jitter_the_augmentation_keeps_every_kept_pixel_s_colour(shards):
    """`train.colour_jitter: false`: geometry only; the same geometry as with the jitter on."""
    import tensorflow as tf

    from components.train.data import augment_batch

    navy = np.zeros((8, HEIGHT, WIDTH, 3), np.uint8)
    navy[..., 2] = 110
    seed = tf.constant([3, 4], tf.int64)
    plain = augment_batch(tf.constant(navy), seed, colour_jitter=False).numpy()
    jittered = augment_batch(tf.constant(navy), seed).numpy()
    centre = (slice(None), slice(HEIGHT // 3, 2 * HEIGHT // 3), slice(WIDTH // 3, 2 * WIDTH // 3))
    np.testing.assert_array_equal(plain[centre], navy[centre])
    assert np.abs(jittered[centre].astype(int) - navy[centre]).max() > 5
    # The same flips and transforms: the white fill lands on the same pixels (bar a few blended edges).
    filled, filled_jittered = plain.min(axis=-1) > 200, jittered.min(axis=-1) > 200
    assert filled.any() and np.mean(filled != filled_jittered) < 0.005


def test_training_batches_mix_classes_although_shards_are_written_class_by_class(shards):
    from components.train.data import make_dataset
    from core.records import read_split

    in_file_order = [int(ex["subcategory"]) for ex in read_split(shards, "train", decode=False).as_numpy_iterator()]
    assert len(set(in_file_order[:8])) == 1, "the fixture should write each class in one run"
    images, labels = next(iter(make_dataset(shards, "train", 8, True, TrainConfig(seed=0, shuffle_buffer=10_000))))
    assert len(set(labels["subcategory"].numpy().tolist())) > 1
