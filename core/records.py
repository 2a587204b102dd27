"""The TFRecord contract between the Beam step (writer) and the trainer/evaluator (readers).

One `tf.train.Example` per product photo. Keys are constants here so writer and readers can
never drift apart; `read_split` parses a preprocess folder's shards back. `make_example` builds the
record without TensorFlow (`core.protos`), so Beam workers never import it; the readers import
TensorFlow inside the functions: importing this module is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import layouts, protos
from core.errors import StepError

IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
ORIGINAL_HEIGHT = "image/original_height"
ORIGINAL_WIDTH = "image/original_width"
ID = "id"
CATEGORY = "label/category"
SUBCATEGORY = "label/subcategory"
ATTRIBUTES = "label/attributes"


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
    example = protos.example_class()()
    feature = example.features.feature
    for key, value in (
        (IMAGE, image),
        (IMAGE_FORMAT, image_format.encode()),
        (ID, str(item_id).encode()),
    ):
        feature[key].bytes_list.value.append(value)
    for key, ints in (
        (CATEGORY, [int(category)]),
        (SUBCATEGORY, [int(subcategory)]),
        (ATTRIBUTES, [int(a) for a in attributes]),
        (ORIGINAL_HEIGHT, [int(original_size[0])]),
        (ORIGINAL_WIDTH, [int(original_size[1])]),
    ):
        feature[key].int64_list.value.extend(ints)
    # Deterministic: map entries in key order, so every worker writes the same bytes for a photo.
    return example.SerializeToString(deterministic=True)


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


def decode_photo_tensor(data: Any) -> Any:
    """Decode one encoded photo (scalar string tensor) to uint8 RGB: the project's one TensorFlow decode.

    The trainer reads its shards and the exported serving graph reads client photos with it.
    JPEGs use the accurate integer IDCT, the one Pillow (the preprocessing side) uses; TF's default
    fast IDCT differs from it by more than a grey level per pixel on average.
    """
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8),
    )


def split_files(data_dir: str | Path, split: str) -> list[str]:
    """Sorted shard files of one split; raises StepError when there are none."""
    stats = layouts.read_stats(data_dir)
    pattern = layouts.shard_pattern(split, stats.get("compression", "none"))
    files = sorted(str(p) for p in Path(data_dir).glob(pattern))
    if not files:
        raise StepError(f"no {split} shards ({pattern}) in {data_dir}: re-run `fashion preprocess`")
    return files


def read_split(data_dir: str | Path, split: str, decode: bool = True, num_parallel_calls: int | None = None):
    """A `tf.data.Dataset` of parsed examples of one split, in file order (no shuffling).

    Each element is a dict: `image` (uint8 HxWx3 when `decode`, else the encoded bytes), `id`,
    `category`, `subcategory`, `attributes` (int64 multi-hot).
    """
    import tensorflow as tf

    stats = layouts.read_stats(data_dir)
    num_attributes = len(stats["labels"]["attributes"])
    spec = feature_spec(num_attributes)
    compression = "GZIP" if stats.get("compression", "none") == "gzip" else None
    height, width = int(stats["image_height"]), int(stats["image_width"])
    parallel = num_parallel_calls or tf.data.AUTOTUNE

    def _parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = ex[IMAGE]
        if decode:
            image = tf.ensure_shape(decode_photo_tensor(image), [height, width, 3])
        return {
            "image": image,
            "id": ex[ID],
            "category": ex[CATEGORY],
            "subcategory": ex[SUBCATEGORY],
            "attributes": ex[ATTRIBUTES],
        }

    files = split_files(data_dir, split)
    return tf.data.TFRecordDataset(files, compression_type=compression).map(_parse, num_parallel_calls=parallel)
