"""Warm start: begin training from an earlier model's weights, its heads resized to the new catalogue's classes.

`train.init` names where training starts: `scratch`, `champion` (the registry's serving champion)
or a model URI (`models:/<name>/<version>`, `models:/<name>@<alias>`, or a model folder path or
gs:// URI). `resolve_init` fetches that model folder; `transfer_weights` copies every layer of the
backbone and the message-passing head whose shape matches, and rebuilds each output layer by label
string: a class the source knew keeps its weights (its column of the kernel and its bias), a new
class keeps the fresh initialisation, a class the new catalogue no longer has is dropped. Only a
source of the same architecture is used: the same layers with the same shapes, except the output
layers' class counts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import layouts, storage
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema

log = logging.getLogger(__name__)

# The output layer of each level (components.train.model) and the schema vocabulary its units follow.
HEAD_LAYERS = {"category": "category_logits", "subcategory": "subcategory_logits", "attributes": "attributes_logits"}
VOCABULARIES = {"category": "categories", "subcategory": "subcategories", "attributes": "attributes"}


@dataclass(frozen=True)
class InitSource:
    """The model a training starts from.

    Attributes:
        uri: what names it for good: `models:/<name>/<version>` for a registry version (an alias
            resolved), else the folder's path or URI.
        model_dir: a local copy of its model folder (`model.keras`, `labels.json`, ...).
        description: how a person reads it, e.g. `champion version 3 (models:/fashion-classifier/3)`.
        champion: the source is the serving champion.
    """

    uri: str
    model_dir: Path
    description: str
    champion: bool = False


@dataclass
class HeadTransfer:
    """One output layer's classes: kept from the source (by label), new, and dropped."""

    kept: int = 0
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass
class WarmStart:
    """What a warm start copied, as `warm_start.json` records it.

    Attributes:
        source: the source's `uri`.
        description: the source's description.
        copied_layers: layers whose weights were copied as they are.
        heads: per level, the classes kept, new and dropped.
        epochs: the epochs the warm-started training runs (`train.warm_start_epochs`).
    """

    source: str
    description: str
    copied_layers: int
    heads: dict[str, HeadTransfer]
    epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """One line, e.g. `from champion version 3: 31 layers copied; sub-category 12 kept, 1 new (Shirts)`."""
        names = {"category": "category", "subcategory": "sub-category", "attributes": "attributes"}
        parts = []
        for level, head in self.heads.items():
            text = f"{names[level]} {head.kept} kept"
            if head.new:
                text += f", {len(head.new)} new ({', '.join(head.new[:3])}{', ...' if len(head.new) > 3 else ''})"
            if head.dropped:
                text += f", {len(head.dropped)} dropped"
            parts.append(text)
        return f"from {self.description}: {self.copied_layers} layers copied; " + "; ".join(parts)


def _registry(config: Config, model_name: str | None = None):
    """The registry of `config.registry` (another registered model's when named), None without a tracking URI."""
    if not config.registry.tracking_uri:
        return None
    from components.register import Registry

    return Registry(config.registry.tracking_uri, model_name or config.registry.model_name)


def resolve_init(config: Config, dst_dir: str | Path) -> InitSource | None:
    """Fetch the model `train.init` names into `dst_dir`; None when training starts from scratch.

    `champion` without a champion (the first run) or without a registry (`registry.tracking_uri`
    empty, as in `fashion train` on its own) starts from scratch, and says so.

    Raises:
        StepError: a model URI names no model, or a folder that is not a trained model folder.
    """
    from components.register.champion import fetch_model_folder, find_version, parse_registry_uri

    init = config.train.init
    if init == "scratch":
        return None
    dst = Path(dst_dir)
    if init == "champion":
        registry = _registry(config)
        if registry is None:
            log.info("train.init=champion: no MLflow registry is configured (registry.tracking_uri): from scratch")
            return None
        champion = find_version(registry)
        if champion is None:
            log.info("train.init=champion: %r has no champion yet: training from scratch", registry.model_name)
            return None
        fetch_model_folder(registry, champion, dst)
        return InitSource(champion.uri, dst, f"champion version {champion.version} ({champion.uri})", champion=True)
    parsed = parse_registry_uri(init)
    if parsed is not None:
        name, ref = parsed
        registry = _registry(config, name)
        if registry is None:
            raise StepError(f"train.init={init}: a registry URI needs the MLflow store (registry.tracking_uri)")
        found = find_version(registry, ref)
        if found is None:
            raise StepError(f"train.init={init}: {name!r} has no version with the alias {ref!r}")
        fetch_model_folder(registry, found, dst)
        return InitSource(found.uri, dst, f"{name} version {found.version} ({found.uri})")
    return InitSource(init, _local_folder(init, dst), init)


