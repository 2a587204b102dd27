"""Retraining for real: `fashion run` three times in one work directory, as a weekly retrain would.

1. the first catalogue: trained from scratch, judged on the floors, deployed as champion version 1;
2. the catalogue a week later (a new article type, Shirts, and one product relabelled): warm-started
   from the champion, judged against the champion scored on the same test photos, the drift shown,
   deployed as version 2 because it stays within the tolerances;
3. the same catalogue again: nothing new to learn, so nothing is trained, exit code 4.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from components.register import Registry
from components.register.backend import embedded_backend
from pipeline.cli import EXIT_UNCHANGED, main
from pipeline.local.server import stop_server
from tests.support.catalogue import CLASSES, PER_CLASS, make_catalogue
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]

RELABELLED_COLOUR = "Magenta"
STEPS = 12


@dataclasses.dataclass
class Run:
    """One `fashion run`: its exit code, console output and run folder."""

    code: int
    out: str
    err: str

    @property
    def folder(self) -> Path:
        return Path(re.search(r"^Pipeline run \w+ in \d+s {2}\((.+)\)$", self.out, re.MULTILINE).group(1))

    def json(self, step: str, artifact: str, name: str) -> dict:
        return json.loads((self.folder / step / artifact / name).read_text())


def grown(first: Path, demo_dir: Path, out: Path) -> Path:
    """The first catalogue plus 12 Shirts, with the first product's colour corrected."""
    make_catalogue(demo_dir, out, classes=(*CLASSES, "Shirts"), per_class=PER_CLASS)
    with open(out / "styles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(first / "styles.csv", newline="") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == [r["id"] for r in rows[: len(CLASSES) * PER_CLASS]]
    rows[0]["baseColour"] = RELABELLED_COLOUR
    with open(out / "styles.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def weeks(tmp_path_factory, demo_dir):
    """The three runs, one after the other, in one work directory and against one server."""
    root = tmp_path_factory.mktemp("retraining")
    first = make_catalogue(demo_dir, root / "week1")
    second = grown(first, demo_dir, root / "week2")
    workdir = root / "work"
    flags = [f"--set=serving.grpc_port={free_port()}", f"--set=serving.rest_port={free_port()}"]
    # The ci preset's epoch is two or three batches of this catalogue: with 12 steps an epoch the
    # models' answers are clear enough for deploy's check that the served answers are the evaluated ones.
    flags.append(f"--set=train.steps_per_epoch={STEPS}")

    def fashion_run(source: Path) -> Run:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", "--preset=ci", f"--source={source}", f"--workdir={workdir}", *flags])
        return Run(code, out.getvalue(), err.getvalue())

    try:
        runs = [fashion_run(first), fashion_run(second)]
        # The week-2 catalogue, again, from another folder: only its ids and labels count.
        runs.append(fashion_run(Path(shutil.copytree(second, root / "week2-again"))))
        yield {"runs": runs, "workdir": workdir, "second": second}
    finally:
        stop_server(workdir)


def registry(workdir: Path) -> Registry:
    return Registry(embedded_backend(workdir).tracking_uri, "fashion-classifier")


def test_the_first_run_trains_from_scratch_and_is_judged_on_the_floors_only(weeks):
    first = weeks["runs"][0]
    assert first.code == 0, first.out[-3000:] + first.err[-2000:]
    assert "from scratch" in first.out
    assert "no champion yet: floors only" in first.out
    assert "Catalogue: no champion of 'fashion-classifier' yet: training the first model" in first.out


def test_a_grown_catalogue_warm_starts_is_judged_on_the_same_photos_shows_the_drift_and_deploys(weeks):
    second = weeks["runs"][1]
    assert second.code == 0, second.out[-3000:] + second.err[-2000:]
    # Warm start from the champion: known classes kept, the new one fresh, in fewer epochs (ci: 1 of 2).
    assert "small_cnn, 1 epochs, best epoch 1, from champion version 1 (models:/fashion-classifier/1)" in second.out
    warm = second.json("train-model", "model", "warm_start.json")
    assert warm["source"] == "models:/fashion-classifier/1"
    assert warm["heads"]["subcategory"] == {"kept": 4, "new": ["Shirts"], "dropped": []}
    # What changed, said before training.
    assert (
        "Catalogue: changed since champion version 1: 48 -> 60 products: +12 new, -0 vanished, 1 relabelled; "
        "sub-category classes +1 (Shirts)"
    ) in second.out
    # The champion sat the same exam in the same step; Shirts photos count as its errors.
    metrics = second.json("evaluate-model", "evaluation", "metrics.json")
    tested = metrics["scalars"]["num_test_examples"]
    assert metrics["champion"]["num_test_examples"] == tested
    assert f"against champion version 1 (models:/fashion-classifier/1) on the same {tested:.0f} test photos" in (
        second.out
    )
    manifest = list(csv.DictReader(open(second.folder / "ingest-images" / "manifest" / "manifest.csv")))
    shirts_tested = sum(r["split"] == "test" and r["subcategory"] == "Shirts" for r in manifest)
    assert metrics["champion_model"]["unknown_test_products"] == shirts_tested
    assert metrics["champion_model"]["unknown_classes"]["subcategory"] == (
        {"Shirts": shirts_tested} if shirts_tested else {}
    )
    # The drift, in metrics.json and the report.
    drift = metrics["drift"]
    assert (drift["new"], drift["vanished"], drift["relabelled"]) == (12, 0, 1)
    colour = next(level for level in drift["levels"] if level["level"] == "baseColour")
    assert colour["relabelled"] == 1 and RELABELLED_COLOUR in colour["appeared"]
    report = (second.folder / "evaluate-model" / "evaluation" / "report.md").read_text()
    assert "## Challenger vs champion on the same test photos" in report
    assert "## Catalogue drift since the champion's training data" in report
    # Within the tolerances (ci: 1.0), so registered, deployed and promoted.
    assert "Gate: PASSED" in second.out
    assert registry(weeks["workdir"]).get_version("champion") == "2"
    assert "Prediction over gRPC (stable = version 2)" in second.out


def test_the_comparison_and_the_drift_are_on_the_models_mlflow_run(weeks):
    registered = registry(weeks["workdir"])
    run = registered.client.get_run(registered.version_info("2").run_id).data
    second = weeks["runs"][1]
    metrics = second.json("evaluate-model", "evaluation", "metrics.json")
    assert run.metrics["champion.category_accuracy"] == pytest.approx(metrics["champion"]["category_accuracy"])
    assert run.metrics["drift.new_products"] == 12 and run.metrics["drift.subcategory.appeared_classes"] == 1
    assert run.tags["train_init"] == "models:/fashion-classifier/1"
    assert run.tags["catalogue_drift"] == metrics["drift"]["summary"]
    assert run.tags["champion_compared"] == "champion version 1 (models:/fashion-classifier/1)"


def test_an_unchanged_catalogue_is_skipped_with_its_own_exit_code_and_keeps_the_champion(weeks):
    third = weeks["runs"][2]
    assert third.code == EXIT_UNCHANGED, third.out[-3000:] + third.err[-2000:]
    assert "Not retrained: catalogue and settings unchanged since champion version 2" in third.out
    assert "--force retrains anyway" in third.out
    assert re.search(r"register-model\s+skipped", third.out) and "Registered:" not in third.out
    assert third.json("evaluate-model", "evaluation", "gate.json")["unchanged"] is True
    registered = registry(weeks["workdir"])
    assert registered.get_version("champion") == "2"
    assert len(registered.client.search_model_versions("name = 'fashion-classifier'")) == 2  # no version 3
    assert "Prediction over gRPC (stable = version 2)" in third.out
