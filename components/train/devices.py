"""Choosing the distribution strategy and the precision of training from the devices present."""

from __future__ import annotations

import contextlib
from typing import Any

import keras


def choose_strategy() -> Any:
    """A `tf.distribute` strategy for the devices present: mirrored over several GPUs, one GPU, or CPU.

    Under a non-TensorFlow Keras backend there is no strategy: a null context is returned.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


def strategy_scope(strategy: Any) -> Any:
    """The context to build or load a model in: the strategy's scope, or the null context itself."""
    return strategy.scope() if hasattr(strategy, "scope") else strategy


def choose_precision(setting: str) -> str:
    """The Keras dtype policy: `auto` means mixed precision on GPUs (bf16 where supported), float32 on CPU."""
    if setting == "off":
        return "float32"
    if setting != "auto":
        return setting
    if keras.backend.backend() != "tensorflow":
        return "float32"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    details = tf.config.experimental.get_device_details(gpus[0])
    major = (details.get("compute_capability") or (0, 0))[0]
    return "mixed_bfloat16" if major >= 8 else "mixed_float16"
