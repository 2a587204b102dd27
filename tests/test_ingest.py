import csv
import json
import zipfile
from pathlib import Path

import pytest

from components.ingest.catalog import read_catalog
from components.ingest.checks import check_image_bytes
from components.ingest.step import ingest_catalogue, read_manifest
from core.config import load_config
from core.errors import StepError

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def _demo_rows(demo_dir: Path, article_types: tuple[str, ...], per_type: int) -> list[dict[str, str]]:
    with open(demo_dir / "styles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for kind in article_types:
        out += [r for r in rows if r["articleType"] == kind][:per_type]
    return out


def _line(row: dict[str, str]) -> str:
    return ",".join(row[c] for c in HEADER.split(","))


@pytest.fixture()
def quirky_catalogue(tmp_path: Path, demo_dir: Path) -> dict:
    """A real-photo catalogue with every quirk of the original Kaggle distribution injected."""
    root = tmp_path / "catalogue"
    (root / "images").mkdir(parents=True)
    rows = _demo_rows(demo_dir, ("Tshirts", "Watches"), 12)
    for r in rows:
        (root / "images" / f"{r['id']}.jpg").write_bytes((demo_dir / "images" / f"{r['id']}.jpg").read_bytes())
    good = rows[0]
    photo = (demo_dir / "images" / f"{good['id']}.jpg").read_bytes()
    lines = [HEADER] + [_line(r) for r in rows]
    quirks = {}

    def add(item_id: str, image: bytes | None, **fields: str) -> None:
        row = {**good, "id": item_id, **fields}
        lines.append(_line(row))
        if image is not None:
            (root / "images" / f"{item_id}.jpg").write_bytes(image)

    # Unquoted commas inside the product name: the line has too many fields.
    add("900001", photo, productDisplayName="Nike Men, Blue, Round Neck Tshirt")
    quirks["comma_row"] = "900001"
    add("900002", photo[: len(photo) // 2])
    quirks["truncated"] = "900002"
    add("900003", b"")
    quirks["zero_byte"] = "900003"
    add("900004", b"this is not a photo at all\n")
    quirks["not_image"] = "900004"
    add("900005", None)
    quirks["row_without_image"] = "900005"
    add("900006", photo, articleType="")
    quirks["empty_label"] = "900006"
    add("900007", photo, season="")
    quirks["empty_attribute"] = "900007"
    add("900008", photo, articleType="Unicorn Capes")
    quirks["singleton_class"] = "900008"
    add("900009", photo, productDisplayName="NA")
    quirks["na_name"] = "900009"
    (root / "images" / "900010.jpg").write_bytes(photo)
    quirks["image_without_row"] = "900010"
    lines.append("900011,Men,Apparel")  # too few fields: cannot be repaired
    quirks["malformed_line"] = len(lines)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "quirks": quirks, "good_rows": len(rows)}


def test_csv_repair_keeps_rows_with_unquoted_commas_and_na_names():
    text = HEADER + "\n1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2011,Casual,Nike, Men, Tee\n2,Men,A,B,C,D,E,F,G,NA\n"
    read = read_catalog(text)
    assert [r["id"] for r in read.rows] == ["1", "2"]
    assert read.rows[0]["productDisplayName"] == "Nike, Men, Tee"
    assert read.rows[1]["productDisplayName"] == "NA"
    assert read.repaired == ["1"]


def test_every_quirk_is_reported_with_its_id(quirky_catalogue, tmp_path):
    config = load_config("ci", overrides={"labels": {"min_class_count": 2}})
    result = ingest_catalogue(str(quirky_catalogue["root"]), tmp_path / "out", config)
    report = json.loads(result.report_path.read_text())
    q = quirky_catalogue["quirks"]

    assert q["comma_row"] in report["repaired_rows"]["ids"]
    for key in ("truncated", "zero_byte", "not_image"):
        assert q[key] in report["corrupt_images"]["ids"], key
    assert "0 bytes" in report["corrupt_images"]["errors"][q["zero_byte"]]
    assert "not a recognised image" in report["corrupt_images"]["errors"][q["not_image"]]
    assert report["rows_without_image"]["ids"] == [q["row_without_image"]]
    assert report["images_without_row"]["ids"] == [q["image_without_row"]]
    assert q["empty_label"] in report["missing_labels"]["excluded"]
    assert report["missing_labels"]["by_column"]["season"] == [q["empty_attribute"]]
    assert report["rare_classes"]["ids"] == [q["singleton_class"]]
    assert report["rare_classes"]["classes"]["articleType"] == {"Unicorn Capes": 1}
    assert report["malformed_rows"]["lines"][0]["line"] == q["malformed_line"]

    manifest = {r["id"]: r for r in read_manifest(result.out_dir)}
    # Repaired, NA-named and attribute-less rows are usable; excluded ones are not in the manifest.
    assert {q["comma_row"], q["na_name"], q["empty_attribute"]} <= set(manifest)
    assert not {q["truncated"], q["empty_label"], q["singleton_class"], q["row_without_image"]} & set(manifest)
    assert len(manifest) == quirky_catalogue["good_rows"] + 3

    acc = report["accounting"]
    assert acc["balanced"] is True
    assert acc["rows"] == acc["usable"] + sum(acc["excluded"].values())
    assert report["rows"]["count"] == quirky_catalogue["good_rows"] + 10
    assert (tmp_path / "out" / "labels.json").is_file() and (tmp_path / "out" / "config.yaml").is_file()


def test_manifest_labels_agree_with_the_schema(tmp_path, demo_dir):
    result = ingest_catalogue(str(demo_dir), tmp_path, load_config("demo"))
    schema = json.loads(result.labels_path.read_text())
    rows = read_manifest(tmp_path)
    assert len(rows) == result.usable > 1000
    for r in rows[:200]:
        assert schema["categories"][int(r["category_index"])] == r["category"]
        assert schema["subcategories"][int(r["subcategory_index"])] == r["subcategory"]
        names = {schema["attributes"][int(i)] for i in r["attribute_indices"].split()}
        assert f"gender={r['gender']}" in names
        assert Path(r["image_uri"]).is_file()
    assert {r["split"] for r in rows} == {"train", "validation", "test"}


def test_zip_source_is_extracted_and_ingested(tmp_path, demo_dir):
    archive = tmp_path / "catalogue.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(demo_dir / "styles.csv", "fashion/styles.csv")
        for image in sorted((demo_dir / "images").iterdir())[:300]:
            zf.write(image, f"fashion/images/{image.name}")
    config = load_config("ci", overrides={"data": {"min_usable_fraction": 0.2}})
    result = ingest_catalogue(str(archive), tmp_path / "out", config)
    assert result.report["images"]["count"] == 300
    assert result.report["rows_without_image"]["count"] == 900
    first = read_manifest(result.out_dir)[0]
    assert first["image_uri"].startswith(str(tmp_path / "out" / "images"))


def test_low_usable_share_fails_with_a_clear_message_after_writing_the_report(quirky_catalogue, tmp_path):
    config = load_config("ci", overrides={"data": {"min_usable_fraction": 0.99}})
    with pytest.raises(StepError, match=r"rows are usable .* data.min_usable_fraction"):
        ingest_catalogue(str(quirky_catalogue["root"]), tmp_path, config)
    assert (tmp_path / "ingest_report.json").is_file()


@pytest.mark.parametrize("source", ["does/not/exist", "gs-not-a-uri.txt"])
def test_bad_sources_fail_clearly(tmp_path, source):
    if source.endswith(".txt"):
        (tmp_path / source).write_text("hello")
        source = str(tmp_path / source)
    with pytest.raises(StepError, match="neither a folder|does not exist"):
        ingest_catalogue(source, tmp_path / "out", load_config("ci"))


def test_degenerate_images_are_rejected():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 80)).save(buf, "PNG")
    with pytest.raises(ValueError, match="degenerate size 3x80"):
        check_image_bytes(buf.getvalue(), min_side=8)


@pytest.mark.slow
def test_full_shared_zip_accounts_for_every_photo(shared_zip, tmp_path):
    result = ingest_catalogue(str(shared_zip), tmp_path, load_config("cpu-full"))
    report = result.report
    assert report["rows"]["count"] == 37462
    assert report["images"]["count"] == 37462
    assert report["accounting"]["balanced"] is True
    assert result.usable + sum(report["accounting"]["excluded"].values()) == 37462
