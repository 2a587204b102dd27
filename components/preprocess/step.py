"""The preprocess step: manifest -> resized photos in sharded TFRecords, statistics and rejects, with Beam.

`resize_images` builds one Beam pipeline that reads the ingest manifest, processes every photo
(`transforms.ProcessPhotos`, a batch of photos per call), writes the shards (`transforms.WriteShards`)
and, in the same pass, the statistics the trainer needs (`stats.json`) and the rejected photos
(`rejects.jsonl`).
Every manifest row ends up in exactly one of the two: records written + rejected = rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.preprocess.options import is_local, pipeline_options
from components.preprocess.progress import watching
from components.preprocess.stats import CountLabels, class_weights
from components.preprocess.transforms import (
    LABELS,
    OK,
    REJECTED,
    ParseManifestRows,
    PhotoProcessor,
    ProcessPhotos,
    WriteShards,
    id_sort_key,
)
from core import layouts, storage
from core.config import Config
from core.errors import StepError
from core.labels import SPLITS, LabelSchema

log = logging.getLogger(__name__)


@dataclass
class PreprocessResult:
    """What one preprocess run wrote: paths and the accounting of every manifest row."""

    out_dir: str
    stats_path: str
    rejects_path: str
    manifest_rows: int
    records: int
    rejected: int
    splits: dict[str, int]
    stats: dict[str, Any]


def read_header(manifest_uri: str) -> list[str]:
    """Column names of a manifest.csv (local or gs://), reading only its first line."""
    import csv

    if not FileSystems.exists(manifest_uri):
        raise StepError(f"{manifest_uri} not found: point --manifest at the output folder of `fashion ingest`")
    with FileSystems.open(manifest_uri) as fh:
        first = fh.readline().decode("utf-8-sig")
    header = next(csv.reader([first]), [])
    if not header:
        raise StepError(f"{manifest_uri} is empty: re-run `fashion ingest`")
    return header


def read_schema(manifest_dir: str) -> LabelSchema:
    """The label schema written by ingest next to the manifest."""
    uri = storage.join(manifest_dir, layouts.LABELS)
    try:
        return LabelSchema.from_dict(json.loads(storage.read_bytes(uri)))
    except storage.StorageError as err:
        raise StepError(f"{uri} not found: the manifest folder must be an output of `fashion ingest`") from err


def _clear_outputs(out_dir: str) -> None:
    """Remove shards and reports of an earlier run, so a glob never mixes two runs' shards."""
    patterns = [storage.join(out_dir, f"{s}-*-of-*.tfrecord*") for s in SPLITS]
    patterns += [storage.join(out_dir, layouts.STATS), storage.join(out_dir, layouts.REJECTS)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        log.info("removing %d files of an earlier run in %s", len(stale), out_dir)
        FileSystems.delete(stale)


def build_stats(
    counts: Mapping[str, Any],
    shards: Sequence[Any],
    rejects: Sequence[Mapping[str, str]],
    manifest_rows: int,
    schema: LabelSchema,
    config: Config,
    manifest_uri: str,
) -> dict[str, Any]:
    """The content of `stats.json` (see docs/ARTIFACTS.md) from the pipeline's side outputs.

    Paths inside are relative to the output folder (the folder may be copied or moved), except
    `manifest`, the input it was made from.
    """
    pre = config.preprocess
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    for shard in shards:
        files[shard.split].append(shard.name)
    weights, absent = class_weights(counts, schema)
    records = sum(counts["records"].values())
    return {
        "image_height": pre.image_height,
        "image_width": pre.image_width,
        "image_format": pre.image_format,
        "compression": pre.compression,
        "resize_mode": pre.resize_mode,
        "pad_color": list(pre.pad_color),
        "manifest": manifest_uri,
        "manifest_rows": manifest_rows,
        "records": records,
        "accounted": records + len(rejects) == manifest_rows,
        "splits": {s: {"count": counts["records"][s], "files": sorted(files[s])} for s in SPLITS},
        "class_counts": {level: counts[level] for level in ("category", "subcategory", "attributes")},
        "class_weights": weights,
        "absent_from_train": absent,
        "labels": schema.to_dict(),
        "rejects": {
            "count": len(rejects),
            "path": layouts.REJECTS,
            "fraction": len(rejects) / manifest_rows if manifest_rows else 0.0,
            "max_fraction": pre.max_reject_fraction,
            "by_stage": dict(sorted(Counter(r["stage"] for r in rejects).items())),
        },
    }


class _WriteReportsFn(beam.DoFn):
    """Write `stats.json` and `rejects.jsonl` once every side output is complete."""

    def __init__(self, out_dir: str, schema: LabelSchema, config: Config, manifest_uri: str):
        self._out_dir = out_dir
        self._schema = schema.to_dict()
        self._config = config
        self._manifest_uri = manifest_uri

    def process(self, _: Any, counts: Any, shards: Any, rejects: Any, rows: int) -> Iterator[dict[str, Any]]:
        ordered = sorted(rejects, key=lambda r: (id_sort_key(r["id"]), r["image_uri"]))
        rejects_uri = FileSystems.join(self._out_dir, layouts.REJECTS)
        with FileSystems.create(rejects_uri, mime_type="application/x-ndjson") as fh:
            fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode("utf-8"))
        stats = build_stats(
            counts,
            list(shards),
            ordered,
            rows,
            LabelSchema.from_dict(self._schema),
            self._config,
            self._manifest_uri,
        )
        with FileSystems.create(FileSystems.join(self._out_dir, layouts.STATS), "application/json") as fh:
            fh.write(json.dumps(stats, indent=2).encode("utf-8"))
        yield stats


def build_pipeline(
    pipeline: beam.Pipeline,
    manifest_uri: str,
    header: Sequence[str],
    schema: LabelSchema,
    out_dir: str,
    config: Config,
    progress_dir: str = "",
) -> None:
    """Add the whole preprocess graph to `pipeline` (run it with `pipeline.run()`).

    `progress_dir`: a folder the workers count processed photos in (`progress.watching`); '' for none.
    """
    pre = config.preprocess
    lines = pipeline | "ReadManifest" >> beam.io.ReadFromText(manifest_uri, skip_header_lines=1)
    rows = lines | "CountRows" >> (beam.Filter(lambda line: bool(line.strip())) | beam.combiners.Count.Globally())
    parsed = lines | "ParseManifest" >> ParseManifestRows(header, schema.sizes)
    split_sizes = (
        parsed[OK]
        | "SplitOfRow" >> beam.Map(lambda item: item.split)
        | "RowsPerSplit" >> beam.combiners.Count.PerElement()
    )
    processor = PhotoProcessor(
        pre.image_height,
        pre.image_width,
        pre.resize_mode,
        pre.pad_color,
        pre.image_format,
        pre.jpeg_quality,
        len(schema.attributes),
    )
    processed = parsed[OK] | "ProcessPhotos" >> ProcessPhotos(
        processor, pre.num_shards, split_sizes, progress_dir=progress_dir
    )
    rejects = (parsed[REJECTED], processed[REJECTED]) | "AllRejects" >> beam.Flatten()
    shards = processed[OK] | "WriteShards" >> WriteShards(out_dir, pre.num_shards, pre.compression, split_sizes)
    counts = processed[LABELS] | "CountLabels" >> beam.CombineGlobally(CountLabels(schema.sizes))
    _ = (
        pipeline
        | "Once" >> beam.Create([None])
        | "WriteReports"
        >> beam.ParDo(
            _WriteReportsFn(out_dir, schema, config, manifest_uri),
            beam.pvalue.AsSingleton(counts),
            beam.pvalue.AsList(shards),
            beam.pvalue.AsList(rejects),
            beam.pvalue.AsSingleton(rows),
        )
    )


def count_rows(manifest_uri: str) -> int:
    """Rows of a manifest.csv (header excluded, quoted line breaks read as one row)."""
    import csv
    import io

    with FileSystems.open(manifest_uri) as fh:
        reader = csv.reader(io.TextIOWrapper(fh, encoding="utf-8-sig", newline=""))
        return max(0, sum(1 for row in reader if row) - 1)


@contextlib.contextmanager
def _photo_progress(manifest_uri: str, beam_args: list[str] | None) -> Iterator[str]:
    """Live progress of the photos a local run processes (`progress.watching`); '' on a remote runner."""
    if not is_local(beam_args):
        yield ""
        return
    with watching(count_rows(manifest_uri)) as folder:
        yield folder


def resize_images(
    manifest_dir: str, out_dir: str, config: Config, beam_args: list[str] | None = None
) -> PreprocessResult:
    """Turn an ingest output into training-ready TFRecord shards, statistics and a rejects report.

    Args:
        manifest_dir: folder (local or gs://) holding `manifest.csv` and `labels.json` from ingest.
        out_dir: output folder (local or gs://); shards and reports of an earlier run there are
            replaced.
        config: the run configuration (`config.preprocess` for size, format, shards, limits,
            local workers).
        beam_args: Beam pipeline flags, e.g. `["--runner=DataflowRunner", "--project=P", ...]`;
            none runs locally (Beam's FnApiRunner, the DirectRunner's batch engine) with
            `config.preprocess.direct_num_workers` worker processes.

    Returns:
        Paths and counts of the run; `stats` is the content of `stats.json`.

    Raises:
        StepError: the manifest or labels are missing, the manifest has no rows, or more than
            `config.preprocess.max_reject_fraction` of the photos were rejected (the shards and
            reports are still written, for inspection).
    """
    manifest_uri = storage.join(manifest_dir, layouts.MANIFEST)
    header = read_header(manifest_uri)
    schema = read_schema(manifest_dir)
    options = pipeline_options(beam_args, config)
    if not is_local(beam_args) and not storage.is_gcs(out_dir):
        raise StepError(f"--out {out_dir}: remote workers cannot write a local folder; use a gs:// prefix")
    if not storage.is_gcs(out_dir):
        out_dir = str(Path(out_dir).resolve())
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir)
    storage.write_bytes(storage.join(out_dir, layouts.LABELS), json.dumps(schema.to_dict(), indent=2).encode())
    storage.write_bytes(storage.join(out_dir, layouts.CONFIG), config.to_yaml().encode())

    pipeline = beam.Pipeline(options=options)
    with _photo_progress(manifest_uri, beam_args) as progress_dir:
        build_pipeline(pipeline, manifest_uri, header, schema, out_dir, config, progress_dir)
        pipeline.run().wait_until_finish()

    stats_uri = storage.join(out_dir, layouts.STATS)
    stats = json.loads(storage.read_bytes(stats_uri))
    result = PreprocessResult(
        out_dir=out_dir,
        stats_path=stats_uri,
        rejects_path=storage.join(out_dir, stats["rejects"]["path"]),
        manifest_rows=stats["manifest_rows"],
        records=stats["records"],
        rejected=stats["rejects"]["count"],
        splits={s: v["count"] for s, v in stats["splits"].items()},
        stats=stats,
    )
    log.info(
        "%d manifest rows: %d records written (%s), %d rejected",
        result.manifest_rows,
        result.records,
        ", ".join(f"{s} {n}" for s, n in result.splits.items()),
        result.rejected,
    )
    if result.manifest_rows == 0:
        raise StepError(f"{manifest_uri} has no rows: re-run `fashion ingest` on a catalogue with photos")
    if not stats["accounted"]:
        raise StepError(
            f"{result.records} records + {result.rejected} rejects != {result.manifest_rows} manifest rows; "
            f"see {stats_uri}"
        )
    fraction = stats["rejects"]["fraction"]
    if fraction > config.preprocess.max_reject_fraction:
        raise StepError(
            f"{result.rejected} of {result.manifest_rows} photos rejected ({fraction:.1%} > "
            f"preprocess.max_reject_fraction {config.preprocess.max_reject_fraction:.1%}); "
            f"each one with its error is in {result.rejects_path}"
        )
    return result
