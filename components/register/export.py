"""Export a trained model folder as a TF Serving SavedModel: decode, resize, predict, name the outputs.

The exported `serving_default` signature takes a batch of encoded photos (`image_bytes`: JPEG or
PNG, any size, RGB, greyscale or with alpha) and does inside the graph what the Beam step did
before training: decode to RGB, fit to the stored size with the same pad/stretch policy, then
runs the Keras model and turns its scores into named outputs with the label strings built in.
Clients need no vocabulary file and no preprocessing code of their own.

The category tree goes into the graph too, as a constant mask of the allowed (category,
sub-category) pairs: the served `category`/`subcategory` are the allowed pair with the highest
p(category) * p(sub-category), the same joint decoding the evaluate step scores
(`components.evaluate.metrics.joint_decode`), so an answer never names a pair the catalogue lacks.
Each level's own arg-max stays available under the `*_independent` outputs.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from components.train.model_folder import load_model
from core import layouts, storage
from core.config import Config, config_from_dict
from core.errors import StepError
from core.labels import LabelSchema
from core.records import decode_photo_tensor
from serving import contract as sig
from serving import store

log = logging.getLogger(__name__)

# Far above any catalogue photo (a 12 Mpx camera is 12e6), far below what a bomb declares.
DEFAULT_MAX_PIXELS = 40_000_000
EXPORT_INFO_FILE = "assets.extra/export_info.json"


def model_image_size(model: Any) -> tuple[int, int]:
    """(height, width) of the model's `image` input."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise StepError(f"model input has shape {tuple(shape)}; expected (batch, height, width, 3)")
    return int(shape[1]), int(shape[2])


def _header_uint(data: Any, offset: int, size: int, little_endian: bool) -> Any:
    """An unsigned integer read from `size` header bytes at `offset` (0 when the photo is shorter)."""
    import tensorflow as tf

    raw = tf.strings.substr(data, offset, size)
    digits = tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.int64)
    n = tf.shape(digits)[0]
    powers = tf.pow(tf.constant(256, tf.int64), tf.range(tf.cast(n, tf.int64), dtype=tf.int64))
    weights = powers if little_endian else tf.reverse(powers, [0])
    return tf.where(tf.equal(n, size), tf.reduce_sum(digits * weights), tf.constant(0, tf.int64))


def header_pixels(data: Any) -> Any:
    """The pixel count a photo declares in its header, read without decoding it (0 when unknown).

    JPEG through TensorFlow's header parser; PNG (IHDR), GIF (screen descriptor), BMP and WebP
    (VP8, VP8L, VP8X) from their fixed header fields.
    """
    import tensorflow as tf

    def magic(prefix: bytes, offset: int = 0) -> Any:
        return tf.equal(tf.strings.substr(data, offset, len(prefix)), prefix)

    def jpeg() -> Any:
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    def png() -> Any:
        return _header_uint(data, 16, 4, False) * _header_uint(data, 20, 4, False)

    def gif() -> Any:
        return _header_uint(data, 6, 2, True) * _header_uint(data, 8, 2, True)

    def bmp() -> Any:
        height = _header_uint(data, 22, 4, True)
        # A top-down BMP stores a negative height (two's complement).
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return _header_uint(data, 18, 4, True) * height

    def vp8x() -> Any:
        return (_header_uint(data, 24, 3, True) + 1) * (_header_uint(data, 27, 3, True) + 1)

    def vp8l() -> Any:
        bits = _header_uint(data, 21, 4, True)
        return (bits % 2**14 + 1) * ((bits // 2**14) % 2**14 + 1)

    def vp8() -> Any:
        return (_header_uint(data, 26, 2, True) % 2**14) * (_header_uint(data, 28, 2, True) % 2**14)

    def webp() -> Any:
        return tf.case([(magic(b"VP8X", 12), vp8x), (magic(b"VP8L", 12), vp8l)], default=vp8)

    return tf.case(
        [
            (tf.io.is_jpeg(data), jpeg),
            (magic(b"\x89PNG\r\n\x1a\n"), png),
            (magic(b"GIF8"), gif),
            (magic(b"BM"), bmp),
            (tf.logical_and(magic(b"RIFF"), magic(b"WEBP", 8)), webp),
        ],
        default=lambda: tf.constant(0, tf.int64),
    )


def decode_photo(
    data: Any,
    height: int,
    width: int,
    resize_mode: str,
    pad_color: Sequence[int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Any:
    """Decode one encoded photo (a scalar string tensor) to RGB and fit it, as the served graph does.

    A photo whose header declares more than `max_pixels` pixels is refused (InvalidArgumentError,
    INVALID_ARGUMENT to a client) before anything decodes it: a decompression bomb costs a header
    read, on the local server and on the official TF Serving image alike.

    `core.images.decode_image` is its twin on the preprocessing side; tests/test_decode_parity.py
    holds the two to the same pixels for every photo mode and format.
    """
    import tensorflow as tf

    pixels = header_pixels(data)
    check = tf.debugging.assert_less_equal(
        pixels,
        tf.constant(max_pixels, tf.int64),
        message=f"photo over the serving pixel limit ({max_pixels:,} pixels; serving.max_image_pixels): pixels =",
    )
    with tf.control_dependencies([check]):
        image = decode_photo_tensor(tf.identity(data))
    return fit_image(image, height, width, resize_mode, pad_color)


def fit_image(image: Any, height: int, width: int, resize_mode: str, pad_color: Sequence[int]) -> Any:
    """Fit one decoded uint8 HxWx3 image to (height, width) as the Beam step does.

    `pad` scales the photo to fit inside the target keeping its aspect ratio and centres it on a
    `pad_color` canvas; `stretch` resizes to the target ignoring the aspect ratio. A photo that
    already has the stored size passes through untouched, so serving sees exactly what training saw.
    """
    import tensorflow as tf

    target_h, target_w = float(height), float(width)
    color = tf.constant([float(c) for c in pad_color], tf.float32)

    def _resize() -> Any:
        pixels = tf.cast(image, tf.float32)
        if resize_mode == "stretch":
            out = tf.image.resize(pixels, [height, width], method="lanczos3", antialias=True)
        else:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = tf.minimum(target_h / shape[0], target_w / shape[1])
            new_h = tf.clip_by_value(tf.cast(tf.round(shape[0] * scale), tf.int32), 1, height)
            new_w = tf.clip_by_value(tf.cast(tf.round(shape[1] * scale), tf.int32), 1, width)
            resized = tf.image.resize(pixels, tf.stack([new_h, new_w]), method="lanczos3", antialias=True)
            top = (height - new_h) // 2
            left = (width - new_w) // 2
            paddings = tf.stack([[top, height - new_h - top], [left, width - new_w - left], [0, 0]])
            out = tf.pad(resized - color, paddings) + color
        out = tf.reshape(out, [height, width, 3])
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)

    same = tf.logical_and(tf.equal(tf.shape(image)[0], height), tf.equal(tf.shape(image)[1], width))
    return tf.cond(same, lambda: tf.reshape(image, [height, width, 3]), _resize)


def allowed_mask(schema: LabelSchema) -> Any:
    """Boolean [category, sub-category] matrix of the pairs the schema's category tree allows.

    A schema without a tree allows every pair, so joint decoding is then each level's own arg-max
    (as the evaluate step's decoding does without a tree).
    """
    import numpy as np

    mask = np.zeros((len(schema.categories), len(schema.subcategories)), dtype=bool)
    for cat, sub in schema.allowed_pairs():
        mask[cat, sub] = True
    if not mask.any():
        mask[:] = True
    return mask


def joint_decode_tensor(category_p: Any, subcategory_p: Any, allowed: Any) -> tuple[Any, Any, Any]:
    """The allowed (category, sub-category) pair with the highest p(category) * p(sub-category), per row.

    The graph twin of `components.evaluate.metrics.joint_decode`: the product is taken in float64
    as numpy does, and ties go to the first pair in row-major order (numpy's `argmax` over the
    allowed pairs in `nonzero` order), so both pick the same pair for the same probabilities.

    Args:
        category_p: [batch, categories] probabilities.
        subcategory_p: [batch, sub-categories] probabilities.
        allowed: boolean [categories, sub-categories] mask with at least one True (`allowed_mask`).

    Returns:
        (category index, sub-category index, joint score) per row: int64, int64, float32.
    """
    import tensorflow as tf

    allowed = tf.convert_to_tensor(allowed, tf.bool)
    num_sub = tf.shape(allowed, out_type=tf.int64)[1]
    joint = tf.cast(category_p, tf.float64)[:, :, None] * tf.cast(subcategory_p, tf.float64)[:, None, :]
    # Probabilities are never negative, so -1 puts every pair the tree forbids below every allowed one.
    masked = tf.where(allowed[None], joint, tf.constant(-1.0, tf.float64))
    flat = tf.reshape(masked, [-1, tf.size(allowed)])
    best = tf.argmax(flat, axis=-1, output_type=tf.int64)
    return best // num_sub, best % num_sub, tf.cast(tf.reduce_max(flat, axis=-1), tf.float32)


def build_serving_module(
    model: Any,
    schema: LabelSchema,
    resize_mode: str,
    pad_color: Sequence[int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    flip_tta: bool = False,
) -> Any:
    """A `tf.Module` whose `serve` function is the `serving_default` signature.

    Args:
        model: the trained Keras model (input `image`, outputs `category`, `subcategory`, `attributes`).
        schema: the label schema the model was trained with; its vocabularies go into the graph.
        resize_mode: `pad` or `stretch` (config.preprocess.resize_mode).
        pad_color: RGB canvas colour for `pad` (config.preprocess.pad_color).
        max_pixels: photos declaring more pixels are refused before decoding (config.serving.max_image_pixels).
            The schema's category tree becomes a constant of the graph (`allowed_mask`) that the
            served pair is decoded over.
        flip_tta: average the model's scores over each photo and its mirror image
            (config.serving.flip_tta; the evaluation does the same, `model_folder.FlipAveraged`).
    """
    import tensorflow as tf

    height, width = model_image_size(model)
    sizes = schema.sizes
    for level, units in sizes.items():
        got = model.get_layer(level).output.shape[-1] if level in model.output_names else None
        if got is not None and int(got) != units:
            raise StepError(f"model output {level!r} has {got} units but labels.json lists {units} labels")

    class ServingModule(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="fashion_serving")
            self.model = model
            self.categories = tf.Variable(schema.categories, trainable=False, name="categories")
            self.subcategories = tf.Variable(schema.subcategories, trainable=False, name="subcategories")
            self.attributes = tf.Variable(schema.attributes, trainable=False, name="attributes")
            # The tf.Variables behind the Keras ones, tracked so the SavedModel's TF1 restore (what TF Serving
            # runs) fills the very variables the graph reads (tensorflow/tensorflow#72963).
            self.model_variables = [v.value for v in model.variables]
            # A constant of the graph, [category, sub-category]: the tree the served pair is decoded over.
            self.allowed_pairs = tf.constant(allowed_mask(schema))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=sig.INPUT_KEY)])
        def serve(self, image_bytes: Any) -> dict[str, Any]:
            def _decode(data: Any) -> Any:
                return decode_photo(data, height, width, resize_mode, pad_color, max_pixels)

            def _predict() -> tuple[Any, Any, Any]:
                images = tf.map_fn(
                    _decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8)
                )
                outputs = self.model(images, training=False)
                scores = [tf.cast(outputs[level], tf.float32) for level in ("category", "subcategory", "attributes")]
                if flip_tta:
                    mirrored = self.model(tf.reverse(images, axis=[2]), training=False)
                    scores = [
                        (score + tf.cast(mirrored[level], tf.float32)) / 2.0
                        for score, level in zip(scores, ("category", "subcategory", "attributes"), strict=True)
                    ]
                return tuple(scores)

            def _empty() -> tuple[Any, Any, Any]:
                # Some kernels reject a zero-size batch; an empty request gets an empty answer.
                return tuple(
                    tf.zeros([0, sizes[level]], tf.float32) for level in ("category", "subcategory", "attributes")
                )

            cat_p, sub_p, attr_p = tf.cond(tf.size(image_bytes) > 0, _predict, _empty)
            order = tf.argsort(attr_p, axis=-1, direction="DESCENDING", stable=True)
            cat, sub, joint_score = joint_decode_tensor(cat_p, sub_p, self.allowed_pairs)
            return {
                sig.CATEGORY: tf.gather(self.categories, cat),
                sig.CATEGORY_SCORE: tf.gather(cat_p, cat, batch_dims=1),
                sig.SUBCATEGORY: tf.gather(self.subcategories, sub),
                sig.SUBCATEGORY_SCORE: tf.gather(sub_p, sub, batch_dims=1),
                sig.JOINT_SCORE: joint_score,
                sig.CATEGORY_INDEPENDENT: tf.gather(self.categories, tf.argmax(cat_p, axis=-1)),
                sig.CATEGORY_INDEPENDENT_SCORE: tf.reduce_max(cat_p, axis=-1),
                sig.SUBCATEGORY_INDEPENDENT: tf.gather(self.subcategories, tf.argmax(sub_p, axis=-1)),
                sig.SUBCATEGORY_INDEPENDENT_SCORE: tf.reduce_max(sub_p, axis=-1),
                sig.CATEGORY_PROBABILITIES: cat_p,
                sig.SUBCATEGORY_PROBABILITIES: sub_p,
                sig.ATTRIBUTE_PROBABILITIES: attr_p,
                sig.ATTRIBUTE_NAMES: tf.gather(self.attributes, order),
                sig.ATTRIBUTE_SCORES: tf.gather(attr_p, order, batch_dims=1),
            }

    return ServingModule()


def synthetic_photos(height: int, width: int) -> list[bytes]:
    """Encoded photos covering every decode path: RGB JPEG, greyscale JPEG, RGBA PNG, a large PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = []
    for mode, size, fmt in (
        ("RGB", (width, height), "JPEG"),
        ("L", (width * 2, height), "JPEG"),
        ("RGBA", (width, height * 2), "PNG"),
        ("RGB", (width * 8, height * 8), "PNG"),
    ):
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
        buf = io.BytesIO()
        image.save(buf, fmt)
        photos.append(buf.getvalue())
    return photos


def warmup_requests(
    photos: Sequence[bytes], model_name: str, max_batch_size: int, limit: int = sig.MAX_WARMUP_RECORDS
) -> list[bytes]:
    """Serialized `PredictionLog` records: each photo alone, then batches of growing size.

    TF Serving replays these after loading a version and before routing traffic to it, so the
    first real request does not pay for graph initialisation.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    batches: list[list[bytes]] = [[p] for p in photos]
    size = 2
    while photos and size <= max_batch_size:
        batches.append([photos[i % len(photos)] for i in range(size)])
        size *= 2
    records = []
    for batch in batches[:limit]:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=sig.SIGNATURE_NAME)
        )
        request.inputs[sig.INPUT_KEY].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        log_entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log_entry.SerializeToString())
    return records


