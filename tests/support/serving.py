"""Small real fixtures for serving tests and the serving benchmark: a model folder, exports, a server process.

The model folder follows the trainer's contract (docs/ARTIFACTS.md) and is built with the
trainer's own `build_model` at the `ci` preset's size, with random weights: fast to build and
export, and it exercises exactly the graph a trained model has.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Config, load_config
from core.labels import LabelSchema
from pipeline import server_process
from serving import model_config
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


class Killed(BaseException):
    """A deploy process dying on the spot: like SIGKILL, it runs no `except Exception` cleanup."""


def two_exports(root: Path) -> list[str]:
    """Two different SavedModel exports of the tiny model (different random weights) under `root`."""
    from components.register import export

    return [
        export.export_model(make_model_dir(root / f"model{seed}", seed=seed), str(root / "export" / str(seed)))
        for seed in (0, 1)
    ]


def sample_photos(limit: int | None = None) -> list[Path]:
    """The held-out photos bundled with the repository, sorted."""
    photos = sorted(SAMPLES_DIR.glob("*.jpg"))
    return photos[:limit] if limit else photos


def write_models_config(path: str | Path, models: Sequence[dict]) -> Path:
    """Write a `ModelServerConfig` text proto.

    Each model is a dict of `name`, `base_path`, and optionally `versions` (specific policy),
    `latest` (num_versions) or `all` (True), and `labels` (label -> version).
    """
    config = model_config.new_model_server_config()
    for m in models:
        entry = model_config.add_model(config, m["name"], m["base_path"])
        model_config.set_version_policy(
            entry, specific=m.get("versions"), latest=m.get("latest"), all_versions=bool(m.get("all"))
        )
        model_config.set_labels(entry, m.get("labels") or {})
    path = Path(path)
    model_config.write_model_server_config(str(path), config)
    return path


def start_local_server(model_config_file: str | Path, **options: object) -> ModelServer:
    """A started in-process server on loopback ephemeral ports, reading `model_config_file`."""
    from serving.server.server import ModelServer, ServerOptions

    settings = {"port": 0, "rest_api_port": 0, "host": "127.0.0.1", "model_config_file": str(model_config_file)}
    return ModelServer(ServerOptions(**{**settings, **options})).start()


class ServerProcess(server_process.ServerProcess):
    """`fashion serve` attached to the test on free loopback ports, from the repository root; waits until ready."""

    def __init__(self, args: Sequence[str], ready_timeout_s: float = 180.0, log_path: str | Path | None = None):
        super().__init__(
            args,
            host="127.0.0.1",
            grpc_port=free_port(),
            rest_port=free_port(),
            log_path=log_path,
            env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)},
            cwd=REPO,
            ready_timeout_s=ready_timeout_s,
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll `predicate` every 0.1 s until it holds or `timeout_s` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()
