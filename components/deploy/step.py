"""The deploy step: publish the registry's challenger to the endpoint, verify it, then promote it.

Order of operations (TF Serving's canary rule: a label may only point at a loaded version):

1. the challenger's SavedModel is published as the next version under the model base path;
2. the server's models.config keeps `stable` on the serving version and adds the new one to the
   `specific` policy; the server loads it (warmup included) and GetModelStatus must report it
   AVAILABLE;
3. smoke predictions on known photos, sent to that version by number, must match the same
   SavedModel run in-process and agree with the evaluation step's predictions;
4. only then `stable` moves to the new version (the previous one stays loaded for an instant
   rollback) and the MLflow `champion` alias follows.

Any failure before step 4 restores the previous models.config, removes the published version and
raises StepError with the reason: the previous version never stops serving.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from core import storage
from core.config import Config
from core.errors import StepError

log = logging.getLogger(__name__)

STABLE_LABEL = "stable"
CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_SERVING_VERSION = "serving_version"
TAG_PREVIOUS_CHAMPION = "previous_champion"


class ModelRegistry(Protocol):
    """What deploy needs from the registry (components.register.registry.Registry provides it)."""

    model_name: str

    def get_version(self, alias: str) -> str | None: ...  # noqa: D102

    def download_export(self, alias_or_version: str | int, dst_dir: str | Path) -> Path: ...  # noqa: D102

    def version_info(self, alias_or_version: str | int) -> Any: ...  # noqa: D102

    def promote(self, version: str | int) -> str | None: ...  # noqa: D102

    def rollback(self) -> str: ...  # noqa: D102

    @property
    def client(self) -> Any: ...  # noqa: D102


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


# -- models.config --------------------------------------------------------------------------------


def read_config(model_config_uri: str, model_name: str, model_base_path: str) -> Any:
    """The models.config the server reads; a fresh one for `model_name` when the file does not exist yet."""
    from serving.server import config as server_config

    if storage.exists(model_config_uri):
        config = server_config.read_model_server_config(model_config_uri)
    else:
        config = server_config.single_model_config(model_name, model_base_path)
    model_config(config, model_name)
    return config


def model_config(config: Any, model_name: str) -> Any:
    """The ModelConfig entry of `model_name` in a ModelServerConfig."""
    for model in config.model_config_list.config:
        if model.name == model_name:
            return model
    raise StepError(f"the models.config has no model named {model_name!r}: add it or set serving.model_name")


def with_versions(config: Any, model_name: str, versions: Sequence[int], stable: int | None) -> Any:
    """A copy of `config` whose model serves exactly `versions` (specific policy) with `stable` on one."""
    new = type(config)()
    new.CopyFrom(config)
    model = model_config(new, model_name)
    model.model_version_policy.Clear()
    model.model_version_policy.specific.versions.extend(sorted(set(versions)))
    model.version_labels.clear()
    if stable is not None:
        model.version_labels[STABLE_LABEL] = stable
    return new


class Endpoint:
    """The serving endpoint as deploy sees it: the config file it reads, and its gRPC API."""

    def __init__(self, server: str, model_name: str, model_config_uri: str, timeout_s: float, max_message_bytes: int):
        from serving.client import PredictionClient

        self.server = server
        self.model_name = model_name
        self.model_config_uri = model_config_uri
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.client = PredictionClient(server, model_name, timeout_s=timeout_s, max_message_bytes=max_message_bytes)

    def apply(self, config: Any) -> None:
        """Write the config file (for restarts and polling replicas) and push it to the server now."""
        from serving.server import config as server_config

        try:
            self.client.reload_config(config)
        except grpc.RpcError as err:
            raise StepError(
                f"the server at {self.server} refused the new config: {err.code().name}: {err.details()}"
            ) from err
        server_config.write_model_server_config(self.model_config_uri, config)

    def known_versions(self) -> list[int]:
        """Every version the server has seen of the model, loaded or not (version numbers are never reused)."""
        try:
            return [v for v, _ in self.client.status()]
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise StepError(f"GetModelStatus failed at {self.server}: {err.code().name}: {err.details()}") from err

    def wait_available(self, version: int, deadline_s: float) -> None:
        """Poll GetModelStatus until `version` is AVAILABLE; fail on END (load error) or timeout."""
        from serving.client import PredictionClient

        probe = PredictionClient(self.server, self.model_name, version=version, timeout_s=self.timeout_s)
        deadline = time.monotonic() + deadline_s
        state = "UNKNOWN"
        try:
            while time.monotonic() < deadline:
                try:
                    states = dict(probe.status())
                    state = states.get(version, "UNKNOWN")
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise StepError(f"GetModelStatus failed at {self.server}: {err.details()}") from err
                    state = "UNKNOWN"
                if state == "AVAILABLE":
                    return
                if state == "END":
                    reason = probe.version_errors().get(version, "unloaded")
                    raise StepError(f"version {version} failed to load on {self.server}: {reason}")
                time.sleep(0.2)
        finally:
            probe.close()
        raise StepError(f"version {version} not AVAILABLE on {self.server} after {deadline_s:.0f}s (state {state})")

    def predict(self, version: int, photos: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Outputs of one version for photos (sent one at a time: no batch limit to respect)."""
        from serving.client import PredictionClient

        rows: list[dict[str, np.ndarray]] = []
        with PredictionClient(
            self.server,
            self.model_name,
            version=version,
            timeout_s=self.timeout_s,
            max_message_bytes=self.max_message_bytes,
        ) as client:
            for photo in photos:
                try:
                    rows.append(client.predict_raw([photo]).outputs)
                except grpc.RpcError as err:
                    raise StepError(
                        f"smoke prediction on version {version} failed: {err.code().name}: {err.details()}"
                    ) from err
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}


