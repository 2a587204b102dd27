"""One decode for training and serving: preprocessing's Pillow path and the exported graph see the same pixels.

Each photo mode and format a catalogue may hold is made from a real product photo, decoded and
fitted by `core.images` (what the Beam step stores) and by the exported model's own decode and
fit (what the served model sees), and compared pixel by pixel after the same resize.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core import images

HEIGHT, WIDTH = 80, 60
PAD = (255, 255, 255)


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _variants(photo: Image.Image) -> dict[str, bytes]:
    grey = photo.convert("L")
    wide = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    return {
        "rgb-jpeg": _encode(photo, "JPEG", quality=95),
        "rgb-png": _encode(photo, "PNG"),
        "grey8-png": _encode(grey, "PNG"),
        "grey8-jpeg": _encode(grey, "JPEG", quality=95),
        "grey16-png": _encode(wide, "PNG"),
        "grey-alpha-png": _encode(grey.convert("LA"), "PNG"),
        "rgba-png": _encode(rgba, "PNG"),
        "palette-png": _encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "cmyk-jpeg": _encode(photo.convert("CMYK"), "JPEG", quality=95),
        "gif": _encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "bmp": _encode(photo, "BMP"),
        "webp": _encode(photo, "WEBP", lossless=True),
    }


@pytest.fixture(scope="module")
def variants(samples_dir) -> dict[str, bytes]:
    photo = Image.open(sorted(samples_dir.glob("*.jpg"))[0]).convert("RGB")
    return _variants(photo)


def _served_pixels(data: bytes) -> np.ndarray:
    import tensorflow as tf

    from components.register.export import decode_photo

    return decode_photo(tf.constant(data), HEIGHT, WIDTH, "pad", PAD).numpy().astype(np.float32)


def _stored_pixels(data: bytes) -> np.ndarray:
    fitted = images.resize_image(images.decode_image(data), HEIGHT, WIDTH, "pad", PAD)
    return np.asarray(fitted, dtype=np.float32)


@pytest.mark.parametrize(
    "kind",
    [
        "rgb-jpeg",
        "rgb-png",
        "grey8-png",
        "grey8-jpeg",
        "grey16-png",
        "grey-alpha-png",
        "rgba-png",
        "palette-png",
        "cmyk-jpeg",
        "gif",
        "bmp",
        "webp",
    ],
)
def test_training_and_serving_decode_the_same_pixels(variants, kind):
    stored, served = _stored_pixels(variants[kind]), _served_pixels(variants[kind])
    assert stored.shape == served.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(stored - served).mean() < 1.0, kind


def test_sixteen_bit_greyscale_is_not_stored_white(variants):
    # A mid-grey 16-bit photo must stay mid-grey: Pillow's plain convert("RGB") made it ~254.
    wide = Image.fromarray(np.full((40, 30), 32768, dtype=np.uint16))
    assert np.asarray(images.decode_image(_encode(wide, "PNG"))).mean() == pytest.approx(128, abs=1)
