"""The Beam transforms of the preprocess step, one per stage, each with a dead-letter output.

manifest line -> `ParseManifestRows` -> `ReadImageBytes` -> `DecodeImages` -> `ResizeImages` ->
`EncodeImages` -> `ToExamples` -> `WriteShards`. Every stage that can fail on bad input returns
a `DoOutputsTuple` with the good items under `OK` and reject dicts (`id`, `image_uri`, `stage`,
`error`) under `REJECTED`, so a broken photo is counted and reported instead of failing the job.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from components.preprocess.stats import LabelRecord
from components.preprocess.tfrecord import write_records
from core import records
from core.images import ImageError, decode_image, encode_image, resize_image
from core.labels import SPLITS
from core.storage import StorageError, read_bytes

OK = "ok"
REJECTED = "rejected"
REQUIRED_COLUMNS = ("id", "image_uri", "split", "category_index", "subcategory_index", "attribute_indices")
# Auto sharding aims at this many records per shard: a few tens of MB at the default photo size,
# enough shards for parallel reads on a large catalogue and few files on a small one.
RECORDS_PER_SHARD = 5000


class ImageItem(NamedTuple):
    """One manifest row on its way through the stages; later stages fill `data`/`image`.

    A NamedTuple rather than a dataclass: `_replace` is several times cheaper than
    `dataclasses.replace`, and it runs four times per photo.
    """

    id: str
    image_uri: str
    split: str
    category: int
    subcategory: int
    attributes: tuple[int, ...]
    data: bytes = b""
    image: Any = None
    original_size: tuple[int, int] = (0, 0)


class ExampleRecord(NamedTuple):
    """A serialised `tf.train.Example` with what sharding and statistics need."""

    split: str
    id: str
    payload: bytes
    labels: LabelRecord


class ShardFile(NamedTuple):
    """One written shard."""

    split: str
    name: str
    records: int


def rejection(item_id: str, image_uri: str, stage: str, error: str) -> dict[str, str]:
    """The dead-letter record of one photo, as written to `rejects.jsonl`."""
    return {"id": item_id, "image_uri": image_uri, "stage": stage, "error": error}


def id_sort_key(item_id: str) -> tuple[int, str]:
    """Numeric ids in numeric order, other ids after them in text order."""
    return (int(item_id), "") if item_id.isdigit() else (1 << 62, item_id)


def shard_count(records: int, configured: int) -> int:
    """Shards for a split of `records` records: `configured` when > 0, else one per RECORDS_PER_SHARD."""
    if records <= 0:
        return 0
    if configured > 0:
        return configured
    return max(1, math.ceil(records / RECORDS_PER_SHARD))


def shard_index(item_id: str, shards: int) -> int:
    """The shard of an id: a stable hash, so contents do not depend on worker scheduling."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_name(split: str, index: int, total: int, compression: str) -> str:
    """`{split}-SSSSS-of-NNNNN.tfrecord[.gz]`, matching `layouts.shard_pattern`."""
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord" + (".gz" if compression == "gzip" else "")


def _count_rejected(stage: str) -> None:
    Metrics.counter("preprocess", f"rejected_{stage}").inc()


class _ParseRowFn(beam.DoFn):
    def __init__(self, header: Sequence[str], sizes: Mapping[str, int]):
        self._header = list(header)
        self._sizes = dict(sizes)

    def process(self, line: str) -> Iterator[Any]:
        values = next(csv.reader([line]), [])
        if len(values) != len(self._header):
            _count_rejected("manifest")
            first = values[0] if values else ""
            error = f"manifest row has {len(values)} fields, the header has {len(self._header)}"
            yield TaggedOutput(REJECTED, rejection(first, "", "manifest", error))
            return
        row = dict(zip(self._header, values, strict=True))
        try:
            yield self._item(row)
        except ValueError as err:
            _count_rejected("manifest")
            yield TaggedOutput(REJECTED, rejection(row["id"], row["image_uri"], "manifest", str(err)))

    def _item(self, row: dict[str, str]) -> ImageItem:
        if not row["id"] or not row["image_uri"]:
            raise ValueError("manifest row without id or image_uri")
        if row["split"] not in SPLITS:
            raise ValueError(f"split {row['split']!r} is not one of {', '.join(SPLITS)}")
        category = int(row["category_index"])
        subcategory = int(row["subcategory_index"])
        attributes = tuple(sorted({int(a) for a in row["attribute_indices"].split()}))
        for level, value in (("category", category), ("subcategory", subcategory)):
            if not 0 <= value < self._sizes[level]:
                raise ValueError(f"{level} index {value} outside labels.json (0..{self._sizes[level] - 1})")
        bad = [a for a in attributes if not 0 <= a < self._sizes["attributes"]]
        if bad:
            raise ValueError(f"attribute indices {bad} outside labels.json (0..{self._sizes['attributes'] - 1})")
        return ImageItem(row["id"], row["image_uri"], row["split"], category, subcategory, attributes)


