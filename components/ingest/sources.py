"""Opening a catalogue source: a folder, a `.zip` of the Kaggle layout, or a `gs://` prefix."""

from __future__ import annotations

import codecs
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
        encoding: how styles.csv was decoded (`utf-8`, `utf-8-sig`, or `latin-1` as a fallback).
        encoding_fallback: True when styles.csv was not valid UTF-8 and was read as Latin-1.
        ignored: files of the source that are not photos of the catalogue, each with the reason.
        archive: for a zip source, the count of its members by kind (see `ZipLimits`).
    """

    uri: str
    styles_text: str
    images: dict[str, str]
    duplicate_images: list[str]
    zip_path: str = ""
    zip_members: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    encoding_fallback: bool = False
    ignored: list[dict[str, str]] = field(default_factory=list)
    archive: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ZipLimits:
    """What a zip member may be before it is refused unread.

    Attributes:
        max_member_bytes: uncompressed size of one member.
        max_total_bytes: uncompressed size of all the photos taken from the archive.
        max_compression_ratio: uncompressed over compressed size of one member (zip bombs).
    """

    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 64 * 1024**3
    max_compression_ratio: float = 100.0


def normalise_id(item_id: str) -> str:
    """The catalogue id as rows and photo file names both spell it: surrounding spaces removed."""
    return item_id.strip()


def _index_images(uris: list[str], names: dict[str, str] | None = None) -> tuple[dict[str, str], list[str], list]:
    """Photos by id, later duplicates of an id, and the files that are not photos (with the reason)."""
    images: dict[str, str] = {}
    duplicates: list[str] = []
    ignored: list[dict[str, str]] = []
    for uri in sorted(uris):
        name = posixpath.basename(uri)
        stem, suffix = posixpath.splitext(name)
        stem = normalise_id(stem)
        if suffix.lower() not in IMAGE_SUFFIXES or not stem:
            reason = f"not an image file name (expected <id>{'/'.join(IMAGE_SUFFIXES)})"
            ignored.append({"name": (names or {}).get(uri, uri), "reason": reason})
            continue
        if stem in images:
            duplicates.append(uri)
        else:
            images[stem] = uri
    return images, duplicates, ignored


def _decode(data: bytes, where: str) -> tuple[str, str, bool]:
    """(text, encoding, fell back) of styles.csv: UTF-8 (with or without a BOM), else Latin-1."""
    bom = data.startswith(codecs.BOM_UTF8)
    body = data[len(codecs.BOM_UTF8) :] if bom else data
    try:
        return body.decode("utf-8"), "utf-8-sig" if bom else "utf-8", False
    except UnicodeDecodeError as err:
        log.warning("%s is not UTF-8 (%s); reading it as Latin-1", where, err)
        return body.decode("latin-1"), "latin-1", True


def _unsafe(name: str) -> bool:
    """A member name that could point outside the extraction folder (absolute, `..`, drive, backslash)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (len(name) > 1 and name[1] == ":")


def _open_folder(root: Path) -> Source:
    styles = root / layouts.STYLES
    image_dir = root / IMAGES_DIR
    files = [str(p) for p in image_dir.iterdir() if p.is_file()] if image_dir.is_dir() else []
    images, dups, ignored = _index_images(files)
    text, encoding, fallback = _decode(styles.read_bytes(), str(styles))
    return Source(str(root), text, images, dups, encoding=encoding, encoding_fallback=fallback, ignored=ignored)


