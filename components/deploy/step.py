"""The deploy step: publish the registry's challenger to the endpoint, verify it, then promote it.

Order of operations (TF Serving's canary rule: a label may only point at a loaded version):

1. the challenger's SavedModel is published as the next version under the model base path;
2. the server's models.config keeps `stable` on the serving version and adds the new one to the
   `specific` policy; the server loads it (warmup included) and GetModelStatus must report it
   AVAILABLE;
3. smoke predictions on known photos, sent to that version by number, must match the same
   SavedModel run in-process and agree with the evaluation step's predictions;
4. only then `stable` moves to the new version (the previous one stays loaded for an instant
   rollback) and the registry's `champion` alias follows.

Any failure before step 4 restores the previous models.config, removes the published version and
raises StepError with the reason: the previous version never stops serving.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from components.deploy.smoke import load_expected, smoke_check
from components.register.registry import CHALLENGER, CHAMPION, TAG_PREVIOUS_CHAMPION, Registry
from core import storage
from core.config import Config
from core.errors import StepError
from serving import model_config, store
from serving.admin import ModelAdmin
from serving.client import PredictionClient
from serving.model_config import STABLE_LABEL

log = logging.getLogger(__name__)

# The serving version a registry version was published as; rollback finds its way back with it.
TAG_SERVING_VERSION = "serving_version"


@dataclass
class DeployResult:
    """What the deploy step did."""

    registry_version: str
    serving_version: int
    previous_serving_version: int | None
    smoke: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "registry_version": self.registry_version,
            "serving_version": self.serving_version,
            "previous_serving_version": self.previous_serving_version,
            "smoke": self.smoke,
        }


def next_version(model_base_path: str, config: Any, model_name: str, known: Sequence[int] = ()) -> int:
    """One more than any version on disk, named in the config or known to the server.

    A server treats a version number as one immutable servable, so a number it has seen (even
    from a deploy that failed and was removed) is never published again.
    """
    named = model_config.named_versions(config, model_name)
    return max([0, *store.list_versions(model_base_path), *named, *known]) + 1


def _admin(server: str, config: Config) -> ModelAdmin:
    serving = config.serving
    return ModelAdmin(server, serving.model_name, serving.request_timeout_s, serving.max_message_mb * 1024 * 1024)


def _apply(admin: ModelAdmin, model_config_uri: str, config: Any) -> None:
    """Push the config to the server now, then write the file it reads (for restarts and polling replicas).

    Pushing first means a config the server refuses is never written.
    """
    admin.reload_config(config)
    model_config.write_model_server_config(model_config_uri, config)


def _restore(admin: ModelAdmin, model_config_uri: str, original: Any) -> None:
    try:
        _apply(admin, model_config_uri, original)
    except StepError as err:
        log.error("could not restore the previous config: %s", err)


def deploy_model(
    registry: Registry,
    config: Config,
    server: str,
    model_config_uri: str,
    predictions_path: str | Path | None = None,
    smoke_photos: Sequence[str | Path] = (),
    timeout_s: float = 300.0,
    min_agreement: float = 0.9,
    max_smoke_photos: int = 16,
) -> DeployResult:
    """Publish the `challenger`, verify it on the live endpoint, then move `stable` and `champion`.

    Args:
        registry: the model registry (MLflow): its `challenger` is deployed.
        config: resolved config; `serving.model_name` and `serving.model_base_path` are used.
        server: gRPC `host:port` of the endpoint.
        model_config_uri: the models.config the server reads (local or `gs://`); written here.
        predictions_path: the evaluation's predictions.jsonl; its photos are the smoke photos and
            its predicted labels the reference.
        smoke_photos: more known photos to send (only compared with the in-process SavedModel).
        timeout_s: how long the new version may take to become AVAILABLE.
        min_agreement: least share of evaluation photos whose labels must match.
        max_smoke_photos: how many evaluation records to use.

    Returns:
        What was deployed.

    Raises:
        StepError: anything failed; the previous version is still serving and still `stable`.
    """
    serving = config.serving
    if not serving.model_base_path:
        raise StepError("serving.model_base_path is empty: set where versions are published (folder or gs://)")
    registry_version = registry.get_version(CHALLENGER)
    if registry_version is None:
        raise StepError(f"registered model {registry.model_name!r} has no {CHALLENGER!r}: register a model first")
    original = model_config.read_or_single_model_config(model_config_uri, serving.model_name, serving.model_base_path)
    model = model_config.find_model(original, serving.model_name)
    if model.base_path.rstrip("/") != serving.model_base_path.rstrip("/"):
        raise StepError(
            f"models.config serves {serving.model_name!r} from {model.base_path}, "
            f"but serving.model_base_path is {serving.model_base_path}: make them the same"
        )
    previous = model.version_labels.get(STABLE_LABEL)

    with _admin(server, config) as admin, tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        version = next_version(serving.model_base_path, original, serving.model_name, admin.known_versions())
        version_uri = store.version_uri(serving.model_base_path, version)
        expected = load_expected(predictions_path, max_smoke_photos) if predictions_path else []
        photos = [storage.read_bytes(e["uri"]) for e in expected] + [Path(p).read_bytes() for p in smoke_photos]

        saved_model = registry.download_export(registry_version, Path(tmp) / "saved_model")
        store.publish_version_dir(saved_model, version_uri)
        log.info("published registry version %s as serving version %d at %s", registry_version, version, version_uri)
        loaded = [previous, version] if previous is not None else [version]
        try:
            _apply(admin, model_config_uri, model_config.with_versions(original, serving.model_name, loaded, previous))
            admin.wait_available(version, timeout_s)
            with PredictionClient(
                server,
                serving.model_name,
                version=version,
                timeout_s=serving.request_timeout_s,
                max_message_bytes=serving.max_message_mb * 1024 * 1024,
            ) as client:
                smoke = smoke_check(client, saved_model, photos, expected, min_agreement)
            _apply(admin, model_config_uri, model_config.with_versions(original, serving.model_name, loaded, version))
        except (StepError, storage.StorageError, grpc.RpcError) as err:
            _restore(admin, model_config_uri, original)
            store.remove_version_dir(version_uri)
            raise StepError(
                f"deploy of registry version {registry_version} failed, version {previous} still serves: {err}"
            ) from err
    # The endpoint now serves the new version as `stable`; the registry follows.
    registry.set_tag(registry_version, TAG_SERVING_VERSION, str(version))
    registry.promote(registry_version)
    log.info("serving version %d (registry %s) is stable and champion", version, registry_version)
    return DeployResult(registry_version, version, previous, smoke)


def rollback_model(
    registry: Registry, config: Config, server: str, model_config_uri: str, timeout_s: float = 300.0
) -> DeployResult:
    """Move `stable` and `champion` back to the version the current champion replaced.

    Raises:
        StepError: nothing to roll back to, or the endpoint cannot serve the previous version;
            then neither the label nor the alias has moved.
    """
    serving = config.serving
    current = registry.get_version(CHAMPION)
    if current is None:
        raise StepError(f"registered model {registry.model_name!r} has no {CHAMPION!r}: nothing to roll back")
    # Checked here as well as in Registry.rollback: the endpoint must not change when the registry cannot follow.
    previous = registry.version_info(current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise StepError(f"champion version {current} replaced no earlier version: nothing to roll back to")
    target = registry.version_info(previous).tags.get(TAG_SERVING_VERSION)
    if not target:
        raise StepError(
            f"registry version {previous} has no {TAG_SERVING_VERSION!r} tag: it was not deployed by `fashion deploy`"
        )
    target = int(target)
    original = model_config.read_or_single_model_config(model_config_uri, serving.model_name, serving.model_base_path)
    model = model_config.find_model(original, serving.model_name)
    stable = model.version_labels.get(STABLE_LABEL)
    loaded = sorted({*model.model_version_policy.specific.versions, target})
    with _admin(server, config) as admin:
        try:
            _apply(admin, model_config_uri, model_config.with_versions(original, serving.model_name, loaded, stable))
            admin.wait_available(target, timeout_s)
            _apply(admin, model_config_uri, model_config.with_versions(original, serving.model_name, loaded, target))
        except StepError as err:
            _restore(admin, model_config_uri, original)
            raise StepError(
                f"rollback to serving version {target} failed, version {stable} still serves: {err}"
            ) from err
    registry.rollback()
    log.info("rolled back: serving version %d (registry %s) is stable and champion", target, previous)
    return DeployResult(str(previous), target, stable)
