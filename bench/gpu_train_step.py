"""Training throughput of the paper's unified model against a bare ResNet-50, on synthetic batches.

Trains the `paper` preset's model (ResNet-50 at 224x224, the 16-layer message-passing head) and,
in the same run, a bare ResNet-50 with a single softmax head, and prints images/s of each and
"ratio" = unified / bare. Meant for a GPU under JAX with bf16 mixed precision:

    KERAS_BACKEND=jax .venv/bin/python -m bench.gpu_train_step --batch-size 256 --precision mixed_bfloat16

A CPU smoke run (any backend): `--batch-size 2 --steps 2 --image-size 64 --precision float32`.
Last line: a JSON object with "ratio".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

SIZES = {"category": 40, "subcategory": 140, "attributes": 54}


def _device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        return f"jax:{dev.platform}:{getattr(dev, 'device_kind', '')}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return "tensorflow:gpu:" + tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
    return f"{backend}:cpu:{platform.processor() or platform.machine()}"


def _bare_resnet(image_size: int):
    import keras

    from components.train.model import CaffeNormalization

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = CaffeNormalization()(x)
    x = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                    input_shape=(image_size, image_size, 3))(x)  # fmt: skip
    logits = keras.layers.Dense(SIZES["subcategory"])(x)
    out = keras.layers.Activation("softmax", dtype="float32", name="subcategory")(logits)
    return keras.Model(inputs, {"subcategory": out}, name="bare_resnet50")


def _unified(image_size: int):
    from components.train.model import build_model
    from core.config import load_config

    cfg = dataclasses.replace(load_config("paper").model, weights=None, input_height=image_size, input_width=image_size)
    return build_model(cfg, SIZES, (image_size, image_size))


def _measure(model, batch_size: int, steps: int, image_size: int, outputs: tuple[str, ...]) -> float:
    """Images/s of `model.fit` over `steps` timed steps, after one compiled warm-up epoch."""
    import keras
    import numpy as np

    from components.train.losses import WeightedBinaryCrossentropy, WeightedSparseCategoricalCrossentropy
    from components.train.optim import make_optimizer
    from core.config import TrainConfig

    rng = np.random.default_rng(0)
    n = batch_size * steps
    x = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    y_all = {
        "category": rng.integers(0, SIZES["category"], n),
        "subcategory": rng.integers(0, SIZES["subcategory"], n),
        "attributes": (rng.random((n, SIZES["attributes"])) < 0.1).astype("float32"),
    }
    losses = {
        "category": WeightedSparseCategoricalCrossentropy([1.0] * SIZES["category"]),
        "subcategory": WeightedSparseCategoricalCrossentropy([1.0] * SIZES["subcategory"]),
        "attributes": WeightedBinaryCrossentropy([1.0] * SIZES["attributes"], [1.0] * SIZES["attributes"]),
    }
    model.compile(optimizer=make_optimizer(TrainConfig(), steps), loss={k: losses[k] for k in outputs})
    y = {k: y_all[k] for k in outputs}
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    keras.backend.clear_session()
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (after a warm-up epoch)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="mixed_bfloat16", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    args = parser.parse_args()

    import keras

    keras.mixed_precision.set_dtype_policy(args.precision)
    device = _device()
    print(f"backend {keras.backend.backend()}, device {device}, precision {args.precision}, "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}", flush=True)  # fmt: skip
    if ":cpu:" in device and args.batch_size >= 64:
        print("warning: no GPU is visible to the backend, so this measures the CPU. Under JAX, install the "
              'CUDA plugin: .venv/bin/pip install "jax[cuda12]==0.10.2"', file=sys.stderr, flush=True)  # fmt: skip
    unified = _unified(args.image_size)
    params = unified.count_params()
    unified_ips = _measure(unified, args.batch_size, args.steps, args.image_size, tuple(SIZES))
    print(f"unified model ({params:,} params): {unified_ips:,.1f} images/s", flush=True)
    bare = _bare_resnet(args.image_size)
    bare_ips = _measure(bare, args.batch_size, args.steps, args.image_size, ("subcategory",))
    print(f"bare ResNet-50 + softmax ({bare.count_params():,} params): {bare_ips:,.1f} images/s", flush=True)
    print(json.dumps({
        "backend": keras.backend.backend(), "device": device, "precision": args.precision,
        "batch_size": args.batch_size, "image_size": args.image_size, "unified_images_per_s": round(unified_ips, 1),
        "bare_images_per_s": round(bare_ips, 1), "ratio": round(unified_ips / bare_ips, 4),
        "keras_backend_env": os.environ.get("KERAS_BACKEND", ""),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
