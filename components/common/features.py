"""The TFRecord contract between the Beam step (writer) and the trainer/evaluator (readers).

One `tf.train.Example` per product photo. Keys are constants here so writer and readers can
never drift apart. TensorFlow is imported inside the functions: importing this module is free.
"""

from __future__ import annotations

from typing import Any

IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
ORIGINAL_HEIGHT = "image/original_height"
ORIGINAL_WIDTH = "image/original_width"
ID = "id"
CATEGORY = "label/category"
SUBCATEGORY = "label/subcategory"
ATTRIBUTES = "label/attributes"

STATS_FILE = "stats.json"
REJECTS_FILE = "rejects.jsonl"
LABELS_FILE = "labels.json"


def shard_pattern(split: str, compression: str = "none") -> str:
    """Glob of one split's shard files inside the preprocess output folder."""
    return f"{split}-*.tfrecord" + (".gz" if compression == "gzip" else "")


def make_example(
    image: bytes,
    image_format: str,
    item_id: str,
    category: int,
    subcategory: int,
    attributes: list[int],
    original_size: tuple[int, int],
) -> bytes:
    """Serialise one record.

    Args:
        image: encoded, already resized image (JPEG or PNG).
        image_format: `jpeg` or `png`.
        item_id: the catalogue id.
        category: category class index.
        subcategory: sub-category class index.
        attributes: multi-hot vector (0/1) over the attribute vocabulary, fixed length.
        original_size: (height, width) of the photo before resizing.

    """
    import tensorflow as tf

    def _bytes(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _ints(v: list[int]) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    feature = {
        IMAGE: _bytes(image),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        ID: _bytes(str(item_id).encode()),
        CATEGORY: _ints([int(category)]),
        SUBCATEGORY: _ints([int(subcategory)]),
        ATTRIBUTES: _ints([int(a) for a in attributes]),
        ORIGINAL_HEIGHT: _ints([int(original_size[0])]),
        ORIGINAL_WIDTH: _ints([int(original_size[1])]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def feature_spec(num_attributes: int) -> dict[str, Any]:
    """`tf.io.parse_example` spec for records written by `make_example`."""
    import tensorflow as tf

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=b"jpeg"),
        ID: tf.io.FixedLenFeature([], tf.string),
        CATEGORY: tf.io.FixedLenFeature([], tf.int64),
        SUBCATEGORY: tf.io.FixedLenFeature([], tf.int64),
        ATTRIBUTES: tf.io.FixedLenFeature([num_attributes], tf.int64),
        ORIGINAL_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        ORIGINAL_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }
