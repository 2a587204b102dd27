import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_shards import write_shards

from components.train.losses import WeightedBinaryCrossentropy, WeightedSparseCategoricalCrossentropy, build_losses
from core.config import load_config
from core.errors import StepError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def test_rare_class_error_costs_more_than_frequent_class_error():
    # Class 0 is frequent (weight 0.5), class 2 rare (weight 5): the same confident mistake costs 10x.
    loss = WeightedSparseCategoricalCrossentropy([0.5, 1.0, 5.0], reduction=None)
    wrong = np.array([[0.1, 0.8, 0.1]], dtype="float32")
    frequent = float(np.asarray(loss(np.array([0]), wrong))[0])
    rare = float(np.asarray(loss(np.array([2]), wrong))[0])
    assert rare == pytest.approx(10 * frequent, rel=1e-5)


def test_missed_rare_attribute_costs_more_than_missed_common_one():
    loss = WeightedBinaryCrossentropy(positive_weights=[1.0, 8.0], negative_weights=[1.0, 0.6], reduction=None)
    pred = np.array([[0.2, 0.2]], dtype="float32")
    common_missed = float(np.asarray(loss(np.array([[1.0, 0.0]]), pred))[0])
    rare_missed = float(np.asarray(loss(np.array([[0.0, 1.0]]), pred))[0])
    assert rare_missed > 4 * common_missed


def test_losses_from_stats_weight_rare_classes_and_soften_with_power(shards):
    stats = json.loads((shards / "stats.json").read_text())
    sizes = {
        "category": len(stats["class_weights"]["category"]),
        "subcategory": len(stats["class_weights"]["subcategory"]),
        "attributes": len(stats["class_weights"]["attributes"]["positive"]),
    }
    counts = np.array(stats["class_counts"]["subcategory"]["train"])
    rare, frequent = int(np.argmin(np.where(counts > 0, counts, 1e9))), int(np.argmax(counts))
    full = build_losses(stats, sizes, power=1.0)["subcategory"].class_weights
    soft = build_losses(stats, sizes, power=0.5)["subcategory"].class_weights
    none = build_losses(stats, sizes, power=0.0)["subcategory"].class_weights
    assert full[rare] > full[frequent]
    assert full[rare] / full[frequent] > soft[rare] / soft[frequent] > 1.0
    assert none[rare] == pytest.approx(none[frequent])
    # Normalised: a training example weighs 1 on average, so the loss keeps its scale.
    assert float(np.dot(full, counts) / counts.sum()) == pytest.approx(1.0, rel=1e-4)


def test_stats_that_disagree_with_the_schema_are_a_clear_error(shards):
    stats = json.loads((shards / "stats.json").read_text())
    with pytest.raises(StepError, match="class_weights.category"):
        build_losses(stats, {"category": 99, "subcategory": 1, "attributes": 1})


