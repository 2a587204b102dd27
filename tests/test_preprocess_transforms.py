"""Each preprocess transform on a real Beam TestPipeline, good input and dead letters alike."""

from __future__ import annotations

import io
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from components.ingest.step import MANIFEST_BASE_COLUMNS
from components.preprocess.stats import CountLabels, LabelRecord
from components.preprocess.transforms import (
    LABELS,
    OK,
    REJECTED,
    ExampleRecord,
    ImageItem,
    ParseManifestRows,
    PhotoProcessor,
    ProcessPhotos,
    WriteShards,
    shard_index,
)
from core import records

HEADER = [*MANIFEST_BASE_COLUMNS, "gender"]
SIZES = {"category": 2, "subcategory": 3, "attributes": 4}


def pipeline() -> test_pipeline.TestPipeline:
    # FnApiRunner: the DirectRunner's batch engine, without the Prism download attempt.
    return test_pipeline.TestPipeline(runner="FnApiRunner")


def item(item_id="1", uri="/nowhere.jpg", **kw) -> ImageItem:
    base = {"split": "train", "category": 0, "subcategory": 1, "attributes": (0, 2)}
    return ImageItem(item_id, uri, **{**base, **kw})


@pytest.fixture(scope="module")
def photos(demo_dir) -> list[Path]:
    return sorted((demo_dir / "images").glob("*.jpg"))[:3]


def field(name):
    return lambda x: x[name] if isinstance(x, dict) else getattr(x, name)


def test_parse_manifest_rows_keeps_good_rows_and_rejects_bad_ones():
    lines = [
        "10,/img/10.jpg,train,Topwear,Tshirts,1,2,0 3,Men",
        "11,/img/11.jpg,validation,Topwear,Shirts,0,0,,Women",
        "",
        "12,/img/12.jpg,holdout,Topwear,Shirts,0,0,1,Men",
        "13,/img/13.jpg,train,Topwear,Shirts,5,0,1,Men",
        "14,/img/14.jpg,train,Topwear,Shirts,0,0,1 9,Men",
        "15,/img/15.jpg,train,Topwear",
        '16,"/img/with,comma.jpg",test,Topwear,Shirts,0,0,x,Men',
    ]
    with pipeline() as p:
        out = p | beam.Create(lines) | ParseManifestRows(HEADER, SIZES)
        assert_that(
            out[OK] | beam.Map(lambda i: (i.id, i.split, i.category, i.subcategory, i.attributes)),
            equal_to([("10", "train", 1, 2, (0, 3)), ("11", "validation", 0, 0, ())]),
            label="good",
        )
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r["id"], r["stage"])),
            equal_to([(i, "manifest") for i in ("12", "13", "14", "15", "16")]),
            label="rejected",
        )


def test_parse_manifest_rows_needs_the_label_columns():
    with pytest.raises(ValueError, match="category_index"):
        ParseManifestRows(["id", "image_uri", "split"], SIZES)


def processor(height=80, width=60, mode="pad", image_format="jpeg", num_attributes=4) -> PhotoProcessor:
    return PhotoProcessor(height, width, mode, (255, 255, 255), image_format, 90, num_attributes)


