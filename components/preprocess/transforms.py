"""The Beam transforms of the preprocess step, each with a dead-letter output.

manifest line -> `ParseManifestRows` -> `ProcessPhotos` (read, decode, resize, encode and
serialise a batch of photos per call, `PhotoProcessor`) -> `WriteShards`. A transform that can
fail on bad input returns a `DoOutputsTuple` with the good items under `OK` and reject dicts
(`id`, `image_uri`, `stage`, `error`) under `REJECTED`, so a broken photo is counted and
reported instead of failing the job. Workers import neither TensorFlow nor Keras.
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

from components.preprocess.progress import PhotoCounter
from components.preprocess.stats import LabelRecord
from components.preprocess.tfrecord import write_records
from core import records
from core.images import ImageError, decode_image, encode_image, resize_image
from core.labels import SPLITS
from core.storage import StorageError, read_bytes

OK = "ok"
REJECTED = "rejected"
LABELS = "labels"
# Photos per DoFn call: enough to make Beam's per-element cost vanish, small enough to spread a
# small catalogue over the workers.
BATCH_SIZE = 64
REQUIRED_COLUMNS = ("id", "image_uri", "split", "category_index", "subcategory_index", "attribute_indices")
# Auto sharding aims at this many records per shard: a few tens of MB at the default photo size,
# enough shards for parallel reads on a large catalogue and few files on a small one.
RECORDS_PER_SHARD = 5000


class ImageItem(NamedTuple):
    """One parsed manifest row: the photo's URI and its labels."""

    id: str
    image_uri: str
    split: str
    category: int
    subcategory: int
    attributes: tuple[int, ...]


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


