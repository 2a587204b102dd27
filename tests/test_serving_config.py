"""models.config (several models, version policies, labels, reloads), batching files and the bounded queue."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from components.register import export
from core.config import load_config
from serving import model_config
from serving.client import PredictionClient
from serving.server import config as server_config
from serving.server.batching import BatchScheduler
from tests.support import serving as testing

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model_dir = testing.make_model_dir(root / "model")
    base = root / "fashion"
    export.export_model(model_dir, str(base / "1"))
    for version in (2, 3):
        shutil.copytree(base / "1", base / str(version))
    return base


def test_several_models_policies_labels_and_reloads(base_path, tmp_path):
    config_path = testing.write_models_config(
        tmp_path / "models.config",
        [
            {"name": "fashion", "base_path": str(base_path), "latest": 2},
            {"name": "pinned", "base_path": str(base_path), "versions": [1], "labels": {"stable": 1}},
            {"name": "every", "base_path": str(base_path), "all": True},
        ],
    )
    server = testing.start_local_server(
        config_path, model_config_file_poll_wait_seconds=0.2, file_system_poll_wait_seconds=0.2
    )
    photo = testing.sample_photos(1)[0].read_bytes()
    target = f"127.0.0.1:{server.grpc_port}"
    try:
        latest = PredictionClient(target, "fashion")
        pinned = PredictionClient(target, "pinned")
        assert latest.status() == [(3, "AVAILABLE"), (2, "AVAILABLE")]
        assert pinned.status() == [(1, "AVAILABLE")]
        assert PredictionClient(target, "every").status() == [(3, "AVAILABLE"), (2, "AVAILABLE"), (1, "AVAILABLE")]
        assert latest.predict_raw([photo]).version == 3
        assert PredictionClient(target, "fashion", version=2).predict_raw([photo]).version == 2
        assert PredictionClient(target, "pinned", label="stable").predict_raw([photo]).version == 1

        # TF Serving's rule: a label may only point at a version that is already AVAILABLE, so loading
        # version 2 and labelling it in one change is refused, and the previous config stays.
        config = model_config.read_model_server_config(str(config_path))
        pinned_cfg = next(m for m in config.model_config_list.config if m.name == "pinned")
        pinned_cfg.model_version_policy.specific.versions.append(2)
        pinned_cfg.version_labels["canary"] = 2
        with pytest.raises(grpc.RpcError) as info:
            pinned.reload_config(config)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label 'canary' to version 2 of model pinned" in info.value.details()
        assert pinned.status() == [(1, "AVAILABLE")]
        with pytest.raises(grpc.RpcError) as info:
            PredictionClient(target, "pinned", label="canary").predict_raw([photo])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Load first, then label: the canary rollout.
        del pinned_cfg.version_labels["canary"]
        pinned.reload_config(config)
        assert testing.wait_for(lambda: pinned.status() == [(2, "AVAILABLE"), (1, "AVAILABLE")])
        pinned_cfg.version_labels["stable"] = 2
        pinned_cfg.version_labels["canary"] = 1
        pinned.reload_config(config)
        assert PredictionClient(target, "pinned", label="stable").predict_raw([photo]).version == 2
        assert PredictionClient(target, "pinned", label="canary").predict_raw([photo]).version == 1

        # A model left out of a reload is unloaded; the others keep serving.
        del config.model_config_list.config[2]
        latest.reload_config(config)
        with pytest.raises(grpc.RpcError) as info:
            PredictionClient(target, "every").predict_raw([photo])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert latest.predict_raw([photo]).version == 3

        # The config file is polled: editing it changes the policy without a restart.
        testing.write_models_config(config_path, [{"name": "fashion", "base_path": str(base_path), "versions": [1]}])
        assert testing.wait_for(
            lambda: latest.status()[-1] == (1, "AVAILABLE") and latest.predict_raw([photo]).version == 1
        )
        # Version 3 goes AVAILABLE -> UNLOADING -> END after version 1 is up, as in TF Serving.
        assert testing.wait_for(lambda: dict(latest.status())[3] == "END")
    finally:
        server.stop()


def test_batching_file_parses_as_tf_serving_reads_it(tmp_path):
    text = """
    max_batch_size { value: 16 }
    batch_timeout_micros { value: 1000 }
    max_enqueued_batches { value: 4 }
    num_batch_threads { value: 2 }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 16
    pad_variable_length_inputs: true
    """
    params = server_config.parse_batching_parameters(text)
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches, params.threads) == (
        16,
        1000,
        4,
        2,
    )
    assert params.allowed_batch_sizes == (8, 16)
    with pytest.raises(server_config.ConfigFileError, match="max_batch_sizes"):
        server_config.parse_batching_parameters("max_batch_sizes { value: 3 }")
    with pytest.raises(server_config.ConfigFileError, match="must equal max_batch_size"):
        server_config.parse_batching_parameters("max_batch_size { value: 16 } allowed_batch_sizes: 8")
    rendered = server_config.render_batching_parameters(load_config("ci").serving)
    assert server_config.parse_batching_parameters(rendered).max_batch_size == 8


def test_full_batch_queue_answers_unavailable_and_recovers():
    release = threading.Event()

    def slow_model(inputs):
        release.wait(30)
        return {"y": inputs["x"] * 2}

    params = server_config.BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    scheduler = BatchScheduler(slow_model, params)
    try:
        running = scheduler.schedule({"x": np.array([1])})
        time.sleep(0.2)  # the only batch thread is now busy with the first task
        queued = scheduler.schedule({"x": np.array([2])})
        with pytest.raises(Exception) as info:
            scheduler.schedule({"x": np.array([3])})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "The batch scheduling queue to which this task was submitted is full" in info.value.message
        release.set()
        assert running.result(30)["y"].tolist() == [2]
        assert queued.result(30)["y"].tolist() == [4]
        assert scheduler.schedule({"x": np.array([5])}).result(30)["y"].tolist() == [10]
    finally:
        release.set()
        scheduler.stop()


def test_concurrent_requests_are_merged_into_batches():
    sizes = []

    def model(inputs):
        sizes.append(len(inputs["x"]))
        time.sleep(0.05)
        return {"y": inputs["x"] + 1}

    params = server_config.BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    scheduler = BatchScheduler(model, params)
    try:
        futures = [scheduler.schedule({"x": np.array([i])}) for i in range(8)]
        assert [f.result(30)["y"].tolist() for f in futures] == [[i + 1] for i in range(8)]
        assert sizes == [8]
    finally:
        scheduler.stop()
