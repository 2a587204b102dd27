"""The deploy step: publish the registry's challenger, verify it as a canary on every replica, then make it `stable`.

Routing (README "Routing"): TF Serving answers a request that names no version or label with the
highest version the model's entry has loaded. So the main entry of models.config only ever names
verified versions, and every models.config written on the way keeps that true: a server that reads
the file at any moment, or restarts from it (the official image reads nothing else), sends
unlabelled traffic to a verified version.

1. pin: the main entry serves the `stable` version (and the verified versions below it) with a
   `specific` policy; a `latest` policy would load the next step's folder as soon as it appears;
2. the challenger's SavedModel is published as the next version under the model base path;
3. canary: a `<name>-canary` entry on the same base path loads only the new version (warmup
   included), and GetModelStatus must report it AVAILABLE there;
4. smoke predictions on known photos, sent to `<name>-canary` by version number, must match the
   same SavedModel run in-process and agree with the evaluation step's predictions;
5. promote: the canary entry goes and the main entry loads the verified version beside the
   previous one (still `stable`); once it is AVAILABLE there, `stable` moves to it. The previous
   version stays loaded below it for an instant rollback, and the registry's `champion` follows.

Any failure before `stable` moves restores the pinned models.config, removes the published version
and raises StepError with the reason. A deploy that dies without cleaning up leaves its candidate
reachable only as `<name>-canary`; the next deploy or rollback drops that entry and its folder.

Replicas: the endpoint may be several servers (a list, or a `dns:///` name such as a Kubernetes
headless service: `serving.admin.replica_targets`). They all read one models.config, the source of
truth that each step writes first and then pushes to every replica, so a replica that restarts or
polls the file converges on it. Every wait and every smoke check above runs on every replica, and
`stable` and `champion` move only once all of them have verified the candidate; a deploy or
rollback ends when every replica answers requests that name no version, and `stable`, with the new
version.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from components.deploy.smoke import (
    SMOKE_PHOTOS,
    expected_photos,
    load_expected,
    reference_outputs,
    smoke_check,
    stored_reference,
)
from components.register.registry import CHALLENGER, CHAMPION, TAG_PREVIOUS_CHAMPION, Registry
from core import storage
from core.config import Config
from core.errors import StepError
from core.progress import Progress
from serving import model_config, store
from serving.admin import Replicas
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
    replicas: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "registry_version": self.registry_version,
            "serving_version": self.serving_version,
            "previous_serving_version": self.previous_serving_version,
            "smoke": self.smoke,
            "replicas": self.replicas,
        }


def next_version(model_base_path: str, config: Any, model_name: str, known: Sequence[int] = ()) -> int:
    """One more than any version on disk, named in the config or known to the server.

    A server treats a version number as one immutable servable, so a number it has seen (even
    from a deploy that failed and was removed) is never published again: the base path records
    the highest number published there.
    """
    named = model_config.named_versions(config, model_name)
    published = [*store.list_versions(model_base_path), store.highest_published(model_base_path)]
    return max([0, *published, *named, *known]) + 1


def _replicas(server: str, config: Config) -> Replicas:
    serving = config.serving
    return Replicas(server, serving.model_name, serving.request_timeout_s, serving.max_message_mb * 1024 * 1024)


def _apply(replicas: Replicas, model_config_uri: str, config: Any, timeout_s: float | None = None) -> None:
    """Write the models.config every replica reads, then push it to each of them so that they apply it now.

    The file comes first: it is the one source of truth, which a replica that polls it or restarts
    converges on without the push, and every config written on the way keeps unlabelled requests
    on a verified version.
    """
    model_config.write_model_server_config(model_config_uri, config)
    replicas.reload_config(config, timeout_s)


def _restore(replicas: Replicas, model_config_uri: str, original: Any) -> None:
    try:
        _apply(replicas, model_config_uri, original)
    except (StepError, storage.StorageError) as err:
        # The file is written first: a replica that missed the push converges on it when it polls.
        log.error("could not restore the previous config everywhere: %s", err)


def _wait_routed(replicas: Replicas, version: int, timeout_s: float) -> None:
    """Wait until every replica answers requests that name no version, and those naming `stable`, with `version`."""
    replicas.wait_resolved(version, timeout_s)
    replicas.wait_resolved(version, timeout_s, STABLE_LABEL)


def _stable_version(model: Any, available: set[int]) -> int | None:
    """The verified version unlabelled requests are meant for: the `stable` label's.

    A models.config without the label (a first `latest` policy) has verified nothing; what the
    replicas answer unlabelled requests with today, the highest version AVAILABLE on all, is kept.
    """
    if STABLE_LABEL in model.version_labels:
        return int(model.version_labels[STABLE_LABEL])
    return max(available) if available else None


def _worst(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The smoke figures of every replica as one: the largest score difference, the lowest agreement."""
    worst = {**checks[0], "max_score_difference": max(c["max_score_difference"] for c in checks)}
    if "agreement" in worst:
        worst["agreement"] = min(c["agreement"] for c in checks)
    return worst