class PhotoProcessor:
    """One photo from its URI to a serialised record: read, decode, resize, encode, serialise.

    A plain callable, so a worker runs a whole batch of photos in one DoFn call: Beam's bookkeeping
    per element and per DoFn costs as much as the work on a catalogue photo. A bad photo becomes
    a reject dict naming the stage it failed in.

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
        self._resize = (height, width, resize_mode, tuple(pad_color))
        self._format = image_format
        self._quality = jpeg_quality
        self._num_attributes = num_attributes

    def __call__(self, item: ImageItem) -> ExampleRecord | dict[str, str]:
        """The record of `item`, or its reject."""
        try:
            data = read_bytes(item.image_uri)
            if not data:
                raise StorageError(f"{item.image_uri}: empty file")
        except (StorageError, OSError) as err:
            return _reject(item, "read", err)
        stage = "decode"
        try:
            image = decode_image(data)
            original_size = (image.height, image.width)
            stage = "resize"
            image = resize_image(image, *self._resize)
            stage = "encode"
            data = encode_image(image, self._format, self._quality)
        except ImageError as err:
            return _reject(item, stage, err)
        multi_hot = [0] * self._num_attributes
        for a in item.attributes:
            multi_hot[a] = 1
        payload = records.make_example(
            data, self._format, item.id, item.category, item.subcategory, multi_hot, original_size
        )
        labels = LabelRecord(item.split, item.category, item.subcategory, item.attributes)
        return ExampleRecord(item.split, item.id, payload, labels)


def _reject(item: ImageItem, stage: str, err: Exception) -> dict[str, str]:
    _count_rejected(stage)
    return rejection(item.id, item.image_uri, stage, str(err))


class _ProcessBatchFn(beam.DoFn):
    def __init__(self, processor: PhotoProcessor, num_shards: int, progress_dir: str = ""):
        self._processor = processor
        self._num_shards = num_shards
        self._counter = PhotoCounter(progress_dir) if progress_dir else None

    def process(self, batch: list[ImageItem], split_sizes: Mapping[str, int]) -> Iterator[Any]:
        by_shard: dict[tuple[str, int, int], list[tuple[str, bytes]]] = {}
        for item in batch:
            out = self._processor(item)
            if isinstance(out, dict):
                yield TaggedOutput(REJECTED, out)
                continue
            total = shard_count(split_sizes[out.split], self._num_shards)
            by_shard.setdefault((out.split, shard_index(out.id, total), total), []).append((out.id, out.payload))
            yield TaggedOutput(LABELS, out.labels)
        if self._counter is not None:
            self._counter.add(len(batch))
        yield from by_shard.items()


class ProcessPhotos(beam.PTransform):
    """`ImageItem`s -> shard batches (`OK`), `LabelRecord`s (`LABELS`) and reject dicts (`REJECTED`).

    Photos are processed `batch_size` at a time by one `PhotoProcessor` call each. A shard batch
    is `((split, index, total), [(id, payload), ...])`: the records of one batch that go to one
    shard, for `WriteShards`. Shards are sized from `split_sizes` (the manifest's rows per split,
    known before any photo is processed), so the records cross between processes once.

    Args:
        processor: the per-photo work.
        num_shards: shards per split; 0 picks one per `RECORDS_PER_SHARD` records.
        split_sizes: PCollection of (split, manifest rows).
        batch_size: photos per DoFn call.
        progress_dir: a folder the workers count processed photos in (`progress.watching`); '' for none.
    """

    def __init__(
        self,
        processor: PhotoProcessor,
        num_shards: int,
        split_sizes,
        batch_size: int = BATCH_SIZE,
        progress_dir: str = "",
    ):
        super().__init__()
        self._fn = _ProcessBatchFn(processor, num_shards, progress_dir)
        self._split_sizes = split_sizes
        self._batch_size = batch_size

    def expand(self, items):
        """Items -> the `OK`, `LABELS` and `REJECTED` outputs."""
        return (
            items
            | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            # A small manifest is one bundle; redistributing its batches (not each row: that
            # costs a tenth of the work) is what lets more than one worker process photos.
            | "Redistribute" >> beam.Reshuffle()
            | "Process"
            >> beam.ParDo(self._fn, beam.pvalue.AsDict(self._split_sizes)).with_outputs(REJECTED, LABELS, main=OK)
        )


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, compression: str):
        self._out_dir = out_dir
        self._compression = compression

    def process(self, element: tuple[tuple[str, int, int], Iterable[Any]]) -> Iterator[ShardFile]:
        (split, index, total), batches = element
        # Sorted by id: the same records always give byte-identical shards.
        records = sorted((r for batch in batches for r in batch), key=lambda r: id_sort_key(r[0]))
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
    """Shard batches -> `{split}-SSSSS-of-NNNNN.tfrecord[.gz]` files in `out_dir`; outputs `ShardFile`s.

    Input: `((split, index, total), [(id, payload), ...])` as `ProcessPhotos` makes them. Records
    are sorted by id inside each shard, so the output does not depend on how the runner scheduled
    the work. Every shard of a split is written, even one that no id hashed to, so `-of-NNNNN`
    always tells the truth.

    Args:
        out_dir: local folder or gs:// prefix (must exist for local paths).
        num_shards: shards per split; 0 picks one per `RECORDS_PER_SHARD` records.
        compression: `none` or `gzip`.
        split_sizes: PCollection of (split, expected records), the same that sized the batches.
    """

    def __init__(self, out_dir: str, num_shards: int, compression: str, split_sizes):
        super().__init__()
        self._out_dir = out_dir
        self._num_shards = num_shards
        self._compression = compression
        self._split_sizes = split_sizes

    def expand(self, batches):
        """Shard batches -> one `ShardFile` per shard written."""
        configured = self._num_shards
        every_shard = self._split_sizes | "EveryShard" >> beam.FlatMap(
            lambda kv: [((kv[0], i, shard_count(kv[1], configured)), []) for i in range(shard_count(kv[1], configured))]
        )
        return (
            (batches, every_shard)
            | "Merge" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self._out_dir, self._compression))
        )
