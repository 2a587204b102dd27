"""Opening a catalogue source: a folder, a `.zip` of the Kaggle layout, or a `gs://` prefix."""

from __future__ import annotations

import logging
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from components.ingest.checks import IMAGE_SUFFIXES
from core import layouts, storage
from core.errors import StepError

log = logging.getLogger(__name__)

IMAGES_DIR = "images"


@dataclass
class Source:
    """A catalogue ready to read: the styles.csv text and every photo file by its stem (id).

    Attributes:
        uri: the source as given.
        styles_text: content of styles.csv.
        images: id -> image URI (local path or gs:// URI), one per id.
        duplicate_images: image URIs whose id already had a photo (e.g. 12.jpg and 12.png).
        zip_path: for a zip source, the archive; its photos are not extracted yet.
        zip_members: for a zip source, target path in `images` -> archive member name.
    """

    uri: str
    styles_text: str
    images: dict[str, str]
    duplicate_images: list[str]
    zip_path: str = ""
    zip_members: dict[str, str] = field(default_factory=dict)


def _index_images(uris: list[str]) -> tuple[dict[str, str], list[str]]:
    images: dict[str, str] = {}
    duplicates: list[str] = []
    for uri in sorted(uris):
        name = posixpath.basename(uri)
        stem, suffix = posixpath.splitext(name)
        if suffix.lower() not in IMAGE_SUFFIXES or not stem:
            continue
        if stem in images:
            duplicates.append(uri)
        else:
            images[stem] = uri
    return images, duplicates


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; reading it as Latin-1", where)
        return data.decode("latin-1")


def _open_folder(root: Path) -> Source:
    styles = root / layouts.STYLES
    if not styles.is_file():
        raise StepError(f"{root}: no {layouts.STYLES} found; expected the Kaggle layout styles.csv + images/<id>.jpg")
    image_dir = root / IMAGES_DIR
    files = [str(p) for p in image_dir.iterdir() if p.is_file()] if image_dir.is_dir() else []
    images, dups = _index_images(files)
    return Source(str(root), _decode(styles.read_bytes(), str(styles)), images, dups)


def _open_zip(path: Path, extract_dir: Path) -> Source:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise StepError(f"{path}: not a readable zip archive ({err})") from err
    with zf:
        names = zf.namelist()
        styles = [n for n in names if posixpath.basename(n) == layouts.STYLES]
        if not styles:
            raise StepError(f"{path}: the archive has no {layouts.STYLES}; expected styles.csv + images/<id>.jpg")
        styles_name = min(styles, key=len)
        prefix = posixpath.dirname(styles_name)
        image_prefix = posixpath.join(prefix, IMAGES_DIR) + "/"
        members = [
            n for n in names if n.startswith(image_prefix) and not n.endswith("/") and "/" not in n[len(image_prefix) :]
        ]
        target = extract_dir.resolve() / IMAGES_DIR
        target.mkdir(parents=True, exist_ok=True)
        # Photos are extracted by the check step, which reads each member once for both jobs.
        members_by_target = {str(target / posixpath.basename(n)): n for n in members}
        text = _decode(zf.read(styles_name), f"{path}!{styles_name}")
    images, dups = _index_images(list(members_by_target))
    return Source(str(path), text, images, dups, zip_path=str(path), zip_members=members_by_target)


def _open_gcs(uri: str) -> Source:
    root = uri.rstrip("/")
    styles_uri = storage.join(root, layouts.STYLES)
    try:
        text = _decode(storage.read_bytes(styles_uri), styles_uri)
    except storage.StorageError as err:
        raise StepError(f"cannot read the catalogue at {uri}: {err}") from err
    images, dups = _index_images(list(storage.list_files(storage.join(root, IMAGES_DIR))))
    return Source(uri, text, images, dups)


def open_source(uri: str, work_dir: str | Path) -> Source:
    """Open a catalogue at `uri`; a zip is extracted under `work_dir`.

    Raises:
        StepError: the source does not exist or does not have the expected layout.

    """
    if storage.is_gcs(uri):
        return _open_gcs(uri)
    path = Path(uri).expanduser().resolve()
    if not path.exists():
        raise StepError(f"source {uri} does not exist (give a folder, a .zip, or a gs://bucket/prefix)")
    if path.is_dir():
        return _open_folder(path)
    if zipfile.is_zipfile(path):
        return _open_zip(path, Path(work_dir))
    raise StepError(f"source {uri} is neither a folder, a .zip archive nor a gs:// URI")
