"""Checking that product photos are usable, in parallel: they decode fully, convert to RGB, and are not degenerate."""

from __future__ import annotations

import functools
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import storage
from core.images import decode_image

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
    rgb = decode_image(data)
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


@functools.lru_cache(maxsize=2)
def _open_zip_cached(zip_path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    # Reading a large archive's central directory costs far more than one small photo: each
    # worker process opens the archive once and keeps the handle for all of its chunks.
    return zipfile.ZipFile(zip_path)


def _read_member(zf: zipfile.ZipFile, member: str, max_bytes: int) -> bytes:
    """A member's bytes, streamed and cut off past `max_bytes` (a header can understate the size)."""
    with zf.open(member) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than its header says and over the size limit ({max_bytes / 2**20:g} MB)")
    return data


def _extract_chunk(args: tuple[str, list[tuple[str, str]], int, int]) -> list[ImageCheck]:
    """Extract (member, target) pairs of a zip, checking the bytes read; only usable photos are written."""
    zip_path, pairs, min_side, max_bytes = args
    out = []
    stat = os.stat(zip_path)
    zf = _open_zip_cached(zip_path, stat.st_mtime_ns, stat.st_size)
    for member, target in pairs:
        try:
            data = _read_member(zf, member, max_bytes)
            width, height = check_image_bytes(data, min_side)
            Path(target).write_bytes(data)
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            out.append(ImageCheck(uri=target, ok=False, error=str(err)))
            continue
        out.append(ImageCheck(uri=target, ok=True, width=width, height=height))
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
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
    tasks = [(c, min_side) for c in _chunks(uris, chunk_size)]
    remote = any(storage.is_gcs(u) for u in uris)
    return _run(_check_chunk, tasks, len(uris), workers, remote, progress)


def extract_and_check(
    zip_path: str,
    pairs: list[tuple[str, str]],
    min_side: int = 8,
    workers: int = 2,
    progress: Callable[[int, int, float], None] | None = None,
    chunk_size: int = 256,
    max_member_bytes: int = 64 * 1024 * 1024,
) -> list[ImageCheck]:
    """Extract (member, target path) pairs of a zip and check each photo from the bytes just read.

    One streamed read per photo serves both the check and the copy to disk; a photo that fails
    the check is never written. Chunks run in parallel processes, each with its own handle on the
    archive. Results are in input order.
    """
    tasks = [(zip_path, list(c), min_side, max_member_bytes) for c in _chunks(pairs, chunk_size)]
    return _run(_extract_chunk, tasks, len(pairs), workers, False, progress)


def _run(
    fn: Callable[[Any], list[ImageCheck]],
    tasks: list[Any],
    total: int,
    workers: int,
    remote: bool,
    progress: Callable[[int, int, float], None] | None,
) -> list[ImageCheck]:
    start = time.perf_counter()
    results: list[ImageCheck] = []

    def _collect(chunk_result: list[ImageCheck]) -> None:
        results.extend(chunk_result)
        if progress:
            progress(len(results), total, time.perf_counter() - start)

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            _collect(fn(task))
        return results
    pool: Executor = ThreadPoolExecutor(workers * 4) if remote else ProcessPoolExecutor(workers)
    with pool:
        for chunk_result in pool.map(fn, tasks):
            _collect(chunk_result)
    return results
