"""Training throughput of the `cpu-full` model (or `--preset`'s) on this CPU: float32 vs mixed bfloat16, XLA, threads.

Each variant runs in its own Python (TensorFlow's precision policy and thread pools are fixed
once per process): the real `cpu-full` model (`build_model`), its real losses and optimiser
(`compile_model`), `model.fit` on in-memory batches of 80x60 photos, so the figure is the training
step alone, apart from the input pipeline (measured by `bench/train_input.py`). One epoch warms
up (tracing, XLA compilation), the next `--steps` are timed. Vocabulary sizes are the shared
catalogue's under the preset's `labels.min_class_count`.

    .venv/bin/python -m bench.train_throughput [--steps 40] [--variants float32 bf16 ...] [--preset demo] [--set K=V]

Prints images/s per variant and the ratio to the baseline (float32, no XLA, TensorFlow's default
threads) measured in the same run; the last line is JSON with "ratio" = best / baseline.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "fashion-product-images-small.zip"
# name -> (precision policy, jit_compile, (intra-op, inter-op) threads or None for TF's default)
VARIANTS = {
    "float32": ("float32", False, None),
    "float32-xla": ("float32", True, None),
    "float32-threads": ("float32", False, (2, 1)),
    "bf16": ("mixed_bfloat16", False, None),
    "bf16-xla": ("mixed_bfloat16", True, None),
    "bf16-threads": ("mixed_bfloat16", False, (2, 1)),
}
BASELINE = "float32"


def catalogue_sizes(source_zip: Path, min_class_count: int) -> dict[str, int]:
    """Category, sub-category and attribute vocabulary sizes of the shared catalogue."""
    with zipfile.ZipFile(source_zip) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("styles.csv").decode("utf-8"))))
    subs = Counter(r["articleType"] for r in rows)
    kept = [r for r in rows if subs[r["articleType"]] >= min_class_count]
    attributes = sum(len({r[c] for r in kept if r.get(c)}) for c in ("baseColour", "season", "usage", "gender"))
    return {
        "category": len({r["subCategory"] for r in kept}),
        "subcategory": len({r["articleType"] for r in kept}),
        "attributes": attributes,
    }


def run_variant(
    name: str, steps: int, sizes: dict[str, int], preset: str = "cpu-full", overrides: list[str] | None = None
) -> dict[str, float]:
    """Time `steps` training steps of one variant in this process."""
    precision, jit, threads = VARIANTS[name]
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    import time

    import keras
    import numpy as np

    from components.train.losses import build_losses
    from components.train.model import build_model
    from components.train.step import compile_model
    from core.config import load_config, parse_overrides

    config = load_config(preset, overrides=parse_overrides(overrides or []))
    tc, mc = config.train, config.model
    height, width = config.preprocess.image_height, config.preprocess.image_width
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(mc, sizes, (height, width))
    stats = {
        "class_weights": {
            "category": [1.0] * sizes["category"],
            "subcategory": [1.0] * sizes["subcategory"],
            "attributes": {"positive": [1.0] * sizes["attributes"], "negative": [1.0] * sizes["attributes"]},
        }
    }
    compile_model(model, tc, build_losses(stats, sizes, tc.class_weight_power, tc.label_smoothing), steps)
    model.jit_compile = jit
    rng = np.random.default_rng(0)
    n = tc.batch_size * 8
    images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    labels = {
        "category": rng.integers(0, sizes["category"], n),
        "subcategory": rng.integers(0, sizes["subcategory"], n),
        "attributes": (rng.random((n, sizes["attributes"])) < 0.1).astype("float32"),
    }
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(tc.batch_size).repeat().prefetch(2)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    cpu_start = time.process_time()
    model.fit(data, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    cpu = time.process_time() - cpu_start
    images_per_s = steps * tc.batch_size / timer.seconds[1]
    return {
        "images_per_s": round(images_per_s, 1),
        "warmup_s": round(timer.seconds[0], 1),
        "cpu_s_total": round(cpu, 1),
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant (after one warm-up epoch)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--source", type=Path, default=DEFAULT_ZIP)
    parser.add_argument("--preset", default="cpu-full", help="the preset whose model and optimiser are timed")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="preset override, e.g. model.colour_levels=0"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_variant(args.one, args.steps, json.loads(args.sizes), args.preset, args.overrides)))
        return

    from core.config import load_config, parse_overrides

    config = load_config(args.preset, overrides=parse_overrides(args.overrides))
    sizes = catalogue_sizes(args.source, config.labels.min_class_count)
    settings = " ".join(args.overrides) or "no overrides"
    print(f"{args.preset} model ({settings}), vocabularies {sizes}; CPUs: {os.cpu_count()}", end="; ")
    print(f"{args.steps} timed steps per variant")
    variants = [BASELINE, *[v for v in args.variants if v != BASELINE]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}
    for name in variants:
        cmd = [
            sys.executable,
            "-m",
            "bench.train_throughput",
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--preset",
            args.preset,
        ]
        cmd += ["--sizes", json.dumps(sizes), *(f"--set={o}" for o in args.overrides)]
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:<18} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = results[name]["images_per_s"] / results[BASELINE]["images_per_s"]
        r = results[name]
        print(
            f"{name:<18} {r['images_per_s']:7.1f} images/s  x{ratio:4.2f}  warm-up {r['warmup_s']:5.1f} s  "
            f"(load {r['load']})",
            flush=True,
        )
    best = max(results, key=lambda k: results[k]["images_per_s"])
    ratio = results[best]["images_per_s"] / results[BASELINE]["images_per_s"]
    print(json.dumps({"ratio": round(ratio, 3), "best": best, "baseline": BASELINE, "variants": results}))


if __name__ == "__main__":
    main()
