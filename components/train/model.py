"""The unified network of Ferreira et al. 2018: a backbone, three branches and message passing.

Pure Keras 3 (no backend-specific ops), so the same builder runs under the TensorFlow, JAX and
PyTorch backends. Resizing and rescaling are layers of the model: callers feed the stored uint8
photos as they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import keras

from components.train.colour import ColourStatistics
from core.config import ModelConfig
from core.errors import StepError

OUTPUTS = ("category", "subcategory", "attributes")
INPUT_NAME = "image"


@keras.saving.register_keras_serializable(package="fashion")
class CaffeNormalization(keras.layers.Layer):
    """ResNet-50's ImageNet input normalisation on 0-1 RGB: to 0-255 BGR minus the channel means."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs: Any) -> Any:
        """Normalise a batch of 0-1 RGB images."""
        bgr = keras.ops.flip(inputs * 255.0, axis=-1)
        return bgr - keras.ops.cast(keras.ops.convert_to_tensor(self.MEAN_BGR), bgr.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Shape is unchanged."""
        return input_shape


def build_model(model_cfg: ModelConfig, sizes: dict[str, int], image_size: tuple[int, int]) -> Any:
    """Build the unified (or independent-heads) network.

    Args:
        model_cfg: backbone, input size, branch width, regularisation and head kind.
        sizes: output units per level: `category`, `subcategory`, `attributes`.
        image_size: (height, width) of the stored photos the model is fed.

    Returns:
        A `keras.Model` with input `image` (uint8 HxWx3 at `image_size`) and float32 outputs
        `category`, `subcategory` (softmax) and `attributes` (sigmoid).

    Raises:
        StepError: a level has no classes, or the weights file cannot be used.
    """
    missing = [k for k in OUTPUTS if int(sizes.get(k, 0)) < 1]
    if missing:
        raise StepError(f"no classes for {', '.join(missing)}: the label schema is empty; check the data and labels")
    height, width = int(image_size[0]), int(image_size[1])
    inputs = keras.Input(shape=(height, width, 3), dtype="uint8", name=INPUT_NAME)
    # Rescaling casts to the compute dtype first, so resizing works on floats.
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if (model_cfg.input_height, model_cfg.input_width) != (height, width):
        x = keras.layers.Resizing(model_cfg.input_height, model_cfg.input_width, name="resize")(x)
    features = _backbone(model_cfg, x)
    attr_features = features
    if model_cfg.colour_levels:
        colour = ColourStatistics(levels=model_cfg.colour_levels, name="colour_stats")(inputs)
        attr_features = keras.layers.Concatenate(name="attr_features")([features, colour])
    if model_cfg.head == "unified":
        logits_in = _unified_head(model_cfg, features, attr_features)
    else:
        logits_in = _independent_heads(model_cfg, features, attr_features)
    activations = {"category": "softmax", "subcategory": "softmax", "attributes": "sigmoid"}
    outputs = {}
    for level in OUTPUTS:
        logits = keras.layers.Dense(
            int(sizes[level]),
            kernel_regularizer=_l2(model_cfg),
            name=f"{level}_logits",
        )(logits_in[level])
        # float32 outputs even under mixed precision: stable losses and a fixed serving dtype.
        outputs[level] = keras.layers.Activation(activations[level], dtype="float32", name=level)(logits)
    name = f"{model_cfg.head}_{model_cfg.backbone}"
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def _l2(model_cfg: ModelConfig) -> Any:

    return keras.regularizers.L2(model_cfg.l2) if model_cfg.l2 > 0 else None


def _dense(model_cfg: ModelConfig, name: str) -> Any:

    return keras.layers.Dense(model_cfg.branch_units, activation="relu", kernel_regularizer=_l2(model_cfg), name=name)


def _dropout(model_cfg: ModelConfig, name: str) -> Any:

    return keras.layers.Dropout(model_cfg.dropout, name=name)


def _norm(model_cfg: ModelConfig, name: str) -> Any:
    """Parameter-free layer normalisation (`model.head_norm`), or the identity.

    Sums of two or three ReLU branches grow in scale layer after layer; normalising each sum keeps
    the deep message-passing paths trainable from scratch without adding a single parameter.
    """
    if not model_cfg.head_norm:
        return lambda x: x
    return keras.layers.LayerNormalization(center=False, scale=False, name=name)


def _unified_head(model_cfg: ModelConfig, features: Any, attr_features: Any) -> dict[str, Any]:
    """Three branches and the paper's top-down and bottom-up message passing (16 Dense layers).

    `attr_features` feed the attribute branch: the backbone's features, with the colour
    statistics where `model.colour_levels` asks for them.
    """
    d = lambda name: _dense(model_cfg, name)  # noqa: E731
    n = lambda name: _norm(model_cfg, name)  # noqa: E731

    def add(name: str) -> Any:
        layer = keras.layers.Add(name=name)
        return lambda xs: n(f"{name}_norm")(layer(xs))

    x_cat = n("x_cat_norm")(d("x_cat")(features))
    x_sub = n("x_sub_norm")(d("x_sub")(features))
    x_attr = n("x_attr_norm")(d("x_attr")(attr_features))

    # Top-down: the category informs sub-category and attributes.
    cat_b = _dropout(model_cfg, "cat_b")(d("td_cat_2")(d("td_cat_1")(x_cat)))
    sub_b = _dropout(model_cfg, "sub_b")(
        d("td_sub_out")(add("td_sub_sum")([d("td_sub_in")(x_sub), d("td_cat_to_sub")(cat_b)]))
    )
    attr_b = _dropout(model_cfg, "attr_b")(
        d("td_attr_out")(add("td_attr_sum")([d("td_attr_in")(x_attr), d("td_cat_to_attr")(cat_b)]))
    )
    # Bottom-up: sub-category and attributes inform the category.
    attr_g = _dropout(model_cfg, "attr_g")(d("bu_attr_2")(d("bu_attr_1")(x_attr)))
    sub_g = _dropout(model_cfg, "sub_g")(d("bu_sub_2")(d("bu_sub_1")(x_sub)))
    cat_g = _dropout(model_cfg, "cat_g")(
        d("bu_cat_out")(
            add("bu_cat_sum")([d("bu_cat_in")(x_cat), d("bu_sub_to_cat")(sub_g), d("bu_attr_to_cat")(attr_g)])
        )
    )
    return {
        "category": add("category_merge")([cat_b, cat_g]),
        "subcategory": add("subcategory_merge")([sub_b, sub_g]),
        "attributes": add("attributes_merge")([attr_b, attr_g]),
    }


def _independent_heads(model_cfg: ModelConfig, features: Any, attr_features: Any) -> dict[str, Any]:
    """The ablation: the same branches and depth per level, with no messages between levels."""
    out = {}
    for level in OUTPUTS:
        level_in = attr_features if level == "attributes" else features
        x = _norm(model_cfg, f"{level}_branch_norm")(_dense(model_cfg, f"{level}_branch")(level_in))
        x = _dense(model_cfg, f"{level}_hidden_2")(_dense(model_cfg, f"{level}_hidden_1")(x))
        out[level] = _norm(model_cfg, f"{level}_hidden_norm")(_dropout(model_cfg, f"{level}_dropout")(x))
    return out


def _backbone(model_cfg: ModelConfig, x: Any) -> Any:
    """Globally average-pooled features of the configured backbone."""
    if model_cfg.backbone == "small_cnn":
        return _small_cnn(model_cfg, x)
    if model_cfg.backbone == "resnet50":
        return _applications_backbone(model_cfg, x, "ResNet50")
    if model_cfg.backbone == "mobilenet_v3_small":
        return _applications_backbone(model_cfg, x, "MobileNetV3Small")
    raise StepError(f"unknown backbone {model_cfg.backbone!r}: use small_cnn, resnet50 or mobilenet_v3_small")


def _channels(model_cfg: ModelConfig, base: int) -> int:
    return max(8, int(round(base * model_cfg.width_multiplier / 8.0)) * 8)


def _small_cnn(model_cfg: ModelConfig, x: Any) -> Any:
    """A compact VGG-style network with batch normalisation, sized for 80x60 photos on CPUs.

    The stem convolves the photo at full resolution (at 80x60 every pixel counts) and pools it
    to half size, where the expensive stages start; each later stage doubles the channels and
    halves the resolution with max pooling; the last stage is pooled globally.
    """
    layers = keras.layers

    def conv(t: Any, filters: int, name: str) -> Any:
        t = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(t)
        t = layers.BatchNormalization(name=f"{name}_bn")(t)
        return layers.Activation("relu", name=f"{name}_relu")(t)

    x = conv(x, _channels(model_cfg, 32), "stem")
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    for stage, base in enumerate((32, 64, 128, 256), start=1):
        filters = _channels(model_cfg, base)
        if stage > 1:
            x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
        x = conv(x, filters, f"stage{stage}_a")
        x = conv(x, filters, f"stage{stage}_b")
    return layers.GlobalAveragePooling2D(name="features")(x)


def _applications_backbone(model_cfg: ModelConfig, x: Any, name: str) -> Any:
    """A keras.applications backbone, with ImageNet or file weights, average-pooled."""
    weights = model_cfg.weights
    file_weights = None
    if weights not in (None, "", "imagenet"):
        file_weights = weights
        weights = None
    if name == "ResNet50":
        x = CaffeNormalization(name="caffe_preprocess")(x)
        net = keras.applications.ResNet50(
            include_top=False,
            weights=weights or None,
            input_shape=(model_cfg.input_height, model_cfg.input_width, 3),
            pooling="avg",
        )
    else:
        # MobileNetV3 normalises 0-255 inputs itself.
        x = keras.layers.Rescaling(255.0, name="to_255")(x)
        net = keras.applications.MobileNetV3Small(
            include_top=False,
            weights=weights or None,
            input_shape=(model_cfg.input_height, model_cfg.input_width, 3),
            pooling="avg",
            include_preprocessing=True,
        )
    if file_weights:
        _load_backbone_weights(net, file_weights)
    return net(x)


def _load_backbone_weights(net: Any, uri: str) -> None:
    """Load backbone weights from a local path or a gs:// URI (`.weights.h5` or `.h5`)."""
    from core import storage

    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as err:
        raise StepError(
            f"backbone weights {uri}: {err}; set model.weights to null, imagenet or a weights file"
        ) from err
    suffix = ".weights.h5" if uri.endswith(".weights.h5") else Path(uri).suffix or ".h5"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"backbone{suffix}")
        Path(path).write_bytes(data)
        try:
            net.load_weights(path)
        except (ValueError, OSError) as err:
            raise StepError(
                f"backbone weights {uri} do not fit {net.name}: {err}; use weights saved from the same backbone"
            ) from err
