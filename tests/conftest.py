"""Shared fixtures: paths to real data, a real GCS emulator, resolved configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_ZIP = REPO.parent / "shared" / "data" / "fashion-product-images-small.zip"
DEMO_DIR = REPO / "data" / "demo"
SAMPLES_DIR = REPO / "data" / "samples"


@pytest.fixture(autouse=True, scope="session")
def command_logs_in_a_temporary_folder(tmp_path_factory):
    """The log file every in-process `fashion` command writes goes under the test session's temporary folder."""
    from pipeline import console

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(console, "DEFAULT_LOG_DIR", str(tmp_path_factory.mktemp("command-logs")))
        yield


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    """The full shared dataset (37,462 photos); tests needing it fail loudly when it is absent."""
    assert SHARED_ZIP.is_file(), f"shared dataset missing at {SHARED_ZIP}"
    return SHARED_ZIP


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The bundled 1,200-photo demo catalogue."""
    return DEMO_DIR


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Held-out photos that are in no catalogue."""
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real gcp-storage-emulator on a loopback port; STORAGE_EMULATOR_HOST points at it.

    Yields the google-cloud-storage client bound to it.
    """
    from gcp_storage_emulator.server import create_server

    from core import storage

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    storage._client.cache_clear()
    try:
        yield storage.gcs_client()
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        storage._client.cache_clear()