def _open_zip(path: Path, extract_dir: Path, limits: ZipLimits) -> Source:
    """Index a zip's members without reading them: every member is a photo, styles.csv, or reported."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise StepError(f"{path}: not a readable zip archive ({err})") from err
    with zf:
        infos = zf.infolist()
        styles = [
            i.filename for i in infos if posixpath.basename(i.filename) == layouts.STYLES and not _unsafe(i.filename)
        ]
        if not styles:
            raise StepError(f"{path}: the archive has no {layouts.STYLES}; expected styles.csv + images/<id>.jpg")
        styles_name = min(styles, key=len)
        styles_info = zf.getinfo(styles_name)
        if styles_info.file_size > limits.max_member_bytes:
            raise StepError(
                f"{path}!{styles_name} is {styles_info.file_size / 2**20:.0f} MB, over data.max_member_mb: "
                "raise the limit if the catalogue really is that large"
            )
        prefix = posixpath.dirname(styles_name)
        image_prefix = posixpath.join(prefix, IMAGES_DIR) + "/"
        target = extract_dir.resolve() / IMAGES_DIR
        target.mkdir(parents=True, exist_ok=True)
        ignored: list[dict[str, str]] = []
        members_by_target: dict[str, str] = {}
        directories, total = 0, 0
        for info in infos:
            name = info.filename
            if name == styles_name:
                continue
            if info.is_dir():
                directories += 1
                continue
            reason = _member_problem(info, name, image_prefix, limits)
            if not reason and total + info.file_size > limits.max_total_bytes:
                reason = f"over the archive's total size limit (data.max_archive_gb {limits.max_total_bytes / 2**30:g})"
            if reason:
                ignored.append({"name": name, "reason": reason})
                continue
            total += info.file_size
            members_by_target[str(target / posixpath.basename(name))] = name
        # Photos are extracted by the check step, which reads each member once for both jobs.
        text, encoding, fallback = _decode(zf.read(styles_name), f"{path}!{styles_name}")
    images, dups, not_photos = _index_images(list(members_by_target), members_by_target)
    kept = {*images.values(), *dups}
    members_by_target = {t: m for t, m in members_by_target.items() if t in kept}
    archive = {"members": len(infos), "styles": 1, "directories": directories, "candidates": len(members_by_target)}
    return Source(
        str(path),
        text,
        images,
        dups,
        zip_path=str(path),
        zip_members=members_by_target,
        encoding=encoding,
        encoding_fallback=fallback,
        ignored=ignored + not_photos,
        archive=archive,
    )


def _member_problem(info: zipfile.ZipInfo, name: str, image_prefix: str, limits: ZipLimits) -> str:
    """Why a zip member is not taken as a photo ('' when it is a candidate)."""
    if _unsafe(name):
        return "unsafe path (absolute or with '..'): never extracted"
    if not name.startswith(image_prefix):
        return f"outside {IMAGES_DIR}/: only {image_prefix}<id>.jpg members are photos"
    if "/" in name[len(image_prefix) :]:
        return f"in a sub-folder of {IMAGES_DIR}/: photos must sit directly in {image_prefix}"
    if info.file_size > limits.max_member_bytes:
        size_mb, limit_mb = info.file_size / 2**20, limits.max_member_bytes / 2**20
        return f"over the size limit ({size_mb:.1f} MB > data.max_member_mb {limit_mb:g})"
    if info.compress_size and info.file_size / info.compress_size > limits.max_compression_ratio:
        ratio = info.file_size / info.compress_size
        return f"compression ratio {ratio:.0f}:1 over data.max_compression_ratio {limits.max_compression_ratio:g}"
    return ""


def _open_gcs(uri: str) -> Source:
    root = uri.rstrip("/")
    styles_uri = storage.join(root, layouts.STYLES)
    try:
        text, encoding, fallback = _decode(storage.read_bytes(styles_uri), styles_uri)
    except storage.StorageError as err:
        raise StepError(f"cannot read the catalogue at {uri}: {err}") from err
    images, dups, ignored = _index_images(list(storage.list_files(storage.join(root, IMAGES_DIR))))
    return Source(uri, text, images, dups, encoding=encoding, encoding_fallback=fallback, ignored=ignored)


def check_source(uri: str) -> str:
    """Check, without reading the catalogue, that `uri` can be one; returns its kind.

    Cheap enough to run before a pipeline starts, so a wrong source fails in a second with the
    fix instead of after the steps before ingest have run.

    Returns:
        `gcs`, `folder` or `zip`.

    Raises:
        StepError: the source does not exist or is no catalogue.
    """
    if storage.is_gcs(uri):
        styles_uri = storage.join(uri.rstrip("/"), layouts.STYLES)
        try:
            found = storage.exists(styles_uri)
        except storage.StorageError as err:
            raise StepError(f"cannot read the catalogue at {uri}: {err}") from err
        if not found:
            raise StepError(f"{styles_uri} not found: expected the Kaggle layout styles.csv + images/<id>.jpg")
        return "gcs"
    path = Path(uri).expanduser().resolve()
    if not path.exists():
        raise StepError(f"source {uri} does not exist (give a folder, a .zip, or a gs://bucket/prefix)")
    if path.is_dir():
        if not (path / layouts.STYLES).is_file():
            raise StepError(
                f"{path}: no {layouts.STYLES} found; expected the Kaggle layout styles.csv + images/<id>.jpg"
            )
        return "folder"
    if zipfile.is_zipfile(path):
        return "zip"
    raise StepError(f"source {uri} is neither a folder, a .zip archive nor a gs:// URI")


def open_source(uri: str, work_dir: str | Path, limits: ZipLimits | None = None) -> Source:
    """Open a catalogue at `uri`; a zip is extracted under `work_dir`, within `limits`.

    Raises:
        StepError: the source does not exist or does not have the expected layout.

    """
    kind = check_source(uri)
    if kind == "gcs":
        return _open_gcs(uri)
    path = Path(uri).expanduser().resolve()
    if kind == "folder":
        return _open_folder(path)
    return _open_zip(path, Path(work_dir), limits or ZipLimits())
