"""The model registry: versions of the served model, moved between roles by aliases and tags only.

- `challenger`: the newest blessed version, set by `register`; the deploy step publishes it.
- `champion`: the version serving production, moved by `promote` once the endpoint is verified.
- A promoted version carries the tag `previous_champion` (the version it replaced), so `rollback`
  can move `champion` back, step by step. No registry stages are used.

Every version is a pyfunc model whose `data/saved_model` folder is the TF Serving SavedModel;
`download_export` fetches exactly that folder for the deploy step. A version is linked to the
run's logged model the way the MLflow 3 UI reads the link: the model's `mlflow.modelVersions` tag
lists its versions (the model shows as registered), and on a tracking server the version's source
is `models:/<model_id>` (the version's page links its source model); its `model_id` tag names the
model on every store.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from components.register import model_package
from components.register.backend import (
    backend_errors,
    is_already_exists,
    is_not_found,
    is_server,
    make_client,
    resolve_backend,
)
from components.register.coordination import retry_store_race
from components.register.tracking import TAG_PIPELINE_RUN, TEST_PREFIX, check_pipeline_run_id, logged_model_of
from core.config import Config
from core.errors import StepError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREVIOUS_CHAMPION = "previous_champion"
TAG_PROMOTED_AT = "promoted_at"
TAG_ROLLED_BACK = "rolled_back"
TAG_MODEL_ID = "model_id"
# The logged model's list of its registered versions, which the MLflow 3 UI reads (mlflow.utils.mlflow_tags).
TAG_MODEL_VERSIONS = "mlflow.modelVersions"


class Registry:
    """One registered model in an MLflow registry (embedded SQLite or a tracking server).

    Args:
        tracking_uri: the MLflow store, e.g. `sqlite:////abs/mlflow.db` or `http://127.0.0.1:5000`.
        model_name: the registered model's name.

    Raises:
        StepError: the store cannot be reached (the message names the URI).
    """

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client = make_client(tracking_uri)

    @classmethod
    def from_config(cls, config: Config, workdir: str | Path | None = None) -> Registry:
        """The registry of `config.registry` (the embedded store of `workdir` when its URI is empty)."""
        return cls(resolve_backend(config.registry, workdir).tracking_uri, config.registry.model_name)

    @property
    def client(self) -> Any:
        """The underlying MlflowClient, bound to this registry's URI."""
        return self._client

    def _errors(self, action: str):
        return backend_errors(self.tracking_uri, action)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(
                self.model_name, description="Fashion product category, sub-category and attributes (TF Serving)."
            )
        except MlflowException as err:
            if not is_already_exists(err):  # created by us earlier, or by a concurrent registration
                raise

    def find_version(self, pipeline_run_id: str) -> str | None:
        """The version registered for a pipeline run, if any."""
        check_pipeline_run_id(pipeline_run_id)
        with self._errors(f"search versions of {self.model_name!r}"):
            versions = self._client.search_model_versions(
                f"name = '{self.model_name}' and tags.{TAG_PIPELINE_RUN} = '{pipeline_run_id}'"
            )
        ready = sorted((v for v in versions if v.status == "READY"), key=lambda v: int(v.version))
        return str(ready[0].version) if ready else None

    def register(self, run_id: str, **kwargs: Any) -> str:
        """Make the run's SavedModel a new version with the alias `challenger` (see `find_or_register`).

        Returns:
            The version number, as a string.
        """
        return self.find_or_register(run_id, **kwargs)[0]

    def find_or_register(
        self,
        run_id: str,
        *,
        pipeline_run_id: str,
        model_id: str | None = None,
        export_dir: str | Path | None = None,
        photos: tuple[bytes | str | Path, ...] = (),
        description: str | None = None,
    ) -> tuple[str, bool]:
        """The version of a pipeline run, made from the run's SavedModel (alias `challenger`) if it has none.

        Registering the same pipeline run again, one after the other or at once, returns the version
        made first: a caller that finds an earlier version of its pipeline run beside the one it just
        made deletes its own (version numbers grow in creation order, so every caller agrees on which
        is first). Registrations of different pipeline runs at once get distinct versions.

        Args:
            run_id: the MLflow run of the training (from `track_training_run`).
            pipeline_run_id: the pipeline run; the version is tagged with it.
            model_id: the run's logged SavedModel; default: the last one the run logged, else one
                logged now from `export_dir`.
            export_dir: the SavedModel to log when the run has none.
            photos: encoded photos for the input example when the model is logged now.
            description: the version's description.

        Returns:
            (version, created): the version number as a string, and False when it was made before.

        Raises:
            StepError: the run has no model and no `export_dir` was given, or the backend fails;
                a version whose alias could not be set is deleted again.
        """
        existing = self.find_version(pipeline_run_id)
        if existing is not None:
            log.info("pipeline run %s is already version %s of %s", pipeline_run_id, existing, self.model_name)
            return existing, False
        with self._errors(f"register run {run_id} as a version of {self.model_name!r}"):
            run = self._client.get_run(run_id)
            model_id = model_id or logged_model_of(self._client, run)
            if model_id is None:
                if export_dir is None:
                    raise StepError(
                        f"MLflow run {run_id} logged no SavedModel and no export folder was given: "
                        "track the run with its export, or pass export_dir"
                    )
                model_id = model_package.log_serving_model(
                    self._client,
                    run.info.experiment_id,
                    run_id,
                    export_dir,
                    photos,
                    tags={TAG_PIPELINE_RUN: pipeline_run_id},
                ).model_id
            logged = self._client.get_logged_model(model_id)
            self._ensure_registered_model()
            # A server resolves `models:/<id>` in its own store and links the model to the version
            # itself. An embedded SQL registry would resolve it through MLflow's process-wide default
            # URI, not this one: there the source is the model's own location, and the link is made below.
            version = self._client.create_model_version(
                self.model_name,
                source=f"models:/{model_id}" if is_server(self.tracking_uri) else logged.artifact_location,
                run_id=run_id,
                tags={TAG_PIPELINE_RUN: pipeline_run_id, TAG_MODEL_ID: model_id},
                description=description,
                model_id=model_id,
            )
            first = self.find_version(pipeline_run_id) or str(version.version)
            if first != str(version.version):
                log.info(
                    "pipeline run %s became version %s of %s a moment ago; deleting the duplicate version %s",
                    pipeline_run_id,
                    first,
                    self.model_name,
                    version.version,
                )
                self._delete_version_quietly(version.version, model_id)
                return first, False
            try:
                self._link_model(model_id, version.version)
                retry_store_race(
                    lambda: self._client.set_registered_model_alias(self.model_name, CHALLENGER, version.version),
                    f"point {CHALLENGER} at version {version.version} of {self.model_name!r}",
                    first_delay_s=0.05,
                )
            except BaseException:
                self._delete_version_quietly(version.version, model_id)
                raise
        log.info("registered %s version %s (%s)", self.model_name, version.version, CHALLENGER)
        return str(version.version), True

    def _model_versions_of(self, model_id: str) -> list[dict[str, Any]]:
        listed = self._client.get_logged_model(model_id).tags.get(TAG_MODEL_VERSIONS)
        try:
            entries = json.loads(listed) if listed else []
        except ValueError:
            entries = []
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def _link_model(self, model_id: str, version: str | int) -> None:
        """List `version` in the logged model's `mlflow.modelVersions` (a server has done so already)."""
        entries = self._model_versions_of(model_id)
        # The shape MLflow writes (the version as a number), so its own de-duplication recognises it.
        entry = {"name": self.model_name, "version": int(version)}
        if entry not in entries:
            self._client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: json.dumps([*entries, entry])})

    def _unlink_model(self, model_id: str, version: str | int) -> None:
        entries = self._model_versions_of(model_id)
        kept = [e for e in entries if (e.get("name"), str(e.get("version"))) != (self.model_name, str(version))]
        if kept != entries:
            self._client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: json.dumps(kept)})

    def _delete_version_quietly(self, version: str, model_id: str | None = None) -> None:
        try:
            self._client.delete_model_version(self.model_name, str(version))
            if model_id is not None:
                self._unlink_model(model_id, version)
        except Exception as err:  # cleanup after a failure must not hide the original error
            log.warning("could not delete the half-registered version %s: %s", version, err)

    def get_version(self, alias: str) -> str | None:
        """The version an alias points at, None when the alias (or the registered model) does not exist."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"read alias {alias!r} of {self.model_name!r}"):
            try:
                return str(self._client.get_model_version_by_alias(self.model_name, alias).version)
            except MlflowException as err:
                if is_not_found(err) or getattr(err, "error_code", "") == "INVALID_PARAMETER_VALUE":
                    return None
                raise

    def _resolve(self, alias_or_version: str | int) -> str:
        ref = str(alias_or_version)
        if ref.isdigit():
            return ref
        version = self.get_version(ref)
        if version is None:
            raise StepError(f"{self.model_name!r} has no version with the alias {ref!r} in {self.tracking_uri}")
        return version

    def download_export(self, alias_or_version: str | int, dst_dir: str | Path) -> Path:
        """Download a version's TF Serving SavedModel folder to `dst_dir` (created; must not hold one yet).

        Returns:
            The SavedModel folder (it holds `saved_model.pb`).
        """
        import mlflow.artifacts

        version = self._resolve(alias_or_version)
        dst = Path(dst_dir)
        if (dst / "saved_model.pb").exists():
            raise StepError(f"{dst} already holds a SavedModel; download to an empty folder")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"download version {version} of {self.model_name!r}"):
            source = self._client.get_model_version_download_uri(self.model_name, version)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=dst.parent) as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{source.rstrip('/')}/{model_package.SAVED_MODEL_ARTIFACT_PATH}",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
                if not (Path(local) / "saved_model.pb").is_file():
                    raise StepError(
                        f"version {version} of {self.model_name!r} holds no SavedModel at "
                        f"{model_package.SAVED_MODEL_ARTIFACT_PATH}: it was not registered by this project"
                    )
                if dst.exists():
                    dst.rmdir()  # an empty folder given by the caller (e.g. a kfp output path)
                shutil.move(local, dst)
        return dst

    def version_info(self, alias_or_version: str | int) -> Any:
        """The MLflow ModelVersion of a version or alias."""
        version = self._resolve(alias_or_version)
        with self._errors(f"read version {version} of {self.model_name!r}"):
            return self._client.get_model_version(self.model_name, version)

    def set_tag(self, alias_or_version: str | int, key: str, value: str) -> None:
        """Set a tag on a version (or the version an alias points at)."""
        version = self._resolve(alias_or_version)
        with self._errors(f"tag version {version} of {self.model_name!r} with {key}"):
            self._client.set_model_version_tag(self.model_name, version, key, value)

    def champion_metrics(self) -> dict[str, float] | None:
        """The champion's test metrics (the evaluation scalars of its run), None without a champion."""
        version = self.get_version(CHAMPION)
        if version is None:
            return None
        with self._errors(f"read the metrics of the champion (version {version})"):
            run_id = self._client.get_model_version(self.model_name, version).run_id
            metrics = self._client.get_run(run_id).data.metrics if run_id else {}
        return {k[len(TEST_PREFIX) :]: float(v) for k, v in metrics.items() if k.startswith(TEST_PREFIX)}

    def promote(self, version: str | int) -> str | None:
        """Point `champion` at `version`; it remembers the version it replaced for `rollback`.

        Returns:
            The previous champion (None on the first promotion, or when it already was champion).
        """
        version = self._resolve(version)
        previous = self.get_version(CHAMPION)
        if previous == version:
            return None
        with self._errors(f"promote version {version} of {self.model_name!r}"):
            info = self._client.get_model_version(self.model_name, version)  # fails clearly if missing
            if previous is not None:
                self._client.set_model_version_tag(self.model_name, version, TAG_PREVIOUS_CHAMPION, previous)
            elif TAG_PREVIOUS_CHAMPION in info.tags:
                # No champion to return to: a tag left from an earlier promotion would mislead rollback.
                self._client.delete_model_version_tag(self.model_name, version, TAG_PREVIOUS_CHAMPION)
            self._client.set_model_version_tag(
                self.model_name, version, TAG_PROMOTED_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
            self._client.set_registered_model_alias(self.model_name, CHAMPION, version)
        log.info("%s version %s is champion (was %s)", self.model_name, version, previous)
        return previous

    def rollback(self) -> str:
        """Move `champion` back to the version it replaced; the demoted version is tagged `rolled_back`.

        The `challenger` alias is removed from the demoted version, so a later deploy does not
        publish it again.

        Returns:
            The version that is champion now.

        Raises:
            StepError: there is no champion, or it replaced no earlier version.
        """
        current = self.get_version(CHAMPION)
        if current is None:
            raise StepError(f"{self.model_name!r} has no champion in {self.tracking_uri}: nothing to roll back")
        with self._errors(f"roll back the champion of {self.model_name!r}"):
            info = self._client.get_model_version(self.model_name, current)
            previous = info.tags.get(TAG_PREVIOUS_CHAMPION)
            if not previous:
                raise StepError(
                    f"champion version {current} of {self.model_name!r} replaced no earlier version: "
                    "there is nothing to roll back to"
                )
            self._client.get_model_version(self.model_name, previous)
            self._client.set_registered_model_alias(self.model_name, CHAMPION, previous)
            self._client.set_model_version_tag(self.model_name, current, TAG_ROLLED_BACK, "true")
            if self.get_version(CHALLENGER) == current:
                self._client.delete_registered_model_alias(self.model_name, CHALLENGER)
        log.info("rolled %s back from version %s to %s", self.model_name, current, previous)
        return previous
