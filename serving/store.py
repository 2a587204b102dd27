"""The model store: numbered SavedModel version folders under a model base path (local or `gs://`).

TF Serving's layout: `<base path>/<version>/saved_model.pb`. A version is complete once its
`saved_model.pb` exists; servers poll the base path and consider only complete versions, so
versions are published so that no server sees half of one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from core import storage

SAVED_MODEL_FILE = "saved_model.pb"
# The highest version number ever published under a base path. Its name is not a number, so
# servers skip it; it outlives the folder of a version that failed and was removed.
HIGHEST_VERSION_FILE = ".highest_version"
_VERSION_DIR = re.compile(r"^[0-9]+\Z")


def version_uri(base_path: str, version: int) -> str:
    """The folder of one version under a base path."""
    return storage.join(base_path, str(version))


def version_dirs(base_path: str) -> dict[int, str]:
    """Version number -> folder name of the complete SavedModels under a base path.

    A folder is a version when its whole name is a decimal number, leading zeros included, as TF
    Serving reads them: `00000123` is version 123 and is opened as `00000123`. When two folders name
    the same number, the last in name order wins, as in TF Serving (which logs the duplicate).
    """
    found: dict[int, str] = {}
    if storage.is_gcs(base_path):
        if not storage.exists(base_path):
            return {}
        root = base_path.rstrip("/") + "/"
        names = set()
        for uri in storage.list_files(base_path):
            parts = uri[len(root) :].split("/")
            if len(parts) == 2 and _VERSION_DIR.match(parts[0]) and parts[1] == SAVED_MODEL_FILE:
                names.add(parts[0])
    else:
        root_dir = Path(base_path)
        if not root_dir.is_dir():
            return {}
        names = {p.name for p in root_dir.iterdir() if _VERSION_DIR.match(p.name) and (p / SAVED_MODEL_FILE).is_file()}
    for name in sorted(names):
        found[int(name)] = name
    return found


def list_versions(base_path: str) -> list[int]:
    """Numeric version folders under a base path that hold a complete SavedModel, ascending."""
    return sorted(version_dirs(base_path))


def highest_published(base_path: str) -> int:
    """The highest version number `record_published` wrote under a base path; 0 when none."""
    uri = storage.join(base_path, HIGHEST_VERSION_FILE)
    if not storage.exists(uri):
        return 0
    text = storage.read_bytes(uri).decode().strip()
    return int(text) if text.isdigit() else 0


def record_published(base_path: str, version: int) -> None:
    """Remember that `version` was published under a base path, so its number is never handed out again.

    A server treats a version number as one servable; a replica that saw a failed version may
    still hold it, so a later, different model must not come back under the same number.
    """
    if version > highest_published(base_path):
        storage.write_bytes(storage.join(base_path, HIGHEST_VERSION_FILE), f"{version}\n".encode())


def publish_version_dir(local_dir: str | Path, version_uri: str) -> None:
    """Copy a finished SavedModel folder into place so a polling server never sees half of it.

    Locally the folder is copied under a hidden name and renamed (atomic on one filesystem). On
    `gs://` there is no rename: files are uploaded with `saved_model.pb` last, and servers only
    consider a version once that file exists.
    """
    local_dir = Path(local_dir)
    if storage.is_gcs(version_uri):
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == SAVED_MODEL_FILE)
        for path in files:
            storage.write_bytes(storage.join(version_uri, str(path.relative_to(local_dir))), path.read_bytes())
        return
    target = Path(version_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(local_dir, staging)
    staging.rename(target)


def remove_version_dir(version_uri: str) -> None:
    """Delete a version folder and everything in it; a folder that is already gone is fine."""
    if storage.is_gcs(version_uri):
        bucket, prefix = storage.split_gcs(version_uri)
        client = storage.gcs_client()
        for blob in client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/"):
            blob.delete()
    else:
        shutil.rmtree(version_uri, ignore_errors=True)
