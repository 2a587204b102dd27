"""A registered version's Keras model folder, fetched from its MLflow run: what evaluate scores and train starts from.

Every registered version's run holds the trainer's model folder under `model/` (`model.keras`,
`labels.json`, `config.yaml`, `catalogue.json`, ...: `tracking._log_model_files`). The evaluate
step scores the serving champion's folder on the challenger's test photos; the train step starts
from it (`train.init`) and compares the catalogue it learnt from with the new one.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.register.backend import backend_errors
from components.register.registry import CHAMPION, Registry
from core import layouts
from core.errors import StepError

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))$")


@dataclass(frozen=True)
class RegisteredModel:
    """One registered version and its MLflow run.

    Attributes:
        name: the registered model.
        version: the version number, as a string.
        run_id: the MLflow run that trained it.
        uri: `models:/<name>/<version>`.
    """

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        """`models:/<name>/<version>`: names this version for good, whatever the aliases do later."""
        return f"models:/{self.name}/{self.version}"


def parse_registry_uri(uri: str) -> tuple[str, str] | None:
    """(`name`, version or alias) of a `models:/<name>/<version>` or `models:/<name>@<alias>` URI, else None."""
    match = _REGISTRY_URI.match(uri)
    if not match:
        return None
    return match["name"], match["version"] or match["alias"]


def find_version(registry: Registry, alias_or_version: str = CHAMPION) -> RegisteredModel | None:
    """The version an alias points at (or a version number), None when there is no such alias.

    Raises:
        StepError: a version number that does not exist, or the store fails.
    """
    ref = str(alias_or_version)
    version = ref if ref.isdigit() else registry.get_version(ref)
    if version is None:
        return None
    info = registry.version_info(version)
    if not info.run_id:
        raise StepError(f"version {version} of {registry.model_name!r} names no MLflow run: it holds no model folder")
    return RegisteredModel(registry.model_name, str(version), str(info.run_id))


def _listed(registry: Registry, run_id: str) -> set[str]:
    with backend_errors(registry.tracking_uri, f"list the model files of MLflow run {run_id}"):
        entries = registry.client.list_artifacts(run_id, MODEL_ARTIFACT_PATH)
    return {Path(e.path).name for e in entries if not e.is_dir}


def has_model_folder(registry: Registry, model: RegisteredModel) -> bool:
    """Whether the version's run logged a Keras model folder (`model/model.keras`)."""
    return layouts.MODEL in _listed(registry, model.run_id)


def fetch_model_folder(registry: Registry, model: RegisteredModel, dst_dir: str | Path) -> Path:
    """Download a version's Keras model folder into `dst_dir` (created; it must be empty or absent).

    Returns:
        The folder, holding `model.keras`, `labels.json` and whatever else the version's run logged.

    Raises:
        StepError: the run logged no `model.keras` (a version registered by other means), or the store fails.
    """
    dst = Path(dst_dir)
    if dst.exists() and any(dst.iterdir()):
        raise StepError(f"{dst} is not empty: download a model folder into an empty or new folder")
    names = _listed(registry, model.run_id)
    if layouts.MODEL not in names:
        raise StepError(
            f"version {model.version} of {model.name!r} (MLflow run {model.run_id}) logged no "
            f"{MODEL_ARTIFACT_PATH}/{layouts.MODEL}: it cannot be scored or trained from"
        )
    dst.mkdir(parents=True, exist_ok=True)
    with backend_errors(registry.tracking_uri, f"download the model folder of version {model.version}"):
        for name in sorted(names):
            local = registry.client.download_artifacts(model.run_id, f"{MODEL_ARTIFACT_PATH}/{name}", str(dst / ".dl"))
            shutil.move(local, dst / name)
        shutil.rmtree(dst / ".dl", ignore_errors=True)
    log.info("fetched the model folder of %s (MLflow run %s) into %s", model.uri, model.run_id, dst)
    return dst


def fetch_model_file(registry: Registry, model: RegisteredModel, name: str, dst_dir: str | Path) -> Path | None:
    """Download one file of a version's model folder (e.g. `catalogue.json`); None when the run did not log it."""
    if name not in _listed(registry, model.run_id):
        return None
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    with backend_errors(registry.tracking_uri, f"download {name} of version {model.version}"):
        return Path(registry.client.download_artifacts(model.run_id, f"{MODEL_ARTIFACT_PATH}/{name}", str(dst)))
