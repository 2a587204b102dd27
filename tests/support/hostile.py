"""Hostile inputs for serving tests and benchmarks, and the resident memory of the server under them.

`blank_png` builds the decompression bomb of issue 14 (a 20000 x 20000 photo in about 1.2 MB)
as a complete, valid PNG without ever holding its pixels; `ResidentMemory` reads a process's
resident set from /proc while requests run.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

_BLOCK = bytes(1 << 20)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def blank_png(width: int, height: int, channels: int = 3) -> bytes:
    """A complete PNG of `width` x `height` black pixels (8-bit RGB, or grey for `channels=1`).

    Every row is a filter byte and zeros, so the image data is one long run of zeros: it is
    deflated as one 1 MiB block repeated (each ends with a full flush, which makes the repeats
    byte-identical), so building a 1.2 GB image costs one block's compression, not the gigabyte's.
    Any decoder (Pillow, libpng, TensorFlow's) inflates it to `height * (1 + width * channels)` bytes.
    """
    colour_type = {1: 0, 3: 2}[channels]
    total = height * (1 + width * channels)
    full, rest = divmod(total, len(_BLOCK))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(_BLOCK) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(rest)) + tail.flush()
    checksum = 1
    for _ in range(full):
        checksum = zlib.adler32(_BLOCK, checksum)
    checksum = zlib.adler32(bytes(rest), checksum)
    stream = b"\x78\xda" + block * full + last + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` now (Linux /proc)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The largest resident set size process `pid` has had since it started (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


class ResidentMemory:
    """Samples a process's resident set every `interval_s` while the `with` block runs; `peak` is the largest.

    Sampling catches a decode that holds gigabytes for a second or more; VmHWM would too, but it
    also remembers the process's start-up, which is no request's doing.
    """

    def __init__(self, pid: int, interval_s: float = 0.005):
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> ResidentMemory:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))
