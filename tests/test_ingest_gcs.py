import pytest

from components.ingest.step import ingest_catalogue, read_manifest
from core import storage
from core.config import load_config
from core.errors import StepError

pytestmark = pytest.mark.gcs


@pytest.fixture(scope="module")
def catalogue_bucket(gcs_emulator, demo_dir):
    bucket = gcs_emulator.create_bucket("catalogue-test")
    lines = (demo_dir / "styles.csv").read_text().splitlines()[:61]
    bucket.blob("shop/styles.csv").upload_from_string("\n".join(lines) + "\n")
    for line in lines[1:]:
        item_id = line.split(",", 1)[0]
        bucket.blob(f"shop/images/{item_id}.jpg").upload_from_string(
            (demo_dir / "images" / f"{item_id}.jpg").read_bytes()
        )
    bucket.blob("shop/images/777777.jpg").upload_from_string(b"\xff\xd8\xff broken")
    return "gs://catalogue-test/shop"


def test_ingest_from_gcs_prefix(catalogue_bucket, tmp_path):
    config = load_config("ci", overrides={"labels": {"min_class_count": 1}})
    result = ingest_catalogue(catalogue_bucket, tmp_path, config)
    rows = read_manifest(tmp_path)
    assert result.report["rows"]["count"] == 60
    assert result.report["images_without_row"]["ids"] == ["777777"]
    assert len(rows) == 60
    assert all(r["image_uri"].startswith("gs://catalogue-test/shop/images/") for r in rows)
    assert storage.read_bytes(rows[0]["image_uri"])[:2] == b"\xff\xd8"


def test_missing_bucket_is_a_clear_error(gcs_emulator, tmp_path):
    with pytest.raises(StepError, match="bucket 'no-such-bucket' does not exist"):
        ingest_catalogue("gs://no-such-bucket/shop", tmp_path, load_config("ci"))