def _model_folder_config(model_dir: Path, config: Config | None) -> Config:
    if config is not None:
        return config
    path = model_dir / layouts.CONFIG
    if path.is_file():
        return config_from_dict(yaml.safe_load(path.read_text()) or {})
    return Config()


def export_model(
    model_dir: str | Path,
    export_uri: str,
    config: Config | None = None,
    warmup_photos: Sequence[bytes | str | Path] = (),
    model_name: str | None = None,
) -> str:
    """Export a trained model folder as one SavedModel version folder.

    Args:
        model_dir: output folder of `fashion train` (`model.keras`, `labels.json`, `config.yaml`).
        export_uri: the version folder to create, e.g. `<model_base_path>/3` (local or `gs://`).
            It must not exist yet.
        config: the resolved config; defaults to the `config.yaml` stored in `model_dir`.
        warmup_photos: encoded photos or paths to put in the warmup file (synthetic photos covering
            every decode path are always added).
        model_name: model name written into the warmup requests (default config.serving.model_name).

    Returns:
        `export_uri`.

    Raises:
        StepError: the model folder is incomplete, or `export_uri` already exists.
    """
    import tensorflow as tf

    model_dir = Path(model_dir)
    cfg = _model_folder_config(model_dir, config)
    labels_path = model_dir / layouts.LABELS
    if not labels_path.is_file():
        raise StepError(f"{labels_path} not found: the model folder must hold the label schema")
    if storage.exists(export_uri):
        raise StepError(f"{export_uri} already exists: versions are immutable, export to a new version number")
    schema = LabelSchema.load(labels_path)
    model = load_model(model_dir)
    height, width = model_image_size(model)
    module = build_serving_module(
        model,
        schema,
        cfg.preprocess.resize_mode,
        cfg.preprocess.pad_color,
        cfg.serving.max_image_pixels,
        flip_tta=cfg.serving.flip_tta,
    )
    photos = [p if isinstance(p, bytes) else Path(p).read_bytes() for p in warmup_photos]
    photos += synthetic_photos(height, width)

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        local = Path(tmp) / "version"
        tf.saved_model.save(module, str(local), signatures={sig.SIGNATURE_NAME: module.serve.get_concrete_function()})
        warmup_path = local / sig.WARMUP_FILE
        warmup_path.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(warmup_path)) as writer:
            for record in warmup_requests(photos, model_name or cfg.serving.model_name, cfg.serving.max_batch_size):
                writer.write(record)
        info = {
            "image_height": height,
            "image_width": width,
            "resize_mode": cfg.preprocess.resize_mode,
            "pad_color": list(cfg.preprocess.pad_color),
            "labels": schema.sizes,
            "flip_tta": cfg.serving.flip_tta,
        }
        (local / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
        store.publish_version_dir(local, export_uri)
    log.info("exported %s -> %s (%dx%d, %s)", model_dir, export_uri, height, width, cfg.preprocess.resize_mode)
    return export_uri
