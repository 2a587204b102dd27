"""Colour statistics of a product's pixels against the photo's background, as a model layer.

At 80x60 a network's convolutions see colour mixed with shading, texture and the white studio
background; the label `baseColour` is the colour of the product alone. This layer hands the
attribute branch what a merchandiser would look at: which colours the product's pixels have,
separated from the background, in a fixed-length vector. It is part of the model, so serving
stays one call and the features are computed the same way in training, evaluation and serving.

Per photo, on the stored uint8 pixels:
- the background colour: the mean of the photo's one-pixel border;
- a soft foreground mask: how far each pixel is from that colour (largest channel difference);
- a soft colour histogram of the foreground on a `levels`^3 RGB grid (each pixel spreads its
  weight over neighbouring bins, so small shifts in shade move the histogram smoothly);
- the foreground's mean and standard deviation per channel, the background colour and the
  foreground's share of the photo.

Pure Keras 3 ops (no backend-specific code), computed in float32 under any dtype policy.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Largest channel difference from the background at which a pixel is half foreground, and the
# width of the ramp around it (0-1 scale): a JPEG's ripple on white is a few levels of 255.
FOREGROUND_THRESHOLD = 0.08
FOREGROUND_RAMP = 0.01
# A photo with no foreground at all (a blank or all-background image) falls back to all of its
# pixels with this small weight, so the histogram is always defined.
EMPTY_WEIGHT = 1e-3


@keras.saving.register_keras_serializable(package="fashion")
class ColourStatistics(keras.layers.Layer):
    """Foreground colour histogram and moments of a uint8 RGB batch: [N, H, W, 3] -> [N, features]."""

    def __init__(self, levels: int = 5, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(levels) < 2:
            raise ValueError(f"levels must be at least 2, not {levels}")
        self.levels = int(levels)

    @property
    def features(self) -> int:
        """Length of the output vector: the histogram, mean, std, background and foreground share."""
        return self.levels**3 + 3 + 3 + 3 + 1

    def call(self, inputs: Any) -> Any:
        """Statistics of a batch of uint8 (or 0-255 float) RGB images."""
        x = ops.cast(inputs, "float32") / 255.0
        border = ops.concatenate(
            [
                ops.reshape(x[:, 0, :, :], (-1, x.shape[2], 3)),
                ops.reshape(x[:, -1, :, :], (-1, x.shape[2], 3)),
                ops.reshape(x[:, :, 0, :], (-1, x.shape[1], 3)),
                ops.reshape(x[:, :, -1, :], (-1, x.shape[1], 3)),
            ],
            axis=1,
        )
        background = ops.mean(border, axis=1)  # [N, 3]
        distance = ops.max(ops.abs(x - background[:, None, None, :]), axis=-1)  # [N, H, W]
        mask = ops.sigmoid((distance - FOREGROUND_THRESHOLD) / FOREGROUND_RAMP) + EMPTY_WEIGHT
        total = ops.sum(mask, axis=(1, 2))  # [N]

        # Soft membership of each channel value in `levels` bins centred on a uniform grid.
        centres = (ops.arange(self.levels, dtype="float32") + 0.5) / self.levels
        width = 1.0 / self.levels
        member = ops.softmax(-ops.square((x[..., None] - centres) / width) * 2.0, axis=-1)  # [N, H, W, 3, L]
        red, green, blue = member[:, :, :, 0, :], member[:, :, :, 1, :], member[:, :, :, 2, :]
        # Broadcast products and one batched matrix product over the pixels: an einsum of the outer
        # product per pixel becomes hundreds of thousands of tiny matrix products on CPUs.
        pixels = x.shape[1] * x.shape[2]
        levels = self.levels
        red_green = ops.reshape((red * mask[..., None])[..., :, None] * green[..., None, :], (-1, pixels, levels**2))
        histogram = ops.einsum("npq,npk->nqk", red_green, ops.reshape(blue, (-1, pixels, levels)))
        histogram = ops.reshape(histogram, (-1, levels**3)) / total[:, None]

        weights = mask[..., None] / total[:, None, None, None]
        mean = ops.sum(x * weights, axis=(1, 2))  # [N, 3]
        variance = ops.sum(ops.square(x - mean[:, None, None, :]) * weights, axis=(1, 2))
        std = ops.sqrt(ops.maximum(variance, 0.0) + 1e-6)
        share = total / float(pixels)
        return ops.concatenate([histogram, mean, std, background, share[:, None]], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """[batch, features]."""
        return (input_shape[0], self.features)

    def get_config(self) -> dict[str, Any]:
        """Serialisable settings: the grid's levels per channel."""
        return {**super().get_config(), "levels": self.levels}
