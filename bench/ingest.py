"""Benchmark: ingestion throughput (validated photos/s) against a plain PIL decode loop, same run."""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import tempfile
import time
import zipfile

from PIL import Image

from components.ingest.step import ingest_catalogue
from core.config import load_config


def plain_loop(source_zip: str) -> tuple[int, float]:
    """Baseline: open the zip and decode every photo with PIL, nothing else."""
    start = time.perf_counter()
    count = 0
    with zipfile.ZipFile(source_zip) as zf:
        for name in zf.namelist():
            if name.endswith(".jpg"):
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    img.load()
                count += 1
    return count, time.perf_counter() - start


def product(source_zip: str, workers: int) -> tuple[int, float, dict]:
    """The real ingest step: extract, repair CSV, check every photo, label, split, write the report."""
    config = load_config("cpu-full", overrides={"data": {"validation_workers": workers, "min_usable_fraction": 0.0}})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = ingest_catalogue(source_zip, out, config)
        seconds = time.perf_counter() - start
    return result.report["images"]["count"], seconds, result.report["accounting"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="../shared/data/fashion-product-images-small.zip")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base_n, base_s = plain_loop(args.source)
    print(f"plain PIL decode loop : {base_n} photos in {base_s:.2f} s = {base_n / base_s:,.0f} photos/s")
    prod_n, prod_s, accounting = product(args.source, args.workers)
    print(
        f"ingest ({args.workers} workers)   : {prod_n} photos in {prod_s:.2f} s = {prod_n / prod_s:,.0f} photos/s "
        f"(usable {accounting['usable']}, balanced={accounting['balanced']})"
    )
    ratio = (prod_n / prod_s) / (base_n / base_s)
    print(f"ratio ingest / plain loop: {ratio:.2f}")
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "photos": prod_n,
                "baseline_photos_per_s": round(base_n / base_s, 1),
                "ingest_photos_per_s": round(prod_n / prod_s, 1),
                "workers": args.workers,
                "ratio": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
