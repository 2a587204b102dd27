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
    OK,
    REJECTED,
    DecodeImages,
    EncodeImages,
    ExampleRecord,
    ImageItem,
    ParseManifestRows,
    ReadImageBytes,
    ResizeImages,
    ToExamples,
    WriteShards,
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


def test_read_image_bytes_rejects_missing_files(photos, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    items = [item("a", str(photos[0])), item("b", str(tmp_path / "missing.jpg")), item("c", str(empty))]
    with pipeline() as p:
        out = p | beam.Create(items) | ReadImageBytes()
        assert_that(out[OK] | beam.Map(lambda i: (i.id, i.data)), equal_to([("a", photos[0].read_bytes())]), "ok")
        assert_that(out[REJECTED] | beam.Map(lambda r: (r["id"], r["stage"])), equal_to([("b", "read"), ("c", "read")]))


def test_decode_images_records_original_size_and_rejects_corrupt_bytes(photos):
    data = photos[0].read_bytes()
    items = [item("good", data=data), item("cut", data=data[:200]), item("text", data=b"hello")]
    with pipeline() as p:
        out = p | beam.Create(items) | DecodeImages()
        assert_that(
            out[OK] | beam.Map(lambda i: (i.id, i.original_size, i.image.mode)),
            equal_to([("good", (80, 60), "RGB")]),
            "ok",
        )
        assert_that(
            out[REJECTED] | beam.Map(lambda r: (r["id"], r["stage"], r["error"].startswith("cannot decode"))),
            equal_to([("cut", "decode", True), ("text", "decode", True)]),
        )


@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_resize_images_gives_the_configured_size(mode):
    items = [
        item(str(i), image=Image.new("RGB", size, (9, 9, 9))) for i, size in enumerate([(60, 80), (40, 40), (90, 30)])
    ]
    with pipeline() as p:
        out = p | beam.Create(items) | ResizeImages(50, 40, mode)
        assert_that(out[OK] | beam.Map(lambda i: i.image.size), equal_to([(40, 50)] * 3), "ok")
        assert_that(out[REJECTED], equal_to([]), "none rejected")


def test_encode_images_produces_decodable_jpeg():
    items = [item("1", image=Image.new("RGB", (40, 50), (200, 10, 10)))]
    with pipeline() as p:
        out = p | beam.Create(items) | EncodeImages("jpeg", 90)

        def fmt(i):
            img = Image.open(io.BytesIO(i.data))
            return i.image, img.format, img.size

        assert_that(out[OK] | beam.Map(fmt), equal_to([(None, "JPEG", (40, 50))]))


def test_to_examples_writes_the_shared_record_contract():
    import tensorflow as tf

    items = [item("42", data=b"jpeg-bytes", original_size=(80, 60), attributes=(1, 3))]

    def parse(rec: ExampleRecord):
        ex = tf.io.parse_single_example(rec.payload, records.feature_spec(4))
        return (
            rec.split,
            rec.id,
            ex[records.ID].numpy(),
            int(ex[records.SUBCATEGORY]),
            ex[records.ATTRIBUTES].numpy().tolist(),
            int(ex[records.ORIGINAL_HEIGHT]),
            rec.labels,
        )

    with pipeline() as p:
        out = p | beam.Create(items) | ToExamples(4, "jpeg")
        assert_that(
            out | beam.Map(parse),
            equal_to([("train", "42", b"42", 1, [0, 1, 0, 1], 80, LabelRecord("train", 0, 1, (1, 3)))]),
        )


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

    recs = [
        ExampleRecord("train", str(i), f"payload-{i}".encode(), LabelRecord("train", 0, 0, ())) for i in (30, 4, 17)
    ]
    recs.append(ExampleRecord("test", "5", b"payload-5", LabelRecord("test", 0, 0, ())))
    with pipeline() as p:
        out = p | beam.Create(recs) | WriteShards(str(tmp_path), num_shards=8, compression="gzip")
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
