"""Input limits inside the exported model: a photo's header is read and a bomb is refused before any decode."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from components.register import export
from core.config import load_config
from tests.support import serving as testing


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels: its signature, IHDR and a first tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))


@pytest.mark.parametrize(
    "fmt, options, mode",
    [
        ("JPEG", {}, "RGB"),
        ("PNG", {}, "RGB"),
        ("GIF", {}, "P"),
        ("BMP", {}, "RGB"),
        ("WEBP", {"lossless": True}, "RGB"),
        ("WEBP", {"quality": 80}, "RGB"),
        ("WEBP", {"quality": 80}, "RGBA"),
    ],
)
def test_the_header_gives_the_pixel_count_of_every_format(fmt, options, mode):
    import tensorflow as tf

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    data = _encode(img, fmt, **options)
    assert int(export.header_pixels(tf.constant(data))) == 37 * 53


def test_a_top_down_bmp_counts_its_pixels():
    import tensorflow as tf

    data = bytearray(_encode(Image.new("RGB", (10, 4)), "BMP"))
    data[22:26] = struct.pack("<i", -4)
    assert int(export.header_pixels(tf.constant(bytes(data)))) == 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    config = load_config("ci", overrides={"serving": {"max_image_pixels": 5_000_000}})
    base = root / "fashion"
    export.export_model(testing.make_model_dir(root / "model"), str(base / "1"), config=config)
    config_file = testing.write_models_config(root / "models.config", [{"name": "fashion", "base_path": str(base)}])
    srv = testing.start_local_server(config_file)
    yield srv
    srv.stop()


def test_a_decompression_bomb_is_refused_before_decoding_and_the_server_keeps_serving(server, samples_dir):
    from serving.client import PredictionClient

    bomb = _png_header(20000, 20000)
    with PredictionClient(f"127.0.0.1:{server.grpc_port}", "fashion", timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.predict([bomb])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pixel limit" in err.value.details()
        # Within the limit (3,000 x 1,000 = 3 Mpx) the same header shape passes the check and
        # fails later, at decode, as the truncated photo it is.
        with pytest.raises(grpc.RpcError) as err:
            client.predict([_png_header(3000, 1000)])
        assert "pixel limit" not in err.value.details()
        good = sorted(samples_dir.glob("*.jpg"))[0].read_bytes()
        assert client.predict([good])[0]["model_version"] == 1
