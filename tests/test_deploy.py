"""Deploy and rollback against a real server and a real MLflow registry (SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.deploy import smoke
from components.deploy import step as deploy_step
from components.deploy.step import deploy_model, rollback_model
from components.register import export, model_package
from components.register.registry import Registry
from components.register.step import keep_smoke_reference
from core.config import load_config
from core.errors import StepError
from pipeline.cli import main
from serving.client import PredictionClient
from tests.support import serving as testing

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _evaluation_predictions(export_dir: str, path: Path, photos: list[Path], wrong: bool = False) -> Path:
    """predictions.jsonl as the evaluation step writes it: per photo, the predicted labels."""
    import tensorflow as tf

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([p.read_bytes() for p in photos]))
    schema = testing.tiny_schema()
    lines = []
    for photo, cat, sub in zip(photos, out["category"].numpy(), out["subcategory"].numpy(), strict=True):
        cat, sub = cat.decode(), sub.decode()
        if wrong:
            cat = next(c for c in schema.categories if c != cat)
        record = {"id": photo.stem, "image_uri": str(photo), "pred_category": cat, "pred_subcategory": sub}
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


class CorruptingRegistry:
    """The real registry, whose downloads arrive damaged (a broken artifact store)."""

    def __init__(self, registry: Registry):
        self._registry = registry

    def __getattr__(self, name):
        return getattr(self._registry, name)

    def download_export(self, alias_or_version, dst_dir):
        path = self._registry.download_export(alias_or_version, dst_dir)
        for data in (path / "variables").glob("variables.data-*"):
            data.write_bytes(b"broken")
        return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    exports = []
    for seed in (0, 1):
        model_dir = testing.make_model_dir(root / f"model{seed}", seed=seed)
        exports.append(export.export_model(model_dir, str(root / "exports" / str(seed))))
    registry = Registry(f"sqlite:///{root}/mlflow.db", "fashion-classifier")
    experiment = registry.client.create_experiment("fashion")
    base = root / "serving" / "fashion"
    base.mkdir(parents=True)
    config_file = testing.write_models_config(root / "models.config", [{"name": "fashion", "base_path": str(base)}])
    server = testing.start_local_server(config_file, file_system_poll_wait_seconds=0.2, max_num_load_retries=0)
    config = load_config("ci", overrides={"serving": {"model_base_path": str(base), "model_name": "fashion"}})

    def register(export_dir, run_name):
        run = registry.client.create_run(experiment, run_name=run_name)
        return registry.register(run.info.run_id, pipeline_run_id=run_name, export_dir=export_dir)

    yield {
        "root": root,
        "exports": exports,
        "registry": registry,
        "register": register,
        "server": f"127.0.0.1:{server.grpc_port}",
        "config": config,
        "config_file": str(config_file),
        "base": base,
    }
    server.stop()


def _stable(setup):
    with PredictionClient(setup["server"], "fashion", label="stable") as client:
        return client.predict_raw([testing.sample_photos(1)[0].read_bytes()]).version


def _cli_args(setup) -> list[str]:
    return [
        "--preset=ci",
        f"--server={setup['server']}",
        f"--model_config_file={setup['config_file']}",
        f"--model_base_path={setup['base']}",
        "--model_name=fashion",
        f"--set=registry.tracking_uri={setup['registry'].tracking_uri}",
        "--set=registry.model_name=fashion-classifier",
    ]


def test_deploy_verify_promote_fail_safely_and_roll_back(setup, capsys):
    registry, root, photos = setup["registry"], setup["root"], testing.sample_photos(6)
    args = (setup["config"], setup["server"], setup["config_file"])

    # First deploy: the challenger becomes serving version 1, `stable` and `champion`.
    assert setup["register"](setup["exports"][0], "run-1") == "1"
    predictions = _evaluation_predictions(setup["exports"][0], root / "pred1.jsonl", photos)
    first = deploy_model(registry, *args, predictions_path=predictions, timeout_s=120)
    assert (first.serving_version, first.previous_serving_version, first.smoke["agreement"]) == (1, None, 1.0)
    assert _stable(setup) == 1 and registry.get_version("champion") == "1"

    # Second deploy, through `fashion deploy`: version 2 verified, then `stable` moves; version 1
    # stays loaded for rollback.
    assert setup["register"](setup["exports"][1], "run-2") == "2"
    predictions = _evaluation_predictions(setup["exports"][1], root / "pred2.jsonl", photos)
    code = main(["deploy", *_cli_args(setup), "--predictions", str(predictions), "--timeout", "120"])
    second = json.loads(capsys.readouterr().out)
    assert code == 0 and (second["serving_version"], second["previous_serving_version"]) == (2, 1)
    assert _stable(setup) == 2 and registry.get_version("champion") == "2"
    with PredictionClient(setup["server"], "fashion") as client:
        assert client.status() == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    config_text = Path(setup["config_file"]).read_text()
    assert 'key: "stable"' in config_text and "value: 2" in config_text

    # A challenger whose served answers disagree with its evaluation is not promoted.
    assert setup["register"](setup["exports"][0], "run-3") == "3"
    wrong = _evaluation_predictions(setup["exports"][0], root / "wrong.jsonl", photos, wrong=True)
    with pytest.raises(StepError, match="version 2 still serves.*agrees with the evaluation's predictions on 0/6"):
        deploy_model(registry, *args, predictions_path=wrong, timeout_s=120)
    assert _stable(setup) == 2 and registry.get_version("champion") == "2"
    assert Path(setup["config_file"]).read_text() == config_text
    assert not (setup["base"] / "3").exists()

    # A challenger that cannot load fails with the server's reason; nothing moves.
    with pytest.raises(StepError, match="version 2 still serves.*version 4 failed to load"):
        deploy_model(CorruptingRegistry(registry), *args, predictions_path=predictions, timeout_s=120)
    assert _stable(setup) == 2 and registry.get_version("champion") == "2"
    assert Path(setup["config_file"]).read_text() == config_text
    assert not (setup["base"] / "4").exists()

    # Rollback moves both the label and the alias back.
    back = rollback_model(registry, *args, timeout_s=120)
    assert (back.serving_version, back.registry_version) == (1, "1")
    assert _stable(setup) == 1 and registry.get_version("champion") == "1"
    assert main(["rollback", *_cli_args(setup)]) == 1
    assert "replaced no earlier version" in capsys.readouterr().err
    assert _stable(setup) == 1


def _export_with_reference(setup, folder: Path, photos: list[Path]) -> tuple[Path, Path]:
    """A copy of the second export, its predictions, and the answers registration keeps for them."""
    import shutil

    saved_model = Path(shutil.copytree(model_package.find_saved_model(setup["exports"][1]), folder))
    predictions = _evaluation_predictions(str(saved_model), folder.with_suffix(".jsonl"), photos)
    keep_smoke_reference(saved_model, predictions)
    return saved_model, predictions


def test_deploy_checks_every_replica_against_the_answers_registration_kept(setup, monkeypatch, tmp_path):
    registry, photos = setup["registry"], testing.sample_photos(6)
    args = (setup["config"], setup["server"], setup["config_file"])

    def no_tensorflow_here(*_args, **_kwargs):
        raise AssertionError("deploy ran the SavedModel in-process although registration kept its answers")

    monkeypatch.setattr(deploy_step, "reference_outputs", no_tensorflow_here)
    saved_model, predictions = _export_with_reference(setup, tmp_path / "kept", photos)
    kept = json.loads((saved_model / smoke.REFERENCE_FILE).read_text())
    assert len(kept["photo_sha256"]) == len(photos) and set(kept["outputs"]) >= {"category", "subcategory"}
    version = setup["register"](str(saved_model), "run-kept")
    deployed = deploy_model(registry, *args, predictions_path=predictions, timeout_s=120)
    assert (deployed.registry_version, deployed.smoke["agreement"]) == (version, 1.0)
    assert _stable(setup) == deployed.serving_version

    # A kept answer the replicas do not give stops the deploy: the reference is really compared.
    tampered, predictions = _export_with_reference(setup, tmp_path / "tampered", photos)
    kept = json.loads((tampered / smoke.REFERENCE_FILE).read_text())
    kept["outputs"]["category"][0] = next(
        c for c in testing.tiny_schema().categories if c != kept["outputs"]["category"][0]
    )
    (tampered / smoke.REFERENCE_FILE).write_text(json.dumps(kept))
    setup["register"](str(tampered), "run-tampered")
    with pytest.raises(StepError, match="answers differently from the registered SavedModel"):
        deploy_model(registry, *args, predictions_path=predictions, timeout_s=120)
    assert _stable(setup) == deployed.serving_version
