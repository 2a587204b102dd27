"""Unit tests of the preprocess step's pure parts: image ops, TFRecord framing, sharding, class weights."""

from __future__ import annotations

import fnmatch
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from components.preprocess import stats, tfrecord, transforms
from core import images, layouts, records
from core.labels import LabelSchema

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_jpeg(demo_dir) -> bytes:
    return sorted((demo_dir / "images").glob("*.jpg"))[0].read_bytes()


def _png(size=(30, 20), mode="RGB", color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_real_photo_gives_rgb_at_its_size(demo_jpeg):
    img = images.decode_image(demo_jpeg)
    assert img.mode == "RGB"
    assert img.size == (60, 80)


def test_decode_converts_grayscale_to_rgb():
    img = images.decode_image(_png(mode="L"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image", "cannot decode"),
        ("truncated", "cannot decode"),
    ],
)
def test_decode_rejects_bad_bytes_with_a_reason(data, message, demo_jpeg):
    if data == "truncated":
        data = demo_jpeg[: len(demo_jpeg) // 2]
    with pytest.raises(images.ImageError, match=message):
        images.decode_image(data)


def test_pad_keeps_aspect_and_centres_on_background():
    red = Image.new("RGB", (60, 80), (255, 0, 0))
    out = images.resize_image(red, 100, 100, "pad", (255, 255, 255))
    assert out.size == (100, 100)
    # 60x80 scaled by 1.25 -> 75x100, centred: 12 columns of padding on the left, 13 on the right.
    assert out.getpixel((5, 50)) == (255, 255, 255)
    assert out.getpixel((95, 50)) == (255, 255, 255)
    assert out.getpixel((50, 50)) == (255, 0, 0)
    assert out.getpixel((13, 0)) == (255, 0, 0)


def test_stretch_fills_the_whole_frame():
    red = Image.new("RGB", (60, 80), (255, 0, 0))
    out = images.resize_image(red, 100, 100, "stretch")
    assert out.size == (100, 100)
    assert out.getpixel((0, 50)) == (255, 0, 0)


def test_resize_to_same_size_is_identity():
    img = Image.new("RGB", (60, 80), (1, 2, 3))
    assert images.resize_image(img, 80, 60) is img


def test_resize_rejects_unknown_mode():
    with pytest.raises(images.ImageError, match="unknown resize mode"):
        images.resize_image(Image.new("RGB", (4, 4)), 8, 8, "crop")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_encode_round_trips(fmt):
    img = Image.new("RGB", (60, 80), (200, 100, 50))
    data = images.encode_image(img, fmt, 95)
    back = Image.open(io.BytesIO(data))
    assert back.format == fmt.upper() and back.size == (60, 80)


def test_encode_rejects_unknown_format():
    with pytest.raises(images.ImageError, match="unknown image format"):
        images.encode_image(Image.new("RGB", (4, 4)), "gif")


def test_tfrecord_framing_is_readable_by_tensorflow(tmp_path):
    import tensorflow as tf

    payloads = [b"", b"one", bytes(range(256)) * 40]
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as fh:
        tfrecord.write_records(fh, payloads)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == payloads


@pytest.mark.parametrize(
    "fields",
    [
        (b"img", "jpeg", "7", 1, 2, [0, 1, 0], (80, 60)),
        (bytes(range(256)) * 30, "png", "123456", 0, 141, [1] * 31, (2400, 1800)),
        (b"", "jpeg", "", 2**40, 0, [], (0, 0)),
    ],
)
def test_make_example_writes_tensorflows_bytes_without_tensorflow(fields):
    import tensorflow as tf

    image, image_format, item_id, category, subcategory, attributes, (height, width) = fields
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                records.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                records.IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_format.encode()])),
                records.ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode()])),
                records.CATEGORY: tf.train.Feature(int64_list=tf.train.Int64List(value=[category])),
                records.SUBCATEGORY: tf.train.Feature(int64_list=tf.train.Int64List(value=[subcategory])),
                records.ATTRIBUTES: tf.train.Feature(int64_list=tf.train.Int64List(value=attributes)),
                records.ORIGINAL_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
                records.ORIGINAL_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
            }
        )
    ).SerializeToString(deterministic=True)
    assert records.make_example(*fields) == expected


def test_make_example_imports_no_tensorflow():
    code = (
        "import sys; from core import records; "
        "records.make_example(b'x', 'jpeg', '1', 0, 0, [1], (1, 1)); "
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if m.startswith('tensorflow'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)


def test_example_descriptor_set_is_current():
    from core import protos

    shipped = protos.EXAMPLE_DESCRIPTOR_SET.read_bytes()
    assert shipped == protos.build_example_descriptor_set().SerializeToString(deterministic=True), (
        "core/tf_example.binpb is stale: run `make protos`"
    )


def test_shard_names_match_the_readers_glob():
    assert transforms.shard_name("train", 3, 8, "none") == "train-00003-of-00008.tfrecord"
    assert fnmatch.fnmatch(transforms.shard_name("train", 3, 8, "none"), layouts.shard_pattern("train", "none"))
    assert fnmatch.fnmatch(transforms.shard_name("test", 0, 1, "gzip"), layouts.shard_pattern("test", "gzip"))


def test_shard_count_auto_and_configured():
    assert transforms.shard_count(0, 4) == 0
    assert transforms.shard_count(10, 4) == 4
    assert transforms.shard_count(10, 0) == 1
    assert transforms.shard_count(transforms.RECORDS_PER_SHARD * 2 + 1, 0) == 3


def test_shard_index_is_stable_and_spread():
    indices = [transforms.shard_index(str(i), 4) for i in range(400)]
    assert indices == [transforms.shard_index(str(i), 4) for i in range(400)]
    assert all(60 < indices.count(k) < 140 for k in range(4))


def test_ids_sort_numerically():
    assert sorted(["10", "9", "b", "100", "a"], key=transforms.id_sort_key) == ["9", "10", "100", "a", "b"]


def test_inverse_frequency_weights_average_one_over_train_records():
    counts = [30, 10, 0, 60]
    weights = stats.inverse_frequency(counts)
    assert weights[2] == 0.0
    assert weights[0] == pytest.approx(100 / (3 * 30))
    assert sum(w * n for w, n in zip(weights, counts, strict=True)) / sum(counts) == pytest.approx(1.0)


def test_attribute_weights_balance_positives_and_negatives():
    w = stats.attribute_weights([25, 0, 100], total=100)
    assert w["positive"] == [pytest.approx(2.0), 0.0, pytest.approx(0.5)]
    assert w["negative"] == [pytest.approx(100 / 150), pytest.approx(0.5), 0.0]


def test_class_weights_list_classes_absent_from_train():
    schema = LabelSchema("c", "s", ("g",), ["A", "B"], ["a1", "a2", "b1"], ["g=x", "g=y"], {})
    counts = {
        "records": {"train": 4, "validation": 1, "test": 0},
        "category": {"train": [4, 0], "validation": [0, 1], "test": [0, 0]},
        "subcategory": {"train": [3, 1, 0], "validation": [0, 0, 1], "test": [0, 0, 0]},
        "attributes": {"train": [4, 0], "validation": [0, 1], "test": [0, 0]},
    }
    weights, absent = stats.class_weights(counts, schema)
    assert weights["category"] == [1.0, 0.0]
    assert weights["subcategory"] == [pytest.approx(4 / 6), pytest.approx(2.0), 0.0]
    assert absent == {"category": ["B"], "subcategory": ["b1"], "attributes": ["g=y"]}