def _pinned(config: Any, model_name: str, stable: int | None) -> Any:
    """`config` with the main entry serving `stable` and the versions below it that it names, and no canary."""
    if stable is None:
        return model_config.with_routing(config, model_name, serving=(), stable=None)
    named = model_config.find_model(config, model_name).model_version_policy.specific.versions
    return model_config.with_routing(
        config, model_name, serving={stable, *(v for v in named if v < stable)}, stable=stable
    )


def _remove_leftover_candidates(original: Any, current: Any, model_name: str, base_path: str) -> None:
    """Delete the folders of candidates a dead deploy left in a canary entry that `current` no longer names."""
    for leftover in sorted(
        model_config.canary_versions(original, model_name) - model_config.named_versions(current, model_name)
    ):
        log.warning("removing serving version %d, left as a canary by a deploy that did not finish", leftover)
        store.remove_version_dir(store.version_uri(base_path, leftover))


def deploy_model(
    registry: Registry,
    config: Config,
    server: str,
    model_config_uri: str,
    predictions_path: str | Path | None = None,
    smoke_photos: Sequence[str | Path] = (),
    timeout_s: float = 300.0,
    min_agreement: float = 0.9,
    max_smoke_photos: int = SMOKE_PHOTOS,
) -> DeployResult:
    """Publish the `challenger`, verify it as `<name>-canary` on every replica, then move `stable` and `champion`.

    Args:
        registry: the model registry (MLflow): its `challenger` is deployed.
        config: resolved config; `serving.model_name` and `serving.model_base_path` are used.
        server: the endpoint's replicas: gRPC `host:port`, a comma-separated list of them, or
            `dns:///<headless service>:<port>` for every address the name resolves to.
        model_config_uri: the models.config every replica reads (local or `gs://`); written here.
        predictions_path: the evaluation's predictions.jsonl; its photos are the smoke photos and
            its predicted labels the reference.
        smoke_photos: more known photos to send (only compared with the in-process SavedModel).
        timeout_s: how long the new version may take to become AVAILABLE.
        min_agreement: least share of evaluation photos whose labels must match.
        max_smoke_photos: how many evaluation records to use.

    Returns:
        What was deployed.

    Raises:
        StepError: anything failed (on any replica); the previous version is still serving and
            still `stable` on all of them.
    """
    serving = config.serving
    if not serving.model_base_path:
        raise StepError("serving.model_base_path is empty: set where versions are published (folder or gs://)")
    registry_version = registry.get_version(CHALLENGER)
    if registry_version is None:
        raise StepError(f"registered model {registry.model_name!r} has no {CHALLENGER!r}: register a model first")
    name = serving.model_name
    canary = model_config.canary_model_name(name)
    original = model_config.read_or_single_model_config(model_config_uri, name, serving.model_base_path)
    model = model_config.find_model(original, name)
    if model.base_path.rstrip("/") != serving.model_base_path.rstrip("/"):
        raise StepError(
            f"models.config serves {name!r} from {model.base_path}, "
            f"but serving.model_base_path is {serving.model_base_path}: make them the same"
        )

    with _replicas(server, config) as replicas, tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        previous = _stable_version(model, replicas.available())
        pinned = _pinned(original, name, previous)
        kept = set(model_config.find_model(pinned, name).model_version_policy.specific.versions)
        known = [*replicas.known_versions(), *replicas.known_versions(canary)]
        version = next_version(serving.model_base_path, original, name, known)
        version_uri = store.version_uri(serving.model_base_path, version)
        expected = load_expected(predictions_path, max_smoke_photos) if predictions_path else []
        photos = expected_photos(expected) + [Path(p).read_bytes() for p in smoke_photos]
        saved_model = registry.download_export(registry_version, Path(tmp) / "saved_model")
        promoting = {version} if previous is None else {previous, version}
        deploying = Progress("deploying", 4, "stages")
        try:
            _apply(replicas, model_config_uri, pinned)
            _remove_leftover_candidates(original, pinned, name, serving.model_base_path)
            store.record_published(serving.model_base_path, version)
            store.publish_version_dir(saved_model, version_uri)
            log.info(
                "published registry version %s as serving version %d at %s", registry_version, version, version_uri
            )
            deploying.update(1, f"version {version} published, loading")
            # A server answers a config that adds a model once its versions have loaded.
            candidate = model_config.with_routing(pinned, name, serving=kept, stable=previous, candidate=version)
            _apply(replicas, model_config_uri, candidate, timeout_s)
            replicas.wait_available(version, timeout_s, canary)
            deploying.update(2, f"version {version} loaded, smoke check")
            # The registration's answers for these photos; else run in-process, once the replicas have
            # loaded it, so a broken SavedModel fails with their reason.
            reference = stored_reference(saved_model, photos)
            if reference is None:
                log.info("no stored reference for these %d smoke photos: running the SavedModel here", len(photos))
                reference = reference_outputs(saved_model, photos)
            checks = []
            for target in replicas.targets:
                with PredictionClient(
                    target,
                    canary,
                    version=version,
                    timeout_s=serving.request_timeout_s,
                    max_message_bytes=serving.max_message_mb * 1024 * 1024,
                ) as client:
                    checks.append(smoke_check(client, reference, photos, expected, min_agreement))
            deploying.update(3, f"version {version} verified, moving stable")
            # Verified on every replica: the main entry may load it. A label may only point at a
            # loaded version, so `stable` moves in a second push, once every replica reports it AVAILABLE.
            _apply(replicas, model_config_uri, model_config.with_routing(pinned, name, promoting, stable=previous))
            replicas.wait_available(version, timeout_s)
            _apply(replicas, model_config_uri, model_config.with_routing(pinned, name, promoting, stable=version))
            _wait_routed(replicas, version, timeout_s)
            deploying.finish()
        except Exception as err:
            # Whatever went wrong, the unverified version must not stay published.
            _restore(replicas, model_config_uri, pinned)
            store.remove_version_dir(version_uri)
            if not isinstance(err, StepError | storage.StorageError | grpc.RpcError):
                raise
            raise StepError(
                f"deploy of registry version {registry_version} failed, version {previous} still serves: {err}"
            ) from err
    # The endpoint now serves the new version as `stable`; the registry follows.
    registry.set_tag(registry_version, TAG_SERVING_VERSION, str(version))
    registry.promote(registry_version)
    log.info(
        "serving version %d (registry %s) is stable and champion on %d replicas",
        version,
        registry_version,
        len(replicas.targets),
    )
    return DeployResult(registry_version, version, previous, _worst(checks), replicas.targets)


