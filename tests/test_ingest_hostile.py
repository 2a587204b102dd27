"""Hostile catalogues at ingest: every zip member accounted for, limits on what is extracted, ids and encodings."""

import json
import zipfile
from pathlib import Path

import pytest

from components.ingest.step import ingest_catalogue
from core.config import load_config

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def _rows(demo_dir: Path, per_type: int = 8) -> list[str]:
    lines = (demo_dir / "styles.csv").read_text().splitlines()
    head = lines[0].split(",")
    picked, counts = [], {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) != len(head):
            continue
        kind = fields[head.index("articleType")]
        if kind in ("Tshirts", "Watches") and counts.get(kind, 0) < per_type:
            counts[kind] = counts.get(kind, 0) + 1
            picked.append(line)
    return [lines[0], *picked]


def _folder_catalogue(tmp_path: Path, demo_dir: Path, lines: list[str]) -> Path:
    """A catalogue folder with the photos of `lines` (styles.csv is left to the test)."""
    root = tmp_path / "catalogue"
    (root / "images").mkdir(parents=True)
    for line in lines[1:]:
        item_id = line.split(",")[0]
        (root / "images" / f"{item_id}.jpg").write_bytes((demo_dir / "images" / f"{item_id}.jpg").read_bytes())
    return root


@pytest.fixture()
def hostile_zip(tmp_path, demo_dir) -> dict:
    lines = _rows(demo_dir)
    ids = [line.split(",")[0] for line in lines[1:]]
    path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("styles.csv", "\n".join(lines) + "\n")
        for item_id in ids:
            zf.write(demo_dir / "images" / f"{item_id}.jpg", f"images/{item_id}.jpg")
        photo = (demo_dir / "images" / f"{ids[0]}.jpg").read_bytes()
        zf.writestr("images/sub/777001.jpg", photo)
        zf.writestr("notes/readme.txt", "hello")
        zf.writestr("images/../../escape.jpg", photo)
        zf.writestr("images/777002.txt", "not a photo")
        zf.writestr("images/777003.jpg", b"\0" * (3 * 1024 * 1024))
        zf.writestr("images/", "")
    return {"path": path, "ids": ids}


def test_every_zip_member_is_accounted_for_and_nothing_rejected_stays_on_disk(hostile_zip, tmp_path):
    config = load_config("ci", overrides={"data": {"max_member_mb": 1.0}})
    out = tmp_path / "out"
    result = ingest_catalogue(str(hostile_zip["path"]), out, config)
    archive = result.report["archive"]
    ignored = {entry["name"]: entry["reason"] for entry in archive["ignored"]}

    assert "sub-folder" in ignored["images/sub/777001.jpg"]
    assert "outside images/" in ignored["notes/readme.txt"]
    assert "unsafe path" in ignored["images/../../escape.jpg"]
    assert "not an image" in ignored["images/777002.txt"]
    assert "size limit" in ignored["images/777003.jpg"]
    assert archive["members"] == archive["styles"] + archive["images"] + archive["directories"] + len(ignored)
    assert archive["balanced"] is True
    # Only usable photos are on disk: no rejected, ignored or oversized member was written.
    on_disk = sorted(p.name for p in (out / "images").rglob("*") if p.is_file())
    assert on_disk == sorted(f"{i}.jpg" for i in hostile_zip["ids"])
    assert not (tmp_path / "escape.jpg").exists() and not (out / "escape.jpg").exists()


def test_a_compression_bomb_is_refused_by_ratio_before_it_is_read(tmp_path, demo_dir):
    lines = _rows(demo_dir, per_type=4)
    ids = [line.split(",")[0] for line in lines[1:]]
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("styles.csv", "\n".join(lines) + "\n")
        for item_id in ids[1:]:
            zf.write(demo_dir / "images" / f"{item_id}.jpg", f"images/{item_id}.jpg")
        # 64 MB of zeros compress about 1000:1; the header's sizes give it away without decompressing.
        zf.writestr(f"images/{ids[0]}.jpg", b"\0" * (64 * 1024 * 1024))
    result = ingest_catalogue(str(path), tmp_path / "out", load_config("ci"))
    ignored = {entry["name"]: entry["reason"] for entry in result.report["archive"]["ignored"]}
    assert "compression ratio" in ignored[f"images/{ids[0]}.jpg"]
    assert result.report["rows_without_image"]["ids"] == [ids[0]]


def test_a_corrupt_photo_in_a_zip_is_reported_and_not_left_on_disk(tmp_path, demo_dir):
    lines = _rows(demo_dir, per_type=4)
    ids = [line.split(",")[0] for line in lines[1:]]
    path = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("styles.csv", "\n".join(lines) + "\n")
        for item_id in ids[1:]:
            zf.write(demo_dir / "images" / f"{item_id}.jpg", f"images/{item_id}.jpg")
        zf.writestr(f"images/{ids[0]}.jpg", b"this is not a photo")
    out = tmp_path / "out"
    result = ingest_catalogue(str(path), out, load_config("ci"))
    assert result.report["corrupt_images"]["ids"] == [ids[0]]
    assert not (out / "images" / f"{ids[0]}.jpg").exists()


def test_an_id_written_with_spaces_keeps_its_photo(tmp_path, demo_dir):
    lines = _rows(demo_dir, per_type=4)
    first = lines[1].split(",")
    root = tmp_path / "catalogue"
    (root / "images").mkdir(parents=True)
    for line in lines[2:]:
        item_id = line.split(",")[0]
        (root / "images" / f"{item_id}.jpg").write_bytes((demo_dir / "images" / f"{item_id}.jpg").read_bytes())
    (root / "images" / f" {first[0]} .jpg").write_bytes((demo_dir / "images" / f"{first[0]}.jpg").read_bytes())
    (root / "styles.csv").write_text("\n".join([lines[0], ",".join([f" {first[0]} ", *first[1:]]), *lines[2:]]) + "\n")
    result = ingest_catalogue(str(root), tmp_path / "out", load_config("ci"))
    assert result.report["rows_without_image"]["count"] == 0
    assert result.usable == len(lines) - 1


@pytest.mark.parametrize(
    "prefix, expected",
    [(b"", {"encoding": "latin-1", "fallback": True}), (b"\xef\xbb\xbf", {"encoding": "latin-1", "fallback": True})],
)
def test_the_styles_encoding_and_its_fallback_are_in_the_report(tmp_path, demo_dir, prefix, expected):
    lines = _rows(demo_dir, per_type=4)
    root = _folder_catalogue(tmp_path, demo_dir, lines)
    # One Latin-1 byte (é) in a product name makes the file invalid UTF-8.
    body = (lines[0] + "\n" + lines[1]).encode() + b"\xe9\n" + ("\n".join(lines[2:]) + "\n").encode()
    (root / "styles.csv").write_bytes(prefix + body)
    result = ingest_catalogue(str(root), tmp_path / "out", load_config("ci"))
    report = json.loads(result.report_path.read_text())
    assert {k: report["styles_csv"][k] for k in expected} == expected
    assert report["usable"]["count"] == len(lines) - 1


def test_utf8_with_a_bom_is_read_as_utf8(tmp_path, demo_dir):
    lines = _rows(demo_dir, per_type=4)
    root = _folder_catalogue(tmp_path, demo_dir, lines)
    (root / "styles.csv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    result = ingest_catalogue(str(root), tmp_path / "out", load_config("ci"))
    assert result.report["styles_csv"] == {"encoding": "utf-8-sig", "fallback": False}
