"""The optimiser and its learning-rate schedule (constant, cosine or one-cycle, with warm-up)."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from core.config import TrainConfig


@keras.saving.register_keras_serializable(package="fashion")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `peak / warmup_divisor`, then constant, cosine or one-cycle decay.

    `one-cycle` is a long warm-up (at least 30% of training) followed by a cosine decay to
    almost zero; `cosine` decays to zero after the configured warm-up.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str, warmup_divisor: float = 25.0):
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.kind = kind
        self.warmup_divisor = float(warmup_divisor)

    def __call__(self, step: Any) -> Any:
        """Learning rate at optimiser step `step`."""
        step = ops.cast(step, "float32")
        peak = self.peak
        start = peak / self.warmup_divisor
        if self.warmup_steps > 0:
            warm = start + (peak - start) * ops.minimum(step / float(self.warmup_steps), 1.0)
        else:
            warm = ops.convert_to_tensor(peak, "float32")
        if self.kind == "constant":
            return warm
        decay_steps = float(max(1, self.total_steps - self.warmup_steps))
        progress = ops.clip((step - float(self.warmup_steps)) / decay_steps, 0.0, 1.0)
        floor = peak * 1e-4 if self.kind == "onecycle" else 0.0
        cosine = floor + (peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < float(self.warmup_steps), warm, cosine)

    def get_config(self) -> dict[str, Any]:
        """Serialisable settings."""
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "warmup_divisor": self.warmup_divisor,
        }


def make_schedule(train_cfg: TrainConfig, steps_per_epoch: int) -> WarmupSchedule:
    """The configured schedule over `train_cfg.epochs` epochs of `steps_per_epoch` steps."""
    total = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = int(round(train_cfg.warmup_epochs * steps_per_epoch))
    if train_cfg.lr_schedule == "onecycle":
        warmup = max(warmup, int(0.3 * total))
    return WarmupSchedule(train_cfg.learning_rate, total, warmup, train_cfg.lr_schedule)


def make_optimizer(train_cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam (the paper's), or AdamW when `train.weight_decay` is set, on the configured schedule.

    Gradients are clipped by global norm: the summed branches of the message-passing block can
    produce occasional large gradients early in training from scratch.
    """
    schedule = make_schedule(train_cfg, steps_per_epoch)
    if train_cfg.weight_decay > 0:
        return keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=train_cfg.weight_decay, global_clipnorm=train_cfg.clip_norm or None
        )
    return keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=train_cfg.clip_norm or None)
