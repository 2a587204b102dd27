"""TFRecord framing without TensorFlow, so shard writers work on any file object Beam can open.

Format (TensorFlow's): uint64 length, masked CRC32C of the length, payload, masked CRC32C of the
payload; all little-endian.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import google_crc32c


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """One TFRecord: the framed bytes of `payload`."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), payload, struct.pack("<I", _masked_crc(payload))))


def write_records(handle: BinaryIO, payloads: list[bytes]) -> int:
    """Append every payload as a TFRecord to an open binary file; returns the bytes written."""
    data = b"".join(frame_record(p) for p in payloads)
    handle.write(data)
    return len(data)
