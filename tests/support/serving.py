"""Small real fixtures for serving tests and the serving benchmark: a model folder, exports, a server process.

The model folder follows the trainer's contract (docs/ARTIFACTS.md) and is built with the
trainer's own `build_model` at the `ci` preset's size, with random weights: fast to build and
export, and it exercises exactly the graph a trained model has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Config, load_config
from core.labels import LabelSchema
from tests.support.ports import free_port

if TYPE_CHECKING:
    from serving.server.server import ModelServer

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "data" / "samples"




def tiny_schema() -> LabelSchema:
    """A small label schema with the real column names and a few real values."""
    return LabelSchema(
        category_column="subCategory",
        subcategory_column="articleType",
        attribute_columns=("baseColour", "season", "usage", "gender"),
        categories=["Bags", "Bottomwear", "Shoes", "Topwear"],
        subcategories=["Backpacks", "Casual Shoes", "Handbags", "Jeans", "Shirts", "Trousers", "Tshirts"],
        attributes=[
            "baseColour=Black",
            "baseColour=Blue",
            "baseColour=White",
            "season=Summer",
            "season=Winter",
            "usage=Casual",
            "gender=Men",
            "gender=Women",
        ],
        tree={
            "Bags": ["Backpacks", "Handbags"],
            "Bottomwear": ["Jeans", "Trousers"],
            "Shoes": ["Casual Shoes"],
            "Topwear": ["Shirts", "Tshirts"],
        },
    )


def make_model_dir(path: str | Path, seed: int = 0, config: Config | None = None) -> Path:
    """Write a model folder (`model.keras`, `labels.json`, `config.yaml`, `model_config.json`)."""
    import keras

    from components.train.model import build_model

    cfg = config or load_config("ci")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    schema = tiny_schema()
    keras.utils.set_random_seed(seed)
    image_size = (cfg.preprocess.image_height, cfg.preprocess.image_width)
    model = build_model(cfg.model, schema.sizes, image_size)
    model.save(path / "model.keras")
    schema.save(path / "labels.json")
    cfg.save(path / "config.yaml")
    (path / "model_config.json").write_text(json.dumps(cfg.to_dict()["model"], indent=2))
    return path


def sample_photos(limit: int | None = None) -> list[Path]:
    """The held-out photos bundled with the repository, sorted."""
    photos = sorted(SAMPLES_DIR.glob("*.jpg"))
    return photos[:limit] if limit else photos


def write_models_config(path: str | Path, models: Sequence[dict]) -> Path:
    """Write a `ModelServerConfig` text proto.

    Each model is a dict of `name`, `base_path`, and optionally `versions` (specific policy),
    `latest` (num_versions) or `all` (True), and `labels` (label -> version).
    """
    lines = ["model_config_list {"]
    for m in models:
        lines += ["  config {", f'    name: "{m["name"]}"', f'    base_path: "{m["base_path"]}"']
        lines.append('    model_platform: "tensorflow"')
        if "versions" in m:
            versions = " ".join(f"versions: {v}" for v in m["versions"])
            lines.append(f"    model_version_policy {{ specific {{ {versions} }} }}")
        elif "latest" in m:
            lines.append(f"    model_version_policy {{ latest {{ num_versions: {m['latest']} }} }}")
        elif m.get("all"):
            lines.append("    model_version_policy { all {} }")
        for label, version in (m.get("labels") or {}).items():
            lines.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        lines.append("  }")
    lines.append("}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def start_local_server(model_config_file: str | Path, **options: object) -> ModelServer:
    """A started in-process server on loopback ephemeral ports, reading `model_config_file`."""
    from serving.server.server import ModelServer, ServerOptions

    settings = {"port": 0, "rest_api_port": 0, "host": "127.0.0.1", "model_config_file": str(model_config_file)}
    return ModelServer(ServerOptions(**{**settings, **options})).start()


class ServerProcess:
    """`fashion serve` in a subprocess on loopback ports; a context manager that waits until ready."""

    def __init__(self, args: Sequence[str], ready_timeout_s: float = 180.0, log_path: str | Path | None = None):
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            "--host=127.0.0.1",
            *args,
        ]
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        """The gRPC target, host:port."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> ServerProcess:
        """Start the server and block until its REST API answers."""
        import urllib.request

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.rest_url}/v1/models", timeout=1):
                    pass
            except OSError as err:
                # Any HTTP answer (even an error status) means the server is up and listening.
                if getattr(err, "code", None):
                    return self
                time.sleep(0.3)
                continue
            return self
        self.stop()
        raise RuntimeError(f"server not ready after {self.ready_timeout_s}s: {self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
