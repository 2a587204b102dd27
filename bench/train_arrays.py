"""Load the shared catalogue zip straight into numpy arrays for training experiments.

The same labels and splits as the pipeline (`build_schema`, `assign_split`, rare classes
excluded until stable), photos padded onto white to the stored 80x60 size. The arrays are cached
in an `.npz` so later experiments start in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import Config
from core.labels import LabelSchema, assign_split, build_schema


def _pad_resize(data: bytes, height: int, width: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = min(height / img.height, width / img.width)
    if scale != 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(img, ((width - img.width) // 2, (height - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _drop_rare(rows: list[dict[str, str]], columns: tuple[str, str], min_count: int) -> list[dict[str, str]]:
    while True:
        before = len(rows)
        for column in columns:
            counts = Counter(r[column] for r in rows)
            rows = [r for r in rows if counts[r[column]] >= min_count]
        if len(rows) == before:
            return rows


def load_arrays(zip_path: str, config: Config, cache: str | None = None) -> tuple[dict[str, dict], LabelSchema]:
    """Per split: images (N,H,W,3 uint8), ids, category, subcategory, attributes (multi-hot)."""
    if cache and Path(cache).is_file():
        data = np.load(cache, allow_pickle=False)
        schema = LabelSchema.from_dict(json.loads(str(data["schema"])))
        splits = {
            s: {k: data[f"{s}/{k}"] for k in ("images", "ids", "category", "subcategory", "attributes")}
            for s in ("train", "validation", "test")
        }
        return splits, schema
    lc, pc = config.labels, config.preprocess
    with zipfile.ZipFile(zip_path) as zf:
        names = {Path(n).stem: n for n in zf.namelist() if n.lower().endswith(".jpg")}
        styles = next(n for n in zf.namelist() if n.endswith("styles.csv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(styles).decode("utf-8"))))
        rows = [r for r in rows if r["id"] in names and r.get(lc.category) and r.get(lc.subcategory)]
        rows = _drop_rare(rows, (lc.category, lc.subcategory), lc.min_class_count)
        schema = build_schema(rows, lc.category, lc.subcategory, lc.attributes, min_attribute_count=lc.min_class_count)
        out: dict[str, dict[str, list]] = {
            s: {k: [] for k in ("images", "ids", "category", "subcategory", "attributes")}
            for s in ("train", "validation", "test")
        }
        for r in rows:
            split = assign_split(r["id"], r[lc.subcategory], lc.train_fraction, lc.validation_fraction, lc.split_salt)
            cat, sub, attrs = schema.encode(r)
            multi = np.zeros(len(schema.attributes), dtype=np.int64)
            multi[attrs] = 1
            d = out[split]
            d["images"].append(_pad_resize(zf.read(names[r["id"]]), pc.image_height, pc.image_width))
            d["ids"].append(r["id"])
            d["category"].append(cat)
            d["subcategory"].append(sub)
            d["attributes"].append(multi)
    splits = {s: {k: np.asarray(v) for k, v in d.items()} for s, d in out.items()}
    if cache:
        flat = {f"{s}/{k}": v for s, d in splits.items() for k, v in d.items()}
        np.savez(cache, schema=json.dumps(schema.to_dict()), **flat)
    return splits, schema


def stats_from_arrays(splits: dict[str, dict], schema: LabelSchema) -> dict:
    """The `class_weights`/`class_counts` part of stats.json, computed as the Beam step documents it."""
    train = splits["train"]
    n = len(train["category"])
    out: dict = {"class_weights": {}, "class_counts": {}}
    for level in ("category", "subcategory"):
        k = schema.sizes[level]
        counts = np.bincount(train[level], minlength=k).astype(float)
        out["class_counts"][level] = {"train": counts.tolist()}
        out["class_weights"][level] = (n / (k * np.maximum(counts, 1.0))).tolist()
    pos = train["attributes"].sum(axis=0).astype(float)
    neg = n - pos
    out["class_weights"]["attributes"] = {
        "positive": (n / (2.0 * np.maximum(pos, 1.0))).tolist(),
        "negative": (n / (2.0 * np.maximum(neg, 1.0))).tolist(),
    }
    return out
