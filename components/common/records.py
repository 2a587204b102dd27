"""Reading the Beam step's output: statistics, label schema and parsed TFRecord splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.common import features
from components.common.errors import StepError
from components.common.labels import LabelSchema


def load_stats(data_dir: str | Path) -> dict[str, Any]:
    """`stats.json` of a preprocess output folder."""
    path = Path(data_dir) / features.STATS_FILE
    if not path.is_file():
        raise StepError(f"{path} not found: point --data at the output folder of `fashion preprocess`")
    return json.loads(path.read_text())


def load_schema(data_dir: str | Path) -> LabelSchema:
    """The label schema stored next to shards or in a model folder."""
    path = Path(data_dir) / features.LABELS_FILE
    if not path.is_file():
        raise StepError(f"{path} not found: the folder is not a preprocess output or model folder")
    return LabelSchema.load(path)


def split_files(data_dir: str | Path, split: str) -> list[str]:
    """Sorted shard files of one split; raises StepError when there are none."""
    stats = load_stats(data_dir)
    pattern = features.shard_pattern(split, stats.get("compression", "none"))
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

    stats = load_stats(data_dir)
    num_attributes = len(stats["labels"]["attributes"])
    spec = features.feature_spec(num_attributes)
    compression = "GZIP" if stats.get("compression", "none") == "gzip" else None
    height, width = int(stats["image_height"]), int(stats["image_width"])
    parallel = num_parallel_calls or tf.data.AUTOTUNE

    def _parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = ex[features.IMAGE]
        if decode:
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
            image = tf.ensure_shape(image, [height, width, 3])
        return {
            "image": image,
            "id": ex[features.ID],
            "category": ex[features.CATEGORY],
            "subcategory": ex[features.SUBCATEGORY],
            "attributes": ex[features.ATTRIBUTES],
        }

    files = split_files(data_dir, split)
    return tf.data.TFRecordDataset(files, compression_type=compression).map(_parse, num_parallel_calls=parallel)
