"""The training input pipeline: parsed shards -> shuffled, augmented, batched, prefetched tensors.

Built on `core.records.read_split`, so the trainer and the evaluator read the shards
the same way. Augmentation runs on whole batches (one vectorised op per batch is far cheaper on
CPUs than per-image maps) and only on the training split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core import layouts, records
from core.config import TrainConfig

LABEL_KEYS = ("category", "subcategory", "attributes")

# Augmentation strengths: mild, because catalogue photos are centred on a plain background and
# large shifts or rotations produce images the model never sees at inference.
MAX_SHIFT = 0.06
MAX_SCALE = 0.08
MAX_ROTATE_DEG = 5.0
MAX_BRIGHTNESS = 0.10
CONTRAST_RANGE = (0.85, 1.15)
FILL_VALUE = 255.0


def split_size(data_dir: str | Path, split: str) -> int:
    """Number of examples of one split, from the preprocess statistics (0 when unknown)."""
    entry = (layouts.read_stats(data_dir).get("splits") or {}).get(split) or {}
    return int(entry.get("count") or 0)


def to_pair(example: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A parsed example -> (uint8 image, labels dict with float32 multi-hot attributes)."""
    import tensorflow as tf

    return example["image"], {
        "category": tf.cast(example["category"], tf.int32),
        "subcategory": tf.cast(example["subcategory"], tf.int32),
        "attributes": tf.cast(example["attributes"], tf.float32),
    }


def make_dataset(
    data_dir: str | Path,
    split: str,
    batch_size: int,
    training: bool,
    train_cfg: TrainConfig | None = None,
    repeat: bool = False,
) -> Any:
    """A `tf.data.Dataset` of (image batch, labels dict) for one split of the shards.

    Args:
        data_dir: preprocess output folder (shards + stats.json).
        split: `train`, `validation` or `test`.
        batch_size: examples per batch.
        training: shuffle and augment (only ever for the training split).
        train_cfg: shuffle buffer, augmentation switch and seed; defaults apply when None.
        repeat: repeat forever (the trainer sets steps per epoch).
    """
    import tensorflow as tf

    train_cfg = train_cfg or TrainConfig()
    stats = layouts.read_stats(data_dir)
    shape = [int(stats["image_height"]), int(stats["image_width"]), 3]
    ds = records.read_split(data_dir, split, decode=False)
    if training:
        # Shuffle the small encoded records, before decoding: the shards keep the catalogue's
        # order, where neighbours are often the same kind of product, so a buffer of decoded
        # images would have to be far larger to give batches of mixed classes.
        ds = ds.shuffle(train_cfg.shuffle_buffer, seed=train_cfg.seed, reshuffle_each_iteration=True)

    def _decode(example: dict[str, Any]) -> dict[str, Any]:
        image = records.decode_photo_tensor(example["image"])
        return {**example, "image": tf.ensure_shape(image, shape)}

    ds = ds.map(lambda ex: to_pair(_decode(ex)), num_parallel_calls=_autotune())
    return batch_pipeline(ds, batch_size, training, train_cfg, repeat=repeat, shuffle=False)


def from_arrays(images: Any, labels: dict[str, Any]) -> Any:
    """The same element structure as `make_dataset` from in-memory numpy arrays (benchmarks)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        (
            images,
            {
                "category": labels["category"].astype("int32"),
                "subcategory": labels["subcategory"].astype("int32"),
                "attributes": labels["attributes"].astype("float32"),
            },
        )
    )


def batch_pipeline(
    ds: Any, batch_size: int, training: bool, train_cfg: TrainConfig, repeat: bool = False, shuffle: bool = True
) -> Any:
    """Shuffle (training, unless already shuffled), repeat, batch, augment (training) and prefetch pairs."""
    import tensorflow as tf

    if training and shuffle:
        ds = ds.shuffle(train_cfg.shuffle_buffer, seed=train_cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=_autotune())
    if training and train_cfg.augment:
        # A stateless seed per batch: reproducible, and safe to run batches in parallel.
        ds = ds.enumerate().map(
            lambda i, pair: (
                augment_batch(pair[0], tf.stack([tf.constant(train_cfg.seed, tf.int64), i]), train_cfg.colour_jitter),
                pair[1],
            ),
            num_parallel_calls=_autotune(),
        )
    return ds.prefetch(_autotune())


def augment_batch(images: Any, seed: Any, colour_jitter: bool = True) -> Any:
    """Random flip, brightness, contrast and shift/scale/rotation of a uint8 image batch.

    Args:
        images: uint8 batch (N, H, W, 3).
        seed: int64 tensor of shape [2] for the stateless random ops.
        colour_jitter: apply the brightness and contrast jitter (`train.colour_jitter`). Off, every
            pixel the geometry keeps has its stored colour; the other draws stay the same.

    Returns:
        A uint8 batch of the same shape, so the model's own rescaling applies unchanged.
    """
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, num=7)))

    def uniform(lo: float, hi: float) -> Any:
        return tf.random.stateless_uniform([n], seed=next(seeds), minval=lo, maxval=hi)

    flip = uniform(0.0, 1.0) < 0.5
    x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)

    # Brightness and contrast around each image's own mean.
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = uniform(*CONTRAST_RANGE)[:, None, None, None]
    brightness = (uniform(-MAX_BRIGHTNESS, MAX_BRIGHTNESS) * 255.0)[:, None, None, None]
    if colour_jitter:
        x = (x - mean) * contrast + mean + brightness

    # One projective transform per image: rotate and scale around the centre, then shift.
    angle = uniform(-MAX_ROTATE_DEG, MAX_ROTATE_DEG) * (math.pi / 180.0)
    scale = uniform(1.0 - MAX_SCALE, 1.0 + MAX_SCALE)
    dx = uniform(-MAX_SHIFT, MAX_SHIFT) * width
    dy = uniform(-MAX_SHIFT, MAX_SHIFT) * height
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # The transform maps output pixel coordinates to input coordinates.
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = cx - a0 * (cx + dx) - a1 * (cy + dy)
    b2 = cy - b0 * (cx + dx) - b1 * (cy + dy)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=FILL_VALUE,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _autotune() -> int:
    import tensorflow as tf

    return tf.data.AUTOTUNE