def rollback_model(
    registry: Registry, config: Config, server: str, model_config_uri: str, timeout_s: float = 300.0
) -> DeployResult:
    """Move `stable` and `champion` back to the version the current champion replaced, and unload the current one.

    The main entry ends up serving only that version, so requests that name no version or label
    are answered by it too (TF Serving gives them the highest loaded version). Every replica of
    `server` (as for `deploy_model`) must answer with it before the alias moves.

    Raises:
        StepError: nothing to roll back to, or a replica cannot serve the previous version;
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
    name = serving.model_name
    original = model_config.read_or_single_model_config(model_config_uri, name, serving.model_base_path)
    model = model_config.find_model(original, name)
    stable = int(model.version_labels[STABLE_LABEL]) if STABLE_LABEL in model.version_labels else None
    rolled_back = model_config.with_routing(original, name, serving={target}, stable=target)
    with _replicas(server, config) as replicas:
        try:
            if target not in replicas.available():
                # Loaded beside the current `stable`, which keeps the label until it is AVAILABLE.
                loading = {target} | ({stable} if stable is not None else set())
                _apply(replicas, model_config_uri, model_config.with_routing(original, name, loading, stable=stable))
                replicas.wait_available(target, timeout_s)
            _apply(replicas, model_config_uri, rolled_back)
            # Until the others have unloaded, a higher one still takes the requests that name no version.
            replicas.wait_unloaded(set(replicas.known_versions()) - {target}, timeout_s)
            _wait_routed(replicas, target, timeout_s)
        except (StepError, storage.StorageError) as err:
            _restore(replicas, model_config_uri, original)
            raise StepError(
                f"rollback to serving version {target} failed, version {stable} still serves: {err}"
            ) from err
    _remove_leftover_candidates(original, rolled_back, name, serving.model_base_path)
    registry.rollback()
    log.info("rolled back: serving version %d (registry %s) is stable and champion", target, previous)
    return DeployResult(str(previous), target, stable, replicas=replicas.targets)