class ParseManifestRows(beam.PTransform):
    """manifest.csv lines (header excluded, blank lines skipped) -> `ImageItem`s; malformed rows rejected.

    Args:
        header: the manifest's column names; must include `REQUIRED_COLUMNS`.
        sizes: `LabelSchema.sizes`, to check the label indices.
    """

    def __init__(self, header: Sequence[str], sizes: Mapping[str, int]):
        super().__init__()
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"manifest header lacks columns {missing}")
        self._header = list(header)
        self._sizes = dict(sizes)

    def expand(self, lines):
        """Lines -> `OK` `ImageItem`s and `REJECTED` reject dicts."""
        return (
            lines
            | "SkipBlank" >> beam.Filter(lambda line: bool(line.strip()))
            | "Parse" >> beam.ParDo(_ParseRowFn(self._header, self._sizes)).with_outputs(REJECTED, main=OK)
        )


class _StageFn(beam.DoFn):
    """Apply `run` to each item; the errors a bad photo causes become rejects of `stage`."""

    stage = ""
    errors: tuple[type[BaseException], ...] = (ImageError,)

    def run(self, item: ImageItem) -> ImageItem:
        """Transform one item; each stage's subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define run()")

    def process(self, item: ImageItem) -> Iterator[Any]:
        try:
            yield self.run(item)
        except self.errors as err:
            _count_rejected(self.stage)
            yield TaggedOutput(REJECTED, rejection(item.id, item.image_uri, self.stage, str(err)))


class _ReadFn(_StageFn):
    stage = "read"
    errors = (StorageError, OSError)

    def run(self, item: ImageItem) -> ImageItem:
        data = read_bytes(item.image_uri)
        if not data:
            raise StorageError(f"{item.image_uri}: empty file")
        return item._replace(data=data)


class _DecodeFn(_StageFn):
    stage = "decode"

    def run(self, item: ImageItem) -> ImageItem:
        img = decode_image(item.data)
        return item._replace(data=b"", image=img, original_size=(img.height, img.width))


class _ResizeFn(_StageFn):
    stage = "resize"

    def __init__(self, height: int, width: int, mode: str, pad_color: tuple[int, int, int]):
        self._args = (height, width, mode, tuple(pad_color))

    def run(self, item: ImageItem) -> ImageItem:
        return item._replace(image=resize_image(item.image, *self._args))


class _EncodeFn(_StageFn):
    stage = "encode"

    def __init__(self, image_format: str, jpeg_quality: int):
        self._format = image_format
        self._quality = jpeg_quality

    def run(self, item: ImageItem) -> ImageItem:
        return item._replace(image=None, data=encode_image(item.image, self._format, self._quality))


class _Stage(beam.PTransform):
    def __init__(self, fn: _StageFn):
        super().__init__()
        self._fn = fn

    def expand(self, items):
        """Items -> `OK` items and `REJECTED` reject dicts."""
        return items | beam.ParDo(self._fn).with_outputs(REJECTED, main=OK)


class ReadImageBytes(_Stage):
    """Fetch each item's `image_uri` (local path or gs://) into `data`; unreadable files are rejected."""

    def __init__(self):
        super().__init__(_ReadFn())


class DecodeImages(_Stage):
    """Decode `data` into an RGB `image` and record `original_size` (height, width); bad bytes are rejected."""

    def __init__(self):
        super().__init__(_DecodeFn())


class ResizeImages(_Stage):
    """Resize each `image` to height x width (`pad` keeps the aspect ratio, `stretch` does not)."""

    def __init__(self, height: int, width: int, mode: str = "pad", pad_color: tuple[int, int, int] = (255, 255, 255)):
        super().__init__(_ResizeFn(height, width, mode, pad_color))


class EncodeImages(_Stage):
    """Encode each `image` as JPEG or PNG into `data`."""

    def __init__(self, image_format: str = "jpeg", jpeg_quality: int = 95):
        super().__init__(_EncodeFn(image_format, jpeg_quality))


def canonical_example(payload: bytes) -> bytes:
    """The same `tf.train.Example` serialised with its feature map in key order.

    Protobuf writes map entries in an order that changes from process to process, so without
    this the same photo would give different bytes on different workers.
    """
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(payload).SerializeToString(deterministic=True)


class _ExampleFn(beam.DoFn):
    def __init__(self, num_attributes: int, image_format: str):
        self._num_attributes = num_attributes
        self._format = image_format

    def process(self, item: ImageItem) -> Iterator[ExampleRecord]:
        multi_hot = [0] * self._num_attributes
        for a in item.attributes:
            multi_hot[a] = 1
        payload = canonical_example(
            records.make_example(
                item.data, self._format, item.id, item.category, item.subcategory, multi_hot, item.original_size
            )
        )
        labels = LabelRecord(item.split, item.category, item.subcategory, item.attributes)
        yield ExampleRecord(item.split, item.id, payload, labels)


