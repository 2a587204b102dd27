"""Warm start vs from scratch on a catalogue grown by 10%, through the real ingest, preprocess, train and evaluate.

    .venv/bin/python -m bench.warm_start --limit 6000 --preset demo --out /tmp/bench-warm-start

From the shared zip, the first `--limit` products by id make the grown catalogue; the first
catalogue holds back `--hold-back` (10%) of its training photos, chosen by a stable hash of the id
among the products the pipeline's own split puts in `train`, so both catalogues share the same
validation and test photos. Both are ingested and preprocessed as `fashion run` does. Then:

1. the champion: trained from scratch on the first catalogue (`train.epochs`);
2. from scratch on the grown catalogue (`train.epochs`): the plain baseline;
3. warm-started from the champion on the grown catalogue (`train.init` = the champion's model
   folder, `train.warm_start_epochs`);

each with `train_model` (the code of `fashion train`), and each scored on the grown catalogue's
test split by the evaluate step; the warm-started model's evaluation also scores the champion on
the same photos. Prints one JSON line per model, then a JSON object whose "ratio" is the
warm-started training's wall time over the from-scratch one's ("cpu_ratio": the same for the CPU
time of this process, which other jobs on the machine do not inflate).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

from components.evaluate import evaluate_model
from components.evaluate.champion import Champion
from components.ingest.step import ingest_catalogue
from components.preprocess.step import resize_images
from components.train.step import train_model
from core.config import Config, load_config, parse_overrides
from core.labels import assign_split

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small.zip"
REPORTED = ("category_accuracy", "subcategory_accuracy", "attributes_map", "attributes_group_accuracy")


def held_back(item_id: str, share: float) -> bool:
    """Whether a training photo waits for the grown catalogue: a stable hash of its id, independent of the split's."""
    digest = hashlib.sha256(f"warm-start-hold-back|{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def write_catalogues(zip_path: Path, out: Path, limit: int, share: float, config: Config) -> dict[str, int]:
    """`out/grown` (the first `limit` products by id) and `out/first` (without the held-back training photos)."""
    labels = config.labels
    with zipfile.ZipFile(zip_path) as archive:
        names = {Path(n).name: n for n in archive.namelist()}
        styles = names["styles.csv"]
        with archive.open(styles) as fh:
            rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))
        rows = [r for r in rows if f"{r['id']}.jpg" in names]
        rows = sorted(rows, key=lambda r: int(r["id"]))[:limit]
        grown, first = out / "grown", out / "first"
        for folder in (grown, first):
            (folder / "images").mkdir(parents=True, exist_ok=True)
        kept = []
        for row in rows:
            photo = grown / "images" / f"{row['id']}.jpg"
            if not photo.exists():
                photo.write_bytes(archive.read(names[f"{row['id']}.jpg"]))
            split = assign_split(
                row["id"], row[labels.subcategory], labels.train_fraction, labels.validation_fraction, labels.split_salt
            )
            if split == "train" and held_back(row["id"], share):
                continue
            kept.append(row)
            link = first / "images" / photo.name
            if not link.exists():
                link.symlink_to(photo.resolve())
    for folder, chosen in ((grown, rows), (first, kept)):
        with open(folder / "styles.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(chosen)
    return {"grown": len(rows), "first": len(kept), "held_back": len(rows) - len(kept)}


def prepare(catalogue: Path, out: Path, config: Config) -> tuple[Path, dict]:
    """Ingest and preprocess a catalogue as `fashion run` does; (preprocess folder, split counts)."""
    ingested = ingest_catalogue(str(catalogue), out / "ingest", config)
    result = resize_images(str(ingested.out_dir), str(out / "data"), config)
    return out / "data", {k: int(v) for k, v in result.splits.items()}


def train_and_score(name: str, data: Path, out: Path, config: Config, champion: Path | None = None) -> dict:
    """Train one model, then evaluate it on the test split (the champion scored alongside when given)."""
    started, cpu = time.perf_counter(), time.process_time()
    trained = train_model(str(data), str(out / name), config)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    compared = Champion(champion, "the champion (first catalogue)") if champion else None
    evaluated = evaluate_model(str(out / name), str(data), str(out / f"{name}-evaluation"), config, champion=compared)
    row = {
        "model": name,
        "init": config.train.init if config.train.init in ("scratch", "champion") else "the champion's folder",
        "train_seconds": round(seconds, 1),
        # CPU time of this process's threads: what the training cost, whatever else shared the machine.
        "train_cpu_seconds": round(cpu_seconds, 1),
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "test_photos": evaluated.num_examples,
        **{k: round(evaluated.scalars[k], 4) for k in REPORTED},
    }
    if champion:
        metrics = json.loads((out / f"{name}-evaluation" / "metrics.json").read_text())
        row["champion_on_same_photos"] = {k: round(metrics["champion"][k], 4) for k in REPORTED}
        row["gate"] = evaluated.reason.split("; ")[0]
    if trained.warm_start:
        row["warm_start"] = {
            level: {"kept": head["kept"], "new": len(head["new"]), "dropped": len(head["dropped"])}
            for level, head in trained.warm_start["heads"].items()
        }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SHARED_ZIP), help="the shared zip (Kaggle layout)")
    parser.add_argument("--limit", type=int, default=10_000, help="products of the grown catalogue (first by id)")
    parser.add_argument("--hold-back", type=float, default=0.1, help="share of training photos the first run lacks")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--out", default="runs/bench-warm-start")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "models").exists():
        parser.error(f"{out / 'models'} exists: give a new --out (a training would resume from its checkpoints)")
    overrides = parse_overrides(args.overrides)
    config = load_config(args.preset, overrides=overrides)
    started = time.perf_counter()
    counts = write_catalogues(Path(args.source), out / "catalogues", args.limit, args.hold_back, config)
    first_data, first_splits = prepare(out / "catalogues" / "first", out / "first", config)
    grown_data, grown_splits = prepare(out / "catalogues" / "grown", out / "grown", config)
    print(json.dumps({"catalogues": counts, "first_splits": first_splits, "grown_splits": grown_splits}), flush=True)

    def with_init(init: str) -> Config:
        layer = parse_overrides(args.overrides)
        layer.setdefault("train", {})["init"] = init
        return load_config(args.preset, overrides=layer)

    champion = train_and_score("champion", first_data, out / "models", with_init("scratch"))
    scratch = train_and_score("scratch", grown_data, out / "models", with_init("scratch"))
    champion_dir = (out / "models" / "champion").resolve()
    warm = train_and_score("warm", grown_data, out / "models", with_init(str(champion_dir)), champion=champion_dir)
    summary = {
        "preset": args.preset,
        "overrides": args.overrides,
        "catalogues": counts,
        "epochs": {"scratch": config.train.epochs, "warm": config.train.warm_start_epochs or config.train.epochs},
        "champion": champion,
        "scratch": scratch,
        "warm": warm,
        "subcategory_accuracy_warm_minus_scratch": round(
            warm["subcategory_accuracy"] - scratch["subcategory_accuracy"], 4
        ),
        "total_seconds": round(time.perf_counter() - started, 1),
        "cpu_ratio": round(warm["train_cpu_seconds"] / scratch["train_cpu_seconds"], 4),
        "ratio": round(warm["train_seconds"] / scratch["train_seconds"], 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