def _local_folder(uri: str, dst: Path) -> Path:
    """A model folder at a path or gs:// URI, as a local folder (copied when remote)."""
    if storage.is_gcs(uri):
        try:
            storage.copy_tree(uri, str(dst))
        except storage.StorageError as err:
            raise StepError(f"train.init={uri}: {err}") from err
        folder = dst
    else:
        folder = Path(uri)
    for name in (layouts.MODEL, layouts.LABELS):
        if not (folder / name).is_file():
            raise StepError(
                f"train.init={uri}: {folder / name} not found; name a model folder written by `fashion train`"
            )
    return folder


def _head(layer: Any, source: Any, old: list[str], new: list[str]) -> HeadTransfer:
    """Rebuild an output Dense layer: the source's kernel column and bias for each label it knew."""
    kernel, bias = (np.array(w) for w in layer.get_weights())
    src_kernel, src_bias = (np.asarray(w) for w in source.get_weights())
    index = {label: i for i, label in enumerate(old)}
    transfer = HeadTransfer()
    for j, label in enumerate(new):
        i = index.get(label)
        if i is None:
            transfer.new.append(label)
            continue
        kernel[:, j] = src_kernel[:, i]
        bias[j] = src_bias[i]
        transfer.kept += 1
    transfer.dropped = sorted(set(old) - set(new))
    layer.set_weights([kernel, bias])
    return transfer


def incompatible_layers(model: Any, source_model: Any) -> list[str]:
    """The layers of `model` the source lacks or holds with other shapes (the output layers' class counts aside)."""
    by_name = {layer.name: layer for layer in source_model.layers}
    heads = set(HEAD_LAYERS.values())
    found = []
    for layer in model.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if src is None:
            found.append(f"{layer.name} (not in the source)")
            continue
        src_shapes = [tuple(w.shape) for w in src.weights]
        if layer.name in heads:
            # The input width must match; the class count may differ.
            shapes, src_shapes = [s[:-1] for s in shapes], [s[:-1] for s in src_shapes]
        if shapes != src_shapes:
            found.append(f"{layer.name} ({src_shapes} in the source, {shapes} here)")
    return found


def transfer_weights(
    model: Any, source_model: Any, source_schema: LabelSchema, schema: LabelSchema, source: InitSource
) -> WarmStart:
    """Copy the source model's weights into `model` (same architecture), the output layers by label string.

    Raises:
        StepError: the two models differ in a layer other than the output layers' class counts.
    """
    mismatched = incompatible_layers(model, source_model)
    if mismatched:
        raise StepError(
            f"cannot warm-start from {source.description}: its architecture differs from this configuration's "
            f"({len(mismatched)} layers, e.g. {'; '.join(mismatched[:3])}); set train.init=scratch or use the same "
            "model.* settings"
        )
    by_name = {layer.name: layer for layer in source_model.layers}
    heads: dict[str, HeadTransfer] = {}
    copied = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        src = by_name[layer.name]
        level = next((lv for lv, name in HEAD_LAYERS.items() if name == layer.name), None)
        if level is None:
            layer.set_weights(src.get_weights())
            copied += 1
        else:
            vocab = VOCABULARIES[level]
            heads[level] = _head(layer, src, list(getattr(source_schema, vocab)), list(getattr(schema, vocab)))
    return WarmStart(source.uri, source.description, copied, {k: heads[k] for k in HEAD_LAYERS if k in heads})


def architecture_changes(config: Config, source: InitSource) -> list[str]:
    """The `model.*` settings (by dotted name) in which the source's saved config differs from `config`'s.

    Regularisation (`l2`, `dropout`) and the weights a backbone started from do not change a layer's shape.
    """
    try:
        saved = layouts.read_config(source.model_dir).to_dict()["model"]
    except StepError:
        return []
    plain = config.to_dict()["model"]
    ignored = ("weights", "l2", "dropout")
    return [f"model.{k}" for k in plain if k not in ignored and saved.get(k) != plain[k]]


def epochs_of(config: Config) -> int:
    """The epochs a warm-started training runs: `train.warm_start_epochs`, else `train.epochs`."""
    return config.train.warm_start_epochs or config.train.epochs