@pytest.mark.slow
def test_ci_training_reduces_loss_and_writes_the_model_folder(shards, tmp_path):
    from components.train.model_folder import load_model, predict_split
    from components.train.step import train_model

    config = load_config("ci", overrides={"train": {"epochs": 4}})
    result = train_model(str(shards), str(tmp_path / "model"), config)
    out = result.model_dir
    for name in ("model.keras", "model_config.json", "labels.json", "history.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.keras").is_file()
    assert any((out / "logs").rglob("*tfevents*")), "no TensorBoard logs"
    losses = result.history["loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    history = json.loads((out / "history.json").read_text())
    assert history["epochs_run"] == 4 and 1 <= history["best_epoch"] <= 4

    model = load_model(out)
    pred = predict_split(model, shards, "test", batch_size=8)
    n = len(pred["ids"])
    assert n > 0 and pred["category"].shape[0] == n and pred["true_category"].shape == (n,)
    assert pred["attributes"].shape == pred["true_attributes"].shape
    np.testing.assert_allclose(pred["subcategory"].sum(1), 1.0, rtol=1e-4)
    config_json = json.loads((out / "model_config.json").read_text())
    assert config_json["input"] == {"name": "image", "dtype": "uint8", "shape": [80, 60, 3]}


def _train_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.cli", "train", "--data", str(data), "--out", str(out),
        "--preset", "ci", "--set", f"train.epochs={epochs}", "--set", "train.steps_per_epoch=6",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_training_resumes_from_last_epoch_and_finishes(shards, tmp_path):
    out = tmp_path / "model"
    epochs = 40
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(_train_command(shards, out, epochs), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    state_path = out / "checkpoints" / "state.json"
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and first.poll() is None:
        if state_path.is_file():
            done = json.loads(state_path.read_text())["epochs_done"]
            if done >= 2:
                break
        time.sleep(0.2)
    assert first.poll() is None, f"the first run ended before it could be killed: {first.stderr.read()[-2000:]!r}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "model.keras").exists(), "the killed run must not have finished"

    second = subprocess.run(_train_command(shards, out, epochs), cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed after epoch" in second.stdout
    history = json.loads((out / "history.json").read_text())
    assert 2 <= history["resumed_from"] < epochs
    assert history["epochs_run"] == epochs
    assert len(history["history"]["loss"]) == epochs


def test_checkpoints_of_another_configuration_are_not_resumed(shards, tmp_path):
    from components.train.step import train_model

    out = tmp_path / "model"
    train_model(str(shards), str(out), load_config("ci", overrides={"train": {"epochs": 1, "steps_per_epoch": 2}}))
    (out / "model.keras").unlink()
    other = load_config("ci", overrides={"train": {"epochs": 2, "steps_per_epoch": 2}, "model": {"branch_units": 16}})
    with pytest.raises(StepError, match="different model/train settings"):
        train_model(str(shards), str(out), other)


def test_cli_train_reports_the_model_folder(shards, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli-model"
    code = main(["train", "--data", str(shards), "--out", str(out), "--preset", "ci", "--epochs", "1",
                 "--set", "train.steps_per_epoch=2"])  # fmt: skip
    assert code == 0
    assert "model folder" in capsys.readouterr().out
    assert (out / "model.keras").is_file()


def test_cli_train_on_a_folder_without_shards_says_what_to_do(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--preset", "ci"])
    assert code == 1
    assert "fashion preprocess" in capsys.readouterr().err


def test_batchnorm_recalibration_makes_inference_match_batch_statistics(shards):
    import dataclasses

    import keras

    from components.train.callbacks import recalibrate_batchnorm
    from components.train.data import make_dataset
    from components.train.model import build_model

    config = load_config("ci")
    model = build_model(dataclasses.replace(config.model, dropout=0.0), {"category": 3, "subcategory": 4,
                        "attributes": 5}, (80, 60))  # fmt: skip
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:  # stale statistics, as after a fast-moving phase of training
        bn.moving_mean.assign(np.full(bn.moving_mean.shape, 5.0, "float32"))
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 50.0, "float32"))
    clean = make_dataset(shards, "train", 32, True, dataclasses.replace(config.train, augment=False), repeat=True)
    images, _ = next(iter(clean))
    stale_gap = np.abs(np.asarray(model(images, training=False)["subcategory"]) - np.asarray(
        model(images, training=True)["subcategory"])).max()  # fmt: skip
    assert recalibrate_batchnorm(model, clean, 4) == 4
    gap = np.abs(np.asarray(model(images, training=False)["subcategory"]) - np.asarray(
        model(images, training=True)["subcategory"])).max()  # fmt: skip
    assert gap < stale_gap / 3
    assert all(bn.momentum == 0.99 for bn in bns), "the layers' own momentum must be restored"


@pytest.mark.parametrize("prepared", [True, False], ids=["state-built-first", "keras-default"])
def test_the_train_step_is_traced_once_when_its_state_is_built_first(shards, monkeypatch, prepared):
    # Keras's TensorFlow trainer, without a distribution strategy of its own, creates the metrics'
    # variables in the first trace of the train step, and TensorFlow traces it again.
    import keras

    from components.train.data import make_dataset
    from components.train.model import build_model
    from components.train.step import build_training_state, compile_model

    config = load_config("ci")
    stats = json.loads((shards / "stats.json").read_text())
    sizes = {
        "category": len(stats["class_weights"]["category"]),
        "subcategory": len(stats["class_weights"]["subcategory"]),
        "attributes": len(stats["class_weights"]["attributes"]["positive"]),
    }
    model = build_model(config.model, sizes, (80, 60))
    compile_model(model, config.train, build_losses(stats, sizes), steps_per_epoch=2)
    dataset = make_dataset(shards, "train", 8, True, config.train, repeat=True)
    if prepared:
        build_training_state(model, dataset)
    traces = []
    train_step = keras.Model.train_step
    monkeypatch.setattr(keras.Model, "train_step", lambda self, data: traces.append(1) or train_step(self, data))
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    assert len(traces) == (1 if prepared else 2)
    assert all(np.isfinite(float(v)) for v in model.get_metrics_result().values())