# -- smoke check ----------------------------------------------------------------------------------


def load_expected(predictions_path: str | Path, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` records of the evaluation's predictions.jsonl that name a photo.

    Each usable record has the photo (`image_uri` or `image_path`) and the predicted labels,
    as `pred_category`/`pred_subcategory` or `predicted: {category, subcategory}`.
    """
    records = []
    for line in storage.read_bytes(str(predictions_path)).decode().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        predicted = record.get("predicted") if isinstance(record.get("predicted"), dict) else {}
        uri = record.get("image_uri") or record.get("image_path")
        category = record.get("pred_category", predicted.get("category"))
        subcategory = record.get("pred_subcategory", predicted.get("subcategory"))
        if uri and category is not None and subcategory is not None:
            records.append({"id": record.get("id"), "uri": uri, "category": category, "subcategory": subcategory})
        if len(records) >= limit:
            break
    if not records:
        raise StepError(
            f"{predictions_path} has no record with a photo and its predicted category and sub-category "
            "(keys image_uri, pred_category, pred_subcategory)"
        )
    return records


def _same(served: tuple[str, int], expected: str | int) -> bool:
    name, index = served
    return int(index) == expected if isinstance(expected, int) else name == str(expected)


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def smoke_check(
    endpoint: Endpoint,
    version: int,
    saved_model_dir: Path,
    photos: Sequence[bytes],
    expected: Sequence[dict[str, Any]] = (),
    min_agreement: float = 0.9,
) -> dict[str, Any]:
    """Served answers must equal the SavedModel's in-process answers and agree with the evaluation.

    Returns:
        Figures of the check (photos, agreement, largest score difference).

    Raises:
        StepError: the endpoint answers differently, or agrees with the evaluation on fewer than
            `min_agreement` of the photos.
    """
    import tensorflow as tf

    from serving import contract as sig

    if not photos:
        raise StepError("no smoke photos: give known photos or the evaluation's predictions.jsonl")
    served = endpoint.predict(version, photos)
    local = tf.saved_model.load(str(saved_model_dir)).signatures[sig.SIGNATURE_NAME]
    direct = {k: v.numpy() for k, v in local(image_bytes=tf.constant(list(photos))).items()}
    if _strings(served[sig.CATEGORY]) != _strings(direct[sig.CATEGORY]) or _strings(
        served[sig.SUBCATEGORY]
    ) != _strings(direct[sig.SUBCATEGORY]):
        raise StepError(f"version {version} answers differently from the registered SavedModel run in-process")
    diff = float(np.abs(served[sig.CATEGORY_PROBABILITIES] - direct[sig.CATEGORY_PROBABILITIES]).max(initial=0.0))
    if diff > 1e-4:
        raise StepError(f"version {version} scores differ from the registered SavedModel by {diff:.2g}")
    result: dict[str, Any] = {"photos": len(photos), "max_score_difference": diff}
    if expected:
        # The evaluation may name classes or give their indices; compare like with like.
        cats = zip(_strings(served[sig.CATEGORY]), served[sig.CATEGORY_PROBABILITIES].argmax(-1), strict=True)
        subs = zip(_strings(served[sig.SUBCATEGORY]), served[sig.SUBCATEGORY_PROBABILITIES].argmax(-1), strict=True)
        agree = sum(
            _same(cat, e["category"]) and _same(sub, e["subcategory"])
            for cat, sub, e in zip(cats, subs, expected, strict=False)
        )
        agreement = agree / len(expected)
        result.update(evaluation_photos=len(expected), agreement=agreement)
        if agreement < min_agreement:
            raise StepError(
                f"version {version} agrees with the evaluation's predictions on {agree}/{len(expected)} photos "
                f"({agreement:.0%} < {min_agreement:.0%}): the served model is not the evaluated one"
            )
    return result


# -- deploy and rollback --------------------------------------------------------------------------


def _remove_version(uri: str) -> None:
    if storage.is_gcs(uri):
        bucket, prefix = storage.split_gcs(uri)
        client = storage.gcs_client()
        for blob in client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/"):
            blob.delete()
    else:
        shutil.rmtree(uri, ignore_errors=True)


def next_version(model_base_path: str, config: Any, model_name: str, known: Sequence[int] = ()) -> int:
    """One more than any version on disk, named in the config or known to the server.

    A server treats a version number as one immutable servable, so a number it has seen (even
    from a deploy that failed and was removed) is never published again.
    """
    from serving.server.manager import list_versions

    model = model_config(config, model_name)
    named = set(model.model_version_policy.specific.versions) | set(model.version_labels.values())
    return max([0, *list_versions(model_base_path), *named, *known]) + 1


def deploy_model(
    registry: ModelRegistry,
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
    endpoint = Endpoint(
        server, serving.model_name, model_config_uri, serving.request_timeout_s, serving.max_message_mb * 1024 * 1024
    )
    original = read_config(model_config_uri, serving.model_name, serving.model_base_path)
    model = model_config(original, serving.model_name)
    if model.base_path.rstrip("/") != serving.model_base_path.rstrip("/"):
        raise StepError(
            f"models.config serves {serving.model_name!r} from {model.base_path}, "
            f"but serving.model_base_path is {serving.model_base_path}: make them the same"
        )
    previous = model.version_labels.get(STABLE_LABEL)
    version = next_version(serving.model_base_path, original, serving.model_name, endpoint.known_versions())
    version_uri = storage.join(serving.model_base_path, str(version))

    expected = load_expected(predictions_path, max_smoke_photos) if predictions_path else []
    photos = [storage.read_bytes(e["uri"]) for e in expected] + [Path(p).read_bytes() for p in smoke_photos]

    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        saved_model = registry.download_export(registry_version, Path(tmp) / "saved_model")
        from components.register.export import publish_version_dir

        publish_version_dir(saved_model, version_uri)
        log.info("published registry version %s as serving version %d at %s", registry_version, version, version_uri)
        loaded = [previous, version] if previous is not None else [version]
        try:
            endpoint.apply(with_versions(original, serving.model_name, loaded, previous))
            endpoint.wait_available(version, timeout_s)
            smoke = smoke_check(endpoint, version, saved_model, photos, expected, min_agreement)
            endpoint.apply(with_versions(original, serving.model_name, loaded, version))
        except (StepError, storage.StorageError, grpc.RpcError) as err:
            _restore(endpoint, original, version_uri)
            raise StepError(
                f"deploy of registry version {registry_version} failed, version {previous} still serves: {err}"
            ) from err
    # The endpoint now serves the new version as `stable`; the registry follows.
    registry.client.set_model_version_tag(registry.model_name, registry_version, TAG_SERVING_VERSION, str(version))
    registry.promote(registry_version)
    log.info("serving version %d (registry %s) is stable and champion", version, registry_version)
    return DeployResult(registry_version, version, previous, smoke)


def _restore(endpoint: Endpoint, original: Any, version_uri: str) -> None:
    try:
        endpoint.apply(original)
    except StepError as err:
        log.error("could not restore the previous config: %s", err)
    _remove_version(version_uri)


def rollback_model(
    registry: ModelRegistry, config: Config, server: str, model_config_uri: str, timeout_s: float = 300.0
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
    previous = registry.version_info(current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise StepError(f"champion version {current} replaced no earlier version: nothing to roll back to")
    target = registry.version_info(previous).tags.get(TAG_SERVING_VERSION)
    if not target:
        raise StepError(
            f"registry version {previous} has no {TAG_SERVING_VERSION!r} tag: it was not deployed by `fashion deploy`"
        )
    target = int(target)
    endpoint = Endpoint(
        server, serving.model_name, model_config_uri, serving.request_timeout_s, serving.max_message_mb * 1024 * 1024
    )
    original = read_config(model_config_uri, serving.model_name, serving.model_base_path)
    model = model_config(original, serving.model_name)
    stable = model.version_labels.get(STABLE_LABEL)
    loaded = sorted({*model.model_version_policy.specific.versions, target})
    try:
        endpoint.apply(with_versions(original, serving.model_name, loaded, stable))
        endpoint.wait_available(target, timeout_s)
        endpoint.apply(with_versions(original, serving.model_name, loaded, target))
    except StepError as err:
        try:
            endpoint.apply(original)
        except StepError as restore_err:
            log.error("could not restore the previous config: %s", restore_err)
        raise StepError(f"rollback to serving version {target} failed, version {stable} still serves: {err}") from err
    registry.rollback()
    log.info("rolled back: serving version %d (registry %s) is stable and champion", target, previous)
    return DeployResult(str(previous), target, stable)
