"""The catalogue a model learnt from: snapshot, fingerprint, drift; and which settings make a retrain worth it."""

from __future__ import annotations

import csv

import pytest

from components.train.retrain import fingerprint, learning_settings, settings_changes, write_catalogue
from core.catalogue import CatalogueSnapshot, compare
from core.config import load_config
from core.errors import StepError

ATTRIBUTES = ("baseColour", "season")


def row(item_id: str, cat: str, sub: str, colour: str = "Blue", season: str = "Summer") -> dict[str, str]:
    return {"id": item_id, "category": cat, "subcategory": sub, "baseColour": colour, "season": season}


OLD = [
    row("1", "Topwear", "Tshirts"),
    row("2", "Topwear", "Tshirts", "Black"),
    row("3", "Bottomwear", "Jeans"),
    row("4", "Bottomwear", "Jeans"),
    row("5", "Bags", "Clutches", season="Winter"),
]
# 5 vanished, 6 and 7 new (with a new sub-category), 2 relabelled (colour), 4 relabelled (sub-category).
NEW = [
    row("1", "Topwear", "Tshirts"),
    row("2", "Topwear", "Tshirts", "White"),
    row("3", "Bottomwear", "Jeans"),
    row("4", "Bottomwear", "Trousers"),
    row("6", "Topwear", "Shirts"),
    row("7", "Topwear", "Shirts"),
]


def snap(rows) -> CatalogueSnapshot:
    return CatalogueSnapshot.from_rows(rows, ATTRIBUTES)


def test_the_fingerprint_is_the_ids_and_labels_in_any_order():
    assert snap(OLD).fingerprint() == snap(list(reversed(OLD))).fingerprint()
    relabelled = [*OLD[:-1], row("5", "Bags", "Clutches", season="Summer")]
    assert snap(relabelled).fingerprint() != snap(OLD).fingerprint()
    # Columns that are not labels (the photo's path, the split) do not count.
    moved = [{**r, "image_uri": f"/elsewhere/{r['id']}.jpg", "split": "test"} for r in OLD]
    assert snap(moved).fingerprint() == snap(OLD).fingerprint()


def test_drift_counts_new_vanished_and_relabelled_products_and_classes_per_level():
    drift = compare(snap(OLD), snap(NEW))
    assert (drift.products_before, drift.products_after) == (5, 6)
    assert (drift.new, drift.vanished, drift.relabelled) == (2, 1, 2)
    sub = drift.level("subcategory")
    assert sub.appeared == {"Shirts": 2, "Trousers": 1} and sub.disappeared == {"Clutches": 1}
    assert (sub.classes_before, sub.classes_after, sub.relabelled) == (3, 4, 1)
    assert drift.level("category").disappeared == {"Bags": 1}
    assert drift.level("baseColour").appeared == {"White": 1} and drift.level("baseColour").relabelled == 1
    assert drift.level("season").disappeared == {"Winter": 1}
    # Shares: Shirts 0 -> 2/6 is the largest shift of the sub-categories.
    top = sub.shifts[0]
    assert top["label"] == "Shirts" and top["before"] == 0 and top["after"] == pytest.approx(2 / 6)
    assert [abs(s["change"]) for s in sub.shifts] == sorted((abs(s["change"]) for s in sub.shifts), reverse=True)
    assert {"id": "2", "level": "baseColour", "before": "Black", "after": "White"} in drift.relabelled_examples
    assert drift.summary() == (
        "5 -> 6 products: +2 new, -1 vanished, 2 relabelled; category classes -1 (Bags); "
        "sub-category classes +2 (Shirts, Trousers), -1 (Clutches)"
    )


def test_an_unchanged_catalogue_has_no_drift_and_says_so():
    drift = compare(snap(OLD), snap(list(reversed(OLD))))
    assert not drift.changed
    assert drift.summary() == "no product added, removed or relabelled (5 products)"
    assert all(not level.shifts and not level.appeared for level in drift.levels)


def test_an_attribute_column_only_one_catalogue_has_is_all_new_classes():
    before = CatalogueSnapshot.from_rows(OLD, ("baseColour",))
    drift = compare(before, snap(OLD))
    assert drift.level("season").appeared == {"Summer": 4, "Winter": 1}
    assert drift.relabelled == 5  # every product gained a season


def test_a_snapshot_round_trips_through_its_file_and_reads_a_manifest(tmp_path):
    manifest = tmp_path / "ingest" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image_uri", "split", "category", "subcategory", *ATTRIBUTES])
        writer.writeheader()
        writer.writerows({**r, "image_uri": "/x.jpg", "split": "train"} for r in OLD)
    read = CatalogueSnapshot.from_manifest(str(manifest.parent), ATTRIBUTES)
    assert read == snap(OLD)
    saved = read.save(tmp_path / "catalogue.json", fingerprint={"combined": "x"})
    assert CatalogueSnapshot.load(saved) == read
    with pytest.raises(StepError, match="cannot be read"):
        CatalogueSnapshot.from_manifest(str(tmp_path / "nowhere"), ATTRIBUTES)


@pytest.mark.parametrize(
    ("setting", "value", "matters"),
    [
        ("train.epochs", 9, True),
        ("model.branch_units", 64, True),
        ("labels.min_class_count", 3, True),
        ("preprocess.image_height", 64, True),
        ("train.init", "scratch", False),
        ("train.warm_start_epochs", 5, False),
        ("train.skip_unchanged", False, False),
        ("preprocess.direct_num_workers", 2, False),
        ("evaluate.sample_grid_size", 0, False),
    ],
)
def test_only_settings_that_change_what_is_learnt_change_the_fingerprint(setting, value, matters):
    section, name = setting.split(".")
    base = load_config("ci")
    changed = load_config("ci", overrides={section: {name: value}})
    same = fingerprint(snap(OLD), base)["combined"] == fingerprint(snap(OLD), changed)["combined"]
    assert same is not matters
    assert bool(settings_changes(learning_settings(base), changed)) is matters


def test_the_model_folder_records_the_catalogue_and_the_settings_it_learnt_from(tmp_path):
    import json

    config = load_config("ci")
    path = write_catalogue(tmp_path, snap(NEW), config)
    data = json.loads(path.read_text())
    assert data["fingerprint"] == fingerprint(snap(NEW), config)
    assert data["settings"]["train"]["epochs"] == config.train.epochs and "init" not in data["settings"]["train"]
    assert CatalogueSnapshot.load(path) == snap(NEW)
