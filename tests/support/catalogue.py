"""A small real catalogue in the Kaggle layout, cut from the bundled demo photos, for pipeline tests."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

CLASSES = ("Tshirts", "Jeans", "Watches", "Casual Shoes")
PER_CLASS = 12


def make_catalogue(demo_dir: Path, out: Path, classes=CLASSES, per_class=PER_CLASS) -> Path:
    """A small real catalogue in the Kaggle layout, cut from the bundled demo photos."""
    with open(demo_dir / "styles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for c in classes for r in [r for r in rows if r["articleType"] == c][:per_class]]
    (out / "images").mkdir(parents=True)
    with open(out / "styles.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    for row in picked:
        shutil.copy(demo_dir / "images" / f"{row['id']}.jpg", out / "images")
    return out