def test_photo_processor_rejects_missing_and_empty_files_at_read(photos, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for item_id, uri in (("b", tmp_path / "missing.jpg"), ("c", empty)):
        out = processor()(item(item_id, str(uri)))
        assert (out["id"], out["stage"]) == (item_id, "read")
    assert isinstance(processor()(item("a", str(photos[0]))), ExampleRecord)


def test_photo_processor_rejects_corrupt_bytes_at_decode(photos, tmp_path):
    data = photos[0].read_bytes()
    for item_id, payload in (("cut", data[:200]), ("text", b"hello")):
        path = tmp_path / f"{item_id}.jpg"
        path.write_bytes(payload)
        out = processor()(item(item_id, str(path)))
        assert (out["id"], out["stage"], out["error"].startswith("cannot decode")) == (item_id, "decode", True)


@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_photo_processor_stores_the_configured_size_and_the_original_one(mode, tmp_path):
    import tensorflow as tf

    for i, size in enumerate([(60, 80), (40, 40), (90, 30)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, (9, 9, 9)).save(path)
        rec = processor(50, 40, mode)(item(str(i), str(path)))
        ex = tf.io.parse_single_example(rec.payload, records.feature_spec(4))
        stored = Image.open(io.BytesIO(ex[records.IMAGE].numpy()))
        assert (stored.format, stored.size) == ("JPEG", (40, 50))
        assert (int(ex[records.ORIGINAL_HEIGHT]), int(ex[records.ORIGINAL_WIDTH])) == (size[1], size[0])


def test_photo_processor_writes_the_shared_record_contract(photos):
    import tensorflow as tf

    rec = processor()(item("42", str(photos[0]), attributes=(1, 3)))
    ex = tf.io.parse_single_example(rec.payload, records.feature_spec(4))
    assert (rec.split, rec.id, rec.labels) == ("train", "42", LabelRecord("train", 0, 1, (1, 3)))
    assert ex[records.ID].numpy() == b"42"
    assert int(ex[records.SUBCATEGORY]) == 1
    assert ex[records.ATTRIBUTES].numpy().tolist() == [0, 1, 0, 1]
    assert (int(ex[records.ORIGINAL_HEIGHT]), int(ex[records.ORIGINAL_WIDTH])) == (80, 60)


def test_process_photos_batches_records_by_shard_with_labels_and_rejects(photos, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    items = [item(str(i), str(photos[i % len(photos)])) for i in range(10)] + [item("99", missing)]
    with pipeline() as p:
        sizes = p | "Sizes" >> beam.Create([("train", 11)])
        out = p | beam.Create(items) | ProcessPhotos(processor(), 4, sizes, batch_size=3)
        assert_that(
            out[OK] | beam.FlatMap(lambda kv: [(kv[0], i) for i, _ in kv[1]]),
            equal_to([(("train", shard_index(str(i), 4), 4), str(i)) for i in range(10)]),
            label="records",
        )
        assert_that(out[LABELS] | beam.combiners.Count.Globally(), equal_to([10]), label="labels")
        assert_that(out[REJECTED] | beam.Map(lambda r: (r["id"], r["stage"])), equal_to([("99", "read")]))


def test_count_labels_per_split_and_level():
    recs = [LabelRecord("train", 0, 2, (0, 3)), LabelRecord("train", 1, 2, (3,)), LabelRecord("test", 1, 0, ())]
    with pipeline() as p:
        out = p | beam.Create(recs) | beam.CombineGlobally(CountLabels(SIZES))
        assert_that(
            out,
            equal_to(
                [
                    {
                        "records": {"train": 2, "validation": 0, "test": 1},
                        "category": {"train": [1, 1], "validation": [0, 0], "test": [0, 1]},
                        "subcategory": {"train": [0, 0, 2], "validation": [0, 0, 0], "test": [1, 0, 0]},
                        "attributes": {"train": [1, 0, 0, 2], "validation": [0] * 4, "test": [0] * 4},
                    }
                ]
            ),
        )


def test_write_shards_sorts_by_id_and_writes_every_shard(tmp_path):
    import tensorflow as tf

    def batch(split, *ids):
        return [((split, shard_index(i, 8), 8), [(i, f"payload-{i}".encode())]) for i in ids]

    batches = batch("train", "30", "4") + batch("train", "17") + batch("test", "5")
    with pipeline() as p:
        sizes = p | "Sizes" >> beam.Create([("train", 3), ("test", 1)])
        out = p | beam.Create(batches) | WriteShards(str(tmp_path), 8, "gzip", sizes)
        assert_that(out | beam.combiners.Count.Globally(), equal_to([16]))

    names = sorted(x.name for x in tmp_path.iterdir())
    assert names == sorted(
        [f"train-{i:05d}-of-00008.tfrecord.gz" for i in range(8)]
        + [f"test-{i:05d}-of-00008.tfrecord.gz" for i in range(8)]
    )
    files = [str(tmp_path / n) for n in names if n.startswith("train")]
    per_file = [[r.numpy() for r in tf.data.TFRecordDataset(f, compression_type="GZIP")] for f in files]
    assert sorted(r for rs in per_file for r in rs) == [b"payload-17", b"payload-30", b"payload-4"]
    for rs in per_file:
        ids = [int(r.split(b"-")[1]) for r in rs]
        assert ids == sorted(ids)