class ToExamples(beam.PTransform):
    """Encoded items -> `ExampleRecord`s holding serialised `tf.train.Example`s (`records.make_example`)."""

    def __init__(self, num_attributes: int, image_format: str = "jpeg"):
        super().__init__()
        self._fn = _ExampleFn(num_attributes, image_format)

    def expand(self, items):
        """Encoded items -> `ExampleRecord`s."""
        return items | beam.ParDo(self._fn)


class ProcessImages(beam.PTransform):
    """`ImageItem`s -> (`ExampleRecord`s, rejects): read, decode, resize, encode, serialise.

    Args:
        height: stored image height.
        width: stored image width.
        resize_mode: `pad` or `stretch`.
        pad_color: RGB of the padding.
        image_format: `jpeg` or `png`.
        jpeg_quality: JPEG quality 1-100.
        num_attributes: length of the attribute multi-hot vector.
    """

    def __init__(
        self,
        height: int,
        width: int,
        resize_mode: str,
        pad_color: tuple[int, int, int],
        image_format: str,
        jpeg_quality: int,
        num_attributes: int,
    ):
        super().__init__()
        self._resize = (height, width, resize_mode, pad_color)
        self._encode = (image_format, jpeg_quality)
        self._num_attributes = num_attributes

    def expand(self, items):
        """Items -> (`ExampleRecord`s, reject dicts of every stage)."""
        read = items | "Read" >> ReadImageBytes()
        decoded = read[OK] | "Decode" >> DecodeImages()
        resized = decoded[OK] | "Resize" >> ResizeImages(*self._resize)
        encoded = resized[OK] | "Encode" >> EncodeImages(*self._encode)
        examples = encoded[OK] | "Serialise" >> ToExamples(self._num_attributes, self._encode[0])
        rejects = (
            read[REJECTED],
            decoded[REJECTED],
            resized[REJECTED],
            encoded[REJECTED],
        ) | "MergeRejects" >> beam.Flatten()
        return examples, rejects


class _AssignShardFn(beam.DoFn):
    def __init__(self, configured: int):
        self._configured = configured

    def process(self, rec: ExampleRecord, split_counts: Mapping[str, int]) -> Iterator[Any]:
        total = shard_count(split_counts[rec.split], self._configured)
        yield (rec.split, shard_index(rec.id, total), total), (rec.id, rec.payload)


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, compression: str):
        self._out_dir = out_dir
        self._compression = compression

    def process(self, element: tuple[tuple[str, int, int], Iterable[Any]]) -> Iterator[ShardFile]:
        (split, index, total), values = element
        # Sorted by id: the same records always give byte-identical shards.
        records = sorted((v for v in values if v is not None), key=lambda v: id_sort_key(v[0]))
        name = shard_name(split, index, total, self._compression)
        path = FileSystems.join(self._out_dir, name)
        kind = CompressionTypes.GZIP if self._compression == "gzip" else CompressionTypes.UNCOMPRESSED
        handle = FileSystems.create(path, mime_type="application/octet-stream", compression_type=kind)
        try:
            write_records(handle, [payload for _, payload in records])
        finally:
            handle.close()
        yield ShardFile(split, name, len(records))


class WriteShards(beam.PTransform):
    """`ExampleRecord`s -> `{split}-SSSSS-of-NNNNN.tfrecord[.gz]` files in `out_dir`; outputs `ShardFile`s.

    Records go to shards by a hash of their id and are sorted by id inside each shard, so the
    output does not depend on how the runner scheduled the work. Every shard of a split is
    written, even one that no id hashed to, so `-of-NNNNN` always tells the truth.

    Args:
        out_dir: local folder or gs:// prefix (must exist for local paths).
        num_shards: shards per split; 0 picks one per `RECORDS_PER_SHARD` records.
        compression: `none` or `gzip`.
        split_sizes: optional PCollection of (split, expected records) that sizes the shards
            (the pipeline passes the manifest's rows per split). Known before the records exist,
            it lets shard assignment run in the same fused stage that makes the records, so each
            serialised record crosses between processes once to be grouped, not three times.
            Without it, the records themselves are counted first.
    """

    def __init__(self, out_dir: str, num_shards: int = 0, compression: str = "none", split_sizes=None):
        super().__init__()
        self._out_dir = out_dir
        self._num_shards = num_shards
        self._compression = compression
        self._split_sizes = split_sizes

    def expand(self, records):
        """Records -> one `ShardFile` per shard written."""
        configured = self._num_shards
        sizes = self._split_sizes
        if sizes is None:
            sizes = (
                records | "SplitOf" >> beam.Map(lambda r: r.split) | "CountSplits" >> beam.combiners.Count.PerElement()
            )
        keyed = records | "AssignShard" >> beam.ParDo(_AssignShardFn(configured), beam.pvalue.AsDict(sizes))
        every_shard = sizes | "EveryShard" >> beam.FlatMap(
            lambda kv: [
                ((kv[0], i, shard_count(kv[1], configured)), None) for i in range(shard_count(kv[1], configured))
            ]
        )
        return (
            (keyed, every_shard)
            | "Merge" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self._out_dir, self._compression))
        )
