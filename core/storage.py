"""Uniform file access for local paths and `gs://` URIs (google-cloud-storage).

The GCS client honours `STORAGE_EMULATOR_HOST`, so the same calls run against the
gcp-storage-emulator in tests and against Cloud Storage in production.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class StorageError(OSError):
    """A URI cannot be read or written; the message names the URI and what to check."""


def is_gcs(uri: str) -> bool:
    """True for `gs://bucket/...` URIs."""
    return str(uri).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_gcs(uri):
        raise StorageError(f"{uri}: not a gs:// URI")
    rest = str(uri)[5:]
    bucket, _, blob = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name")
    return bucket, blob


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a gs:// URI."""
    if is_gcs(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + str(p).strip("/")
        return out
    return str(Path(base, *parts))


@functools.lru_cache(maxsize=4)
def _client(emulator: str | None, project: str | None):
    from google.cloud import storage

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def gcs_client():
    """A google-cloud-storage client; anonymous against an emulator when one is configured."""
    return _client(os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT"))


def _bucket(uri: str):
    from google.api_core import exceptions

    name, _ = split_gcs(uri)
    client = gcs_client()
    try:
        bucket = client.lookup_bucket(name)
    except exceptions.GoogleAPIError as err:
        raise StorageError(f"{uri}: cannot reach bucket {name!r}: {err}") from err
    if bucket is None:
        raise StorageError(f"{uri}: bucket {name!r} does not exist (create it, or check the URI and credentials)")
    return bucket


def read_bytes(uri: str) -> bytes:
    """The whole content of a file or object."""
    if is_gcs(uri):
        from google.api_core import exceptions

        _, blob = split_gcs(uri)
        try:
            return _bucket(uri).blob(blob).download_as_bytes()
        except exceptions.NotFound as err:
            raise StorageError(f"{uri}: object not found") from err
    try:
        return Path(uri).read_bytes()
    except OSError as err:
        raise StorageError(f"{uri}: {err.strerror or err}") from err


def write_bytes(uri: str, data: bytes) -> None:
    """Create or replace a file or object."""
    if is_gcs(uri):
        _, blob = split_gcs(uri)
        _bucket(uri).blob(blob).upload_from_string(data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exists(uri: str) -> bool:
    """Whether a file, folder or object (or any object under a prefix) exists."""
    if is_gcs(uri):
        _, blob = split_gcs(uri)
        bucket = _bucket(uri)
        if blob and bucket.blob(blob).exists():
            return True
        prefix = blob.rstrip("/") + "/" if blob else ""
        return any(True for _ in gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))
    return Path(uri).exists()


def list_files(uri: str) -> Iterator[str]:
    """Every file under a folder or prefix, recursively, as full URIs/paths, sorted."""
    if is_gcs(uri):
        name, blob = split_gcs(uri)
        prefix = blob.rstrip("/") + "/" if blob else ""
        for b in gcs_client().list_blobs(_bucket(uri), prefix=prefix):
            if not b.name.endswith("/"):
                yield f"gs://{name}/{b.name}"
        return
    root = Path(uri)
    if not root.exists():
        raise StorageError(f"{uri}: no such folder")
    yield from (str(p) for p in sorted(root.rglob("*")) if p.is_file())


def copy_tree(src: str, dst: str) -> int:
    """Copy every file under `src` to the same relative path under `dst`; returns the count."""
    count = 0
    src_root = src.rstrip("/")
    for uri in list_files(src):
        rel = uri[len(src_root) :].lstrip("/")
        target = join(dst, rel)
        if not is_gcs(uri) and not is_gcs(target):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(uri, target)
        else:
            write_bytes(target, read_bytes(uri))
        count += 1
    return count


def local_copy(uri: str, cache_dir: str | Path) -> Path:
    """A local path for `uri`: itself when local, else a downloaded copy under `cache_dir`."""
    if not is_gcs(uri):
        return Path(uri)
    bucket, blob = split_gcs(uri)
    target = Path(cache_dir) / bucket / blob
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read_bytes(uri))
    return target
