"""Does the input pipeline keep the model fed? Shard reading + decoding + augmentation vs a training step.

Measures images/s of the training `tf.data` pipeline alone (parse, decode, shuffle, batch,
augment, prefetch) over a preprocess output, and images/s of the `cpu-full` model's training
steps on in-memory batches, in the same run:

    .venv/bin/python -m bench.train_input --data /tmp/full-preprocess

Without `--data`, a 4,096-photo preprocess output is written from the shared zip first.
Last line: JSON with "ratio" = pipeline images/s / training images/s (above 1: the model is fed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from core import layouts
from core.config import load_config
from core.layouts import read_labels, read_stats


def _write_shards(out: Path, count: int) -> Path:
    """A small preprocess output (train split only is read) from the cached shared-zip arrays."""
    import tensorflow as tf

    from bench.train_arrays import load_arrays, stats_from_arrays
    from core import records

    splits, schema = load_arrays("../shared/data/fashion-product-images-small.zip", load_config("cpu-full"),
                                 "/tmp/fashion-arrays.npz")  # fmt: skip
    train = {k: v[:count] for k, v in splits["train"].items()}
    for split in ("train", "validation"):
        with tf.io.TFRecordWriter(str(out / f"{split}-00000-of-00001.tfrecord")) as writer:
            for i in range(len(train["ids"])):
                jpeg = tf.io.encode_jpeg(train["images"][i], quality=95).numpy()
                writer.write(records.make_example(jpeg, "jpeg", str(train["ids"][i]), int(train["category"][i]),
                             int(train["subcategory"][i]), train["attributes"][i].tolist(), (80, 60)))  # fmt: skip
    stats = {"image_height": 80, "image_width": 60, "image_format": "jpeg", "compression": "none",
             "splits": {"train": {"count": count}}, "labels": schema.to_dict(),
             **stats_from_arrays({"train": train}, schema)}  # fmt: skip
    (out / layouts.STATS).write_text(json.dumps(stats))
    schema.save(out / layouts.LABELS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="preprocess output folder")
    parser.add_argument("--preset", default="cpu-full")
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()

    from components.train.data import make_dataset
    from components.train.losses import build_losses
    from components.train.model import build_model
    from components.train.step import compile_model

    config = load_config(args.preset)
    tc = config.train
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else _write_shards(Path(tmp), 4096)
        ds = make_dataset(data, "train", tc.batch_size, True, tc, repeat=True)
        it = iter(ds)
        next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            images, _ = next(it)
        pipeline_ips = args.batches * tc.batch_size / (time.perf_counter() - start)
        print(f"input pipeline (read, decode, shuffle, augment): {pipeline_ips:,.0f} images/s", flush=True)

        stats, schema = read_stats(data), read_labels(data)
        model = build_model(config.model, schema.sizes, (80, 60))
        compile_model(model, tc, build_losses(stats, schema.sizes, tc.class_weight_power), 100)
        x = np.asarray(images)
        _, labels = next(it)
        y = {k: np.asarray(v) for k, v in labels.items()}
        model.train_on_batch(x, y)
        steps = 20
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        train_ips = steps * tc.batch_size / (time.perf_counter() - start)
        print(f"{config.model.head} {config.model.backbone} training steps: {train_ips:,.0f} images/s", flush=True)
    print(json.dumps({"pipeline_images_per_s": round(pipeline_ips), "train_images_per_s": round(train_ips),
                      "ratio": round(pipeline_ips / train_ips, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
