"""The GPU throughput benchmark (bench/gpu_train_step.py) on CPU under the JAX backend, tiny sizes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_train_step_benchmark_runs_both_models_under_jax_with_bf16():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "bench.gpu_train_step", "--batch-size", "2", "--steps", "1",
           "--image-size", "64", "--precision", "mixed_bfloat16"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["backend"] == "jax"
    assert result["device"].startswith("jax:cpu")
    assert result["precision"] == "mixed_bfloat16"
    assert result["unified_images_per_s"] > 0 and result["bare_images_per_s"] > 0
    expected = result["unified_images_per_s"] / result["bare_images_per_s"]
    # images/s are printed to 0.1, so at CPU speeds the recomputed ratio differs in the second digit.
    assert result["ratio"] == pytest.approx(expected, rel=0.05)
    # The unified model is the paper's: ResNet-50 plus the message-passing head, far larger than the bare one.
    params = [int(n.replace(",", "")) for n in re.findall(r"\(([\d,]+) params\)", done.stdout)]
    assert len(params) == 2, done.stdout
    unified_params, bare_params = params
    assert unified_params > bare_params + 15_000_000
