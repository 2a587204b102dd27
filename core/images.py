"""Photo operations: the one decode that ingest checks and preprocessing use, resize and encode.

They work on Pillow images and raise `ImageError` on bad input; ingest and the Beam transforms
turn those errors into report entries and rejects. The same functions serve the pipeline and the
single-process benchmark baseline.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = {"jpeg": "JPEG", "png": "PNG"}


class ImageError(ValueError):
    """A photo cannot be decoded, resized or encoded; the message says why."""


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG/... bytes into a fully loaded RGB image.

    Raises:
        ImageError: the bytes are empty, not an image, truncated, or have a zero-sized side.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Load now: Pillow decodes lazily, and a truncated file only fails on load.
            img.load()
            rgb = _to_rgb(img)
    except UnidentifiedImageError as err:
        raise ImageError("cannot decode image: not a recognised image format") from err
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image: {err}") from err
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any Pillow mode, as TensorFlow's `decode_image(channels=3, dtype=uint8)` gives it.

    Pillow's own `convert("RGB")` clips 16- and 32-bit greyscale to 255 (an almost white photo);
    the served graph keeps the high byte, so 16-bit samples are shifted down by 8 bits here too.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.uint32)
        # Mode "I" holds 16-bit PNG samples too (Pillow widens some of them); anything wider is clipped.
        return Image.fromarray(np.minimum(wide >> 8, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def resize_image(
    img: Image.Image,
    height: int,
    width: int,
    mode: str = "pad",
    pad_color: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Bring an RGB image to exactly `height` x `width`.

    Args:
        img: the decoded image.
        height: target height in pixels.
        width: target width in pixels.
        mode: `pad` keeps the aspect ratio and centres the photo on a `pad_color` canvas (product
            photos sit on a plain background, so the padding looks like more background);
            `stretch` scales each side independently.
        pad_color: RGB of the padding.

    Raises:
        ImageError: unknown mode or an image without pixels.
    """
    if img.width < 1 or img.height < 1:
        raise ImageError(f"image has no pixels ({img.width}x{img.height})")
    if img.size == (width, height):
        return img
    if mode == "stretch":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    if mode != "pad":
        raise ImageError(f"unknown resize mode {mode!r}: use 'pad' or 'stretch'")
    scale = min(width / img.width, height / img.height)
    new_w = min(width, max(1, round(img.width * scale)))
    new_h = min(height, max(1, round(img.height * scale)))
    scaled = img if (new_w, new_h) == img.size else img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), tuple(pad_color))
    canvas.paste(scaled, ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def encode_image(img: Image.Image, image_format: str = "jpeg", jpeg_quality: int = 95) -> bytes:
    """Encode an RGB image as JPEG or PNG bytes.

    Raises:
        ImageError: unknown format.
    """
    fmt = FORMATS.get(image_format)
    if fmt is None:
        raise ImageError(f"unknown image format {image_format!r}: use one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format=fmt, quality=jpeg_quality)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()
