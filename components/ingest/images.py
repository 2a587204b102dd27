"""Checking that product photos are usable: they decode fully, convert to RGB, and are not degenerate."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from components.common import storage

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageCheck:
    """Result of checking one photo: its size when usable, else the reason it is not."""

    uri: str
    ok: bool
    width: int = 0
    height: int = 0
    error: str = ""


def check_image_bytes(data: bytes, min_side: int = 8) -> tuple[int, int]:
    """Decode `data` completely and return (width, height).

    Raises:
        ValueError: empty data, not an image, truncated, or smaller than `min_side` pixels.

    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except UnidentifiedImageError as err:
        raise ValueError("not a recognised image format") from err
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode: {err}") from err
    width, height = rgb.size
    if min(width, height) < min_side:
        raise ValueError(f"degenerate size {width}x{height} (minimum side {min_side} px)")
    return width, height


def check_image(uri: str, min_side: int = 8) -> ImageCheck:
    """Read and check one photo; never raises for a bad photo, it reports it."""
    try:
        data = storage.read_bytes(uri)
        width, height = check_image_bytes(data, min_side)
    except (ValueError, OSError) as err:
        return ImageCheck(uri=uri, ok=False, error=str(err))
    return ImageCheck(uri=uri, ok=True, width=width, height=height)


def _check_chunk(args: tuple[list[str], int]) -> list[ImageCheck]:
    uris, min_side = args
    return [check_image(u, min_side) for u in uris]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def check_images(
    uris: Iterable[str],
    min_side: int = 8,
    workers: int = 2,
    progress: Callable[[int, int, float], None] | None = None,
    chunk_size: int = 256,
) -> list[ImageCheck]:
    """Check many photos in parallel, in input order.

    Local files use processes (decoding is CPU-bound); `gs://` objects use threads (network-bound).

    Args:
        uris: paths or gs:// URIs.
        min_side: smallest acceptable width/height in pixels.
        workers: parallel workers; 1 checks in this process.
        progress: called as progress(done, total, seconds) after each chunk.
        chunk_size: photos per task sent to a worker.

    """
    uris = list(uris)
    total = len(uris)
    start = time.perf_counter()
    results: list[ImageCheck] = []

    def _report() -> None:
        if progress:
            progress(len(results), total, time.perf_counter() - start)

    if workers <= 1 or total <= chunk_size:
        for chunk in _chunks(uris, chunk_size):
            results += _check_chunk((chunk, min_side))
            _report()
        return results
    remote = any(storage.is_gcs(u) for u in uris)
    pool: Executor = ThreadPoolExecutor(workers * 4) if remote else ProcessPoolExecutor(workers)
    with pool:
        for chunk_result in pool.map(_check_chunk, ((c, min_side) for c in _chunks(uris, chunk_size))):
            results += chunk_result
            _report()
    return results
