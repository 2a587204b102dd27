"""Step bodies called as plain functions with real kfp artifacts: what they write and the metadata they record."""

from __future__ import annotations

import pytest
from kfp import dsl

from core.errors import StepError
from pipeline import steps
from pipeline.dag import CACHED_STEPS, DISPLAY_NAMES, RETRIED_STEPS
from tests.support.catalogue import make_catalogue


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, demo_dir):
    return make_catalogue(demo_dir, tmp_path_factory.mktemp("catalogue"), per_class=6)


def test_ingest_step_writes_the_manifest_and_describes_it(tmp_path, catalogue):
    manifest = dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"))
    steps.ingest_images(source_uri=str(catalogue), preset="ci", overrides={}, manifest=manifest)
    assert (tmp_path / "manifest" / "manifest.csv").is_file()
    meta = manifest.metadata
    assert meta["usable"] == meta["rows"] == 24
    assert sum(meta["splits"].values()) == 24
    assert sorted(meta["subcategories"]) == ["Casual Shoes", "Jeans", "Tshirts", "Watches"]
    assert meta["num_attributes"] == len(meta["attributes"]) > 0
    assert meta["source"] == str(catalogue)


def test_ingest_step_applies_the_runs_overrides(tmp_path, catalogue):
    manifest = dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"))
    steps.ingest_images(
        source_uri=str(catalogue),
        preset="ci",
        overrides={"labels": {"attributes": ["season"]}},
        manifest=manifest,
    )
    assert all(a.startswith("season=") for a in manifest.metadata["attributes"])


def test_ingest_step_fails_with_the_steps_own_message(tmp_path):
    manifest = dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"))
    with pytest.raises(StepError, match="nowhere.txt does not exist"):
        steps.ingest_images(source_uri=str(tmp_path / "nowhere.txt"), preset="ci", overrides={}, manifest=manifest)


def test_every_step_is_named_and_has_a_policy():
    names = {f.__name__.replace("_", "-") for f in steps.STEPS}
    assert names == set(DISPLAY_NAMES)
    assert set(CACHED_STEPS) <= names and set(RETRIED_STEPS) <= names
    assert "train-model" not in CACHED_STEPS
