"""Benchmark of the preprocess step: a plain single-process loop vs the Beam pipeline on one and two workers.

All three do the same work on the same manifest (read, decode, resize, encode, serialise, count
labels, write sorted TFRecord shards) and must write byte-identical shards:

  (a) a plain Python loop in this process (the baseline);
  (b) `resize_images` on one worker (FnApiRunner, in_memory);
  (c) `resize_images` on two worker processes (FnApiRunner, multi_processing).

Beam timings are end to end, as a user waits for them: pipeline construction, worker start-up
and the final statistics. Start-up is also measured apart: the same runner and workers on a
pipeline of a few trivial elements. The baseline runs twice (before and after the Beam runs) and
its mean is used, to soften load drift on a shared machine. CPU-s is the CPU time of this process
and its worker processes: the cost of the work apart from waiting for a shared CPU. Prints
images/s for each, b/a and c/a, photos per second per core, and a Dataflow cost projection per
million photos from (b)'s CPU time per photo; the last line is JSON with "ratio" = c/a.

    .venv/bin/python bench/preprocess.py [--count N (default: the whole catalogue)] [--source ZIP]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import time
import zipfile
from collections import defaultdict
from pathlib import Path

from components.ingest.step import ingest_catalogue
from components.preprocess.stats import CountLabels, LabelRecord
from components.preprocess.step import resize_images
from components.preprocess.tfrecord import write_records
from components.preprocess.transforms import (
    id_sort_key,
    shard_count,
    shard_index,
    shard_name,
)
from core import layouts, records
from core.config import load_config
from core.images import ImageError, decode_image, encode_image, resize_image
from core.labels import LabelSchema
from core.storage import StorageError, read_bytes

REPO = Path(__file__).resolve().parents[1]
# Dataflow batch list prices, us-central1 (per vCPU-hour and GB-hour), on n1-standard-4 workers
# (4 vCPU, 15 GB); persistent disk and Shuffle are left out (this job shuffles a few MB of rows).
DATAFLOW_WORKER = "n1-standard-4"
DATAFLOW_VCPU_HOUR = 0.056
DATAFLOW_GB_HOUR = 0.003557
DATAFLOW_GB_PER_VCPU = 15 / 4
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "fashion-product-images-small.zip"


def prepare(source_zip: Path, count: int | None, work: Path, config) -> Path:
    """The first `count` catalogue rows (by id, all when None) with their photos, ingested; reused when there."""
    ingest_dir = work / f"ingest-{count or 'all'}"
    if (ingest_dir / "manifest.csv").is_file():
        return ingest_dir
    catalogue = work / f"catalogue-{count or 'all'}"
    shutil.rmtree(catalogue, ignore_errors=True)
    (catalogue / "images").mkdir(parents=True)
    with zipfile.ZipFile(source_zip) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("styles.csv").decode("utf-8"))))
        names = set(zf.namelist())
        rows = sorted((r for r in rows if f"images/{r['id']}.jpg" in names), key=lambda r: int(r["id"]))[:count]
        for r in rows:
            (catalogue / "images" / f"{r['id']}.jpg").write_bytes(zf.read(f"images/{r['id']}.jpg"))
    with open(catalogue / "styles.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ingest_catalogue(str(catalogue), ingest_dir, config)
    return ingest_dir


def plain_loop(manifest_dir: Path, out_dir: Path, config) -> int:
    """The baseline: the pipeline's work as one sequential loop. Returns records written."""
    pre = config.preprocess
    schema = LabelSchema.load(manifest_dir / layouts.LABELS)
    n_attr = len(schema.attributes)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    by_split: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    rejects = []
    counter = CountLabels(schema.sizes)
    acc = counter.create_accumulator()
    with open(manifest_dir / "manifest.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                img = decode_image(read_bytes(row["image_uri"]))
                original = (img.height, img.width)
                img = resize_image(img, pre.image_height, pre.image_width, pre.resize_mode, pre.pad_color)
                data = encode_image(img, pre.image_format, pre.jpeg_quality)
            except (StorageError, ImageError) as err:
                rejects.append((row["id"], str(err)))
                continue
            attrs = tuple(sorted({int(a) for a in row["attribute_indices"].split()}))
            multi_hot = [0] * n_attr
            for a in attrs:
                multi_hot[a] = 1
            cat, sub = int(row["category_index"]), int(row["subcategory_index"])
            payload = records.make_example(data, pre.image_format, row["id"], cat, sub, multi_hot, original)
            by_split[row["split"]].append((row["id"], payload))
            counter.add_input(acc, LabelRecord(row["split"], cat, sub, attrs))
    counter.extract_output(acc)
    written = 0
    for split, split_records in by_split.items():
        total = shard_count(len(split_records), pre.num_shards)
        shards: list[list[tuple[str, bytes]]] = [[] for _ in range(total)]
        for item_id, payload in split_records:
            shards[shard_index(item_id, total)].append((item_id, payload))
        for index, shard in enumerate(shards):
            shard.sort(key=lambda r: id_sort_key(r[0]))
            with open(out_dir / shard_name(split, index, total, pre.compression), "wb") as fh:
                write_records(fh, [p for _, p in shard])
            written += len(shard)
    return written


def empty_pipeline(config) -> None:
    """The runner and workers of `config` on a few trivial elements: their start-up alone."""
    import apache_beam as beam

    from components.preprocess.options import pipeline_options

    with beam.Pipeline(options=pipeline_options(None, config)) as p:
        _ = p | beam.Create(range(8)) | beam.Reshuffle() | beam.Map(lambda x: x) | beam.combiners.Count.Globally()


def shard_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.tfrecord*"))}


def load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_ZIP, help="the shared catalogue zip")
    parser.add_argument("--count", type=int, default=None, help="catalogue rows to process (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fashion-bench-preprocess"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # Every row usable (no rare-class exclusion), the stored size of the cpu-full preset.
    base = {"labels": {"min_class_count": 1}, "preprocess": {"num_shards": 8}}
    config = load_config("cpu-full", overrides=base)
    work = args.work_dir
    manifest_dir = prepare(args.source, args.count, work, config)
    with open(manifest_dir / "manifest.csv", encoding="utf-8") as fh:
        rows = sum(1 for _ in fh) - 1
    print(f"manifest: {rows} photos ({manifest_dir}); CPUs: {os.cpu_count()}")

    # Warm the baseline's imports (the record's message class) outside its timing.
    records.make_example(b"", "jpeg", "0", 0, 0, [0], (1, 1))

    def cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def timed_cpu(fn):
        start, cpu_start = time.perf_counter(), cpu()
        fn()
        return time.perf_counter() - start, cpu() - cpu_start

    cpu_used = {}

    def timed(name, fn):
        before = load()
        start, cpu_start = time.perf_counter(), cpu()
        count = fn()
        seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
        cpu_used[name[:3]] = cpu_seconds
        print(
            f"{name:<38} {count:>6} records {seconds:7.2f} s {count / seconds:7.0f} images/s "
            f"{cpu_seconds:6.1f} CPU-s ({before})"
        )
        return count, seconds

    runs = {}
    startup = {}
    runs["a1"] = timed("(a) plain loop", lambda: plain_loop(manifest_dir, work / "out-a", config))
    for key, workers, mode in (("b", 1, "in_memory"), ("c", 2, "multi_processing")):
        cfg = load_config(
            "cpu-full",
            overrides={
                **base,
                "preprocess": {**base["preprocess"], "direct_num_workers": workers, "direct_running_mode": mode},
            },
        )
        label = f"({key}) Beam, {workers} worker{'s' if workers > 1 else ''} ({mode})"
        startup[key] = timed_cpu(lambda cfg=cfg: empty_pipeline(cfg))
        print(f"    start-up of its runner and workers alone: {startup[key][0]:.2f} s, {startup[key][1]:.1f} CPU-s")
        runs[key] = timed(
            label, lambda cfg=cfg, key=key: resize_images(str(manifest_dir), str(work / f"out-{key}"), cfg).records
        )
    runs["a2"] = timed("(a) plain loop, again", lambda: plain_loop(manifest_dir, work / "out-a", config))

    a_seconds = (runs["a1"][1] + runs["a2"][1]) / 2
    rate = {"a": runs["a1"][0] / a_seconds, "b": runs["b"][0] / runs["b"][1], "c": runs["c"][0] / runs["c"][1]}
    reference = shard_bytes(work / "out-a")
    identical = all(shard_bytes(work / f"out-{k}") == reference for k in ("b", "c"))
    b_a, c_a = rate["b"] / rate["a"], rate["c"] / rate["a"]
    cores = os.cpu_count() or 1
    per_core = {"a": rate["a"], "b": rate["b"], "c": rate["c"] / min(2, cores)}
    # (b)'s CPU per photo without its start-up: what a Dataflow worker spends on each photo.
    cpu_per_photo = max(cpu_used["(b)"] - startup["b"][1], 0.0) / runs["b"][0]
    vcpu_hours = cpu_per_photo * 1e6 / 3600
    dollars = vcpu_hours * (DATAFLOW_VCPU_HOUR + DATAFLOW_GB_PER_VCPU * DATAFLOW_GB_HOUR)
    print(f"baseline mean {a_seconds:.2f} s; b/a = {b_a:.2f} (aim >= 0.9); c/a = {c_a:.2f} (aim >= 1.3)")
    print("photos/s per core: " + ", ".join(f"({k}) {v:.0f}" for k, v in per_core.items()))
    print(
        f"Dataflow projection: {cpu_per_photo * 1e3:.3f} CPU-ms per photo -> {vcpu_hours:.3f} vCPU-h and "
        f"${dollars:.4f} per million photos on {DATAFLOW_WORKER} at list prices (us-central1)"
    )
    print(f"shards identical across a, b, c: {identical}")
    print(
        json.dumps(
            {
                "ratio": round(c_a, 3),
                "b_over_a": round(b_a, 3),
                "images": rows,
                "images_per_s": {k: round(v, 1) for k, v in rate.items()},
                "seconds": {k: round(v[1], 2) for k, v in runs.items()},
                "identical_shards": identical,
                "startup_seconds": {k: round(v[0], 2) for k, v in startup.items()},
                "photos_per_s_per_core": {k: round(v, 1) for k, v in per_core.items()},
                "dataflow_usd_per_million": round(dollars, 5),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
