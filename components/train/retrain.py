"""Data-aware retraining: is there anything new to learn since the champion was trained.

A model is the product of its catalogue (ids and labels: `core.catalogue`) and the settings that
shape what it learns (labels, preprocessing, model, training). Their fingerprint is stored with
every model (`catalogue.json` in the model folder, logged to MLflow with it). Before training, the
train step compares it with the champion's: equal, and the run is skipped (`train.skip_unchanged`,
`fashion run --force` retrains anyway) with the reason in the model folder's `unchanged.json`;
different, and the step says what changed.

Settings that only say how a retrain starts or where it runs (`train.init`, `train.warm_start_epochs`,
`train.skip_unchanged`, the Beam runner's workers and mode) and the gate's settings are not part of
the fingerprint: changing them does not make the same catalogue worth learning again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import layouts
from core.catalogue import CatalogueDrift, CatalogueSnapshot, compare
from core.config import Config
from core.errors import StepError

log = logging.getLogger(__name__)

LEARNING_SECTIONS = ("labels", "preprocess", "model", "train")
NOT_LEARNT = {
    "train": ("init", "warm_start_epochs", "skip_unchanged"),
    "preprocess": ("direct_num_workers", "direct_running_mode"),
}


def learning_settings(config: Config) -> dict[str, Any]:
    """The settings that shape what a model learns from its catalogue, as a nested dict."""
    plain = config.to_dict()
    return {
        section: {k: v for k, v in plain[section].items() if k not in NOT_LEARNT.get(section, ())}
        for section in LEARNING_SECTIONS
    }


def fingerprint(snapshot: CatalogueSnapshot, config: Config) -> dict[str, str]:
    """The catalogue's, the settings' and the combined fingerprint (sha256 hex digests)."""
    data = snapshot.fingerprint()
    settings = hashlib.sha256(json.dumps(learning_settings(config), sort_keys=True).encode()).hexdigest()
    combined = hashlib.sha256(f"{data}:{settings}".encode()).hexdigest()
    return {"catalogue": data, "settings": settings, "combined": combined}


def write_catalogue(model_dir: str | Path, snapshot: CatalogueSnapshot, config: Config) -> Path:
    """`catalogue.json` of a model folder: the snapshot, its fingerprint and the learning settings."""
    return snapshot.save(
        Path(model_dir) / layouts.CATALOGUE,
        fingerprint=fingerprint(snapshot, config),
        settings=learning_settings(config),
    )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def settings_changes(before: dict[str, Any], config: Config) -> list[str]:
    """`section.field old -> new` for every learning setting that differs from `before`."""
    old, new = _flat(before), _flat(learning_settings(config))
    keys = sorted(old.keys() | new.keys())
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


@dataclass(frozen=True)
class RetrainCheck:
    """How the new catalogue and settings compare with the champion's.

    Attributes:
        champion: the champion's `models:/<name>/<version>`, '' when there is none.
        unchanged: the catalogue and the learning settings are the champion's.
        drift: the catalogue drift from the champion's training data (None when unknown).
        settings: the learning settings that changed (`section.field old -> new`).
        message: one line saying all of it.
    """

    champion: str
    unchanged: bool
    drift: CatalogueDrift | None
    settings: tuple[str, ...]
    message: str


def check_against_champion(config: Config, snapshot: CatalogueSnapshot) -> RetrainCheck:
    """Compare the catalogue and settings with those the registry's champion was trained on.

    Without a registry (`registry.tracking_uri` empty) or a champion, or when the champion recorded
    no catalogue (registered before catalogues were stored), the run trains and the message says why.

    Raises:
        StepError: the registry cannot be reached or fails.
    """
    from components.register import Registry
    from components.register.champion import fetch_model_file, find_version

    if not config.registry.tracking_uri:
        return RetrainCheck("", False, None, (), "no MLflow registry configured: nothing to compare the catalogue with")
    registry = Registry(config.registry.tracking_uri, config.registry.model_name)
    champion = find_version(registry)
    if champion is None:
        message = f"no champion of {registry.model_name!r} yet: training the first model"
        return RetrainCheck("", False, None, (), message)
    name = f"champion version {champion.version}"
    with tempfile.TemporaryDirectory(prefix="champion-catalogue-") as tmp:
        path = fetch_model_file(registry, champion, layouts.CATALOGUE, tmp)
        if path is None:
            return RetrainCheck(champion.uri, False, None, (), f"{name} recorded no catalogue: retraining")
        saved = json.loads(path.read_text())
        before = CatalogueSnapshot.load(path)
    drift = compare(before, snapshot)
    settings = tuple(settings_changes(saved.get("settings") or {}, config))
    now = fingerprint(snapshot, config)
    unchanged = (saved.get("fingerprint") or {}).get("combined") == now["combined"]
    if unchanged:
        message = (
            f"catalogue and settings unchanged since {name} ({champion.uri}) was trained "
            f"({snapshot_size(snapshot)}, fingerprint {now['combined'][:12]})"
        )
    else:
        changes = [drift.summary() if drift.changed else "catalogue unchanged"]
        if settings:
            changes.append(f"settings changed: {', '.join(settings[:4])}{', ...' if len(settings) > 4 else ''}")
        message = f"changed since {name}: " + "; ".join(changes)
    return RetrainCheck(champion.uri, unchanged, drift, settings, message)


def snapshot_size(snapshot: CatalogueSnapshot) -> str:
    """`1,200 products`."""
    return f"{len(snapshot.products):,} products"


def write_unchanged(model_dir: str | Path, check: RetrainCheck, snapshot: CatalogueSnapshot, config: Config) -> Path:
    """The model folder of a skipped training: `unchanged.json` (why, and the champion) in place of a model."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "unchanged": True,
        "champion": check.champion,
        "message": check.message,
        "fingerprint": fingerprint(snapshot, config),
        "products": len(snapshot.products),
        "force": "fashion run --force (or --set train.skip_unchanged=false) retrains anyway",
    }
    path = out / layouts.UNCHANGED
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_unchanged(model_dir: str | Path) -> dict[str, Any] | None:
    """The `unchanged.json` of a skipped training's model folder, None for a trained model."""
    path = Path(model_dir) / layouts.UNCHANGED
    if not path.is_file():
        return None
    data = layouts.read_json(path, "the record of a skipped training")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected a JSON object")
    return data
