"""Cut a small, class-balanced real sample out of a full catalogue zip (the bundled demo data)."""

from __future__ import annotations

import csv
import io
import random
import zipfile
from collections import defaultdict
from pathlib import Path


def sample_catalogue(
    source_zip: str | Path,
    out_dir: str | Path,
    classes: int = 24,
    per_class: int = 50,
    holdout_per_class: int = 1,
    column: str = "articleType",
    seed: int = 7,
) -> dict[str, int]:
    """Write `per_class` rows of each of the `classes` most frequent values of `column`.

    The sample keeps the Kaggle layout (`styles.csv` + `images/<id>.jpg`). A further
    `holdout_per_class` photos per class go to `<out_dir>/../samples/` without a catalogue
    row: photos the demo model never sees, for the end-of-run prediction.

    Returns:
        Counts of rows written and holdout photos.

    """
    out_dir = Path(out_dir)
    samples_dir = out_dir.parent / "samples"
    with zipfile.ZipFile(source_zip) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("styles.csv").decode("utf-8"))))
        fields = list(rows[0].keys())
        names = set(zf.namelist())
        by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in rows:
            if f"images/{row['id']}.jpg" in names:
                by_class[row[column]].append(row)
        top = sorted(by_class, key=lambda k: (-len(by_class[k]), k))[:classes]
        rng = random.Random(seed)
        chosen, holdout = [], []
        for name in top:
            picks = rng.sample(by_class[name], per_class + holdout_per_class)
            chosen += picks[:per_class]
            holdout += picks[per_class:]
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        samples_dir.mkdir(parents=True, exist_ok=True)
        chosen.sort(key=lambda r: int(r["id"]))
        with open(out_dir / "styles.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, quoting=csv.QUOTE_MINIMAL)
            writer.writeheader()
            writer.writerows(chosen)
        for row in chosen:
            (out_dir / "images" / f"{row['id']}.jpg").write_bytes(zf.read(f"images/{row['id']}.jpg"))
        for row in holdout:
            slug = row[column].lower().replace(" ", "-")
            (samples_dir / f"{slug}-{row['id']}.jpg").write_bytes(zf.read(f"images/{row['id']}.jpg"))
    return {"rows": len(chosen), "holdout": len(holdout)}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source_zip")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    print(sample_catalogue(args.source_zip, args.out_dir))
