"""Which versions are loaded: base-path polling, version policies, labels, availability-preserving swaps.

Follows TF Serving's model manager: every model's base path is polled for numeric version
folders; its version policy (`latest`, `all`, `specific`) names the aspired versions; new ones are
loaded and warmed up in the background, and versions that are no longer aspired are unloaded
only once an aspired version is AVAILABLE, after their in-flight requests have finished. So a
swap never leaves a moment without a model and never cuts a request short.

A load that fails is retried `max_num_load_retries` times, `load_retry_interval_micros` apart; a
version that stops being aspired (its folder left the base path, or the policy no longer names
it) has its retries cancelled and its failure forgotten, so if it comes back it loads afresh.
A request that names no version gets the highest AVAILABLE version, as in TF Serving: which
versions a model may load is what decides where unlabelled traffic goes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from core import storage
from serving import store
from serving.model_config import ConfigFileError, validate_model_server_config
from serving.server.config import BatchingParameters
from serving.server.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.server.servable import Servable

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionEntry:
    """One version of one model and where it is in its lifecycle.

    `cancel` is set once the version is no longer aspired (or the server stops): a load that is
    still retrying gives up, and a load that succeeds is dropped. `forgotten` marks an ended
    version that left the aspired set: if it is aspired again, it is a new servable.
    """

    version: int
    state: str = START
    error: ServingError | None = None
    servable: Servable | None = None
    refs: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    forgotten: bool = False


@dataclass
class ModelEntry:
    """A configured model: its config proto, versions and labels."""

    config: Any
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ManagerOptions:
    """Loading behaviour (TF Serving's flags of the same names)."""

    batching: BatchingParameters | None = None
    enable_model_warmup: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    # Off by default, as in TF Serving: a signature serves any API its tensors fit, whatever its method_name.
    enable_signature_method_name_check: bool = False
    saved_model_tags: tuple[str, ...] = ("serve",)


def aspired_versions(policy: Any, on_disk: list[int]) -> list[int]:
    """The versions a `ServableVersionPolicy` asks for, among those on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(on_disk)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in on_disk if v in wanted]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return on_disk[-count:] if on_disk else []


def _spec_repr(name: str, version: int | None) -> str:
    return f"Specific({name}, {version})" if version is not None else f"Latest({name})"


class ModelManager:
    """Loads, serves and unloads model versions for the gRPC and REST front ends."""

    def __init__(self, config: Any, options: ManagerOptions):
        validate_model_server_config(config)
        self.options = options
        self._lock = threading.Condition()
        self._sync_lock = threading.Lock()
        self._models: dict[str, ModelEntry] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._loaders: list[threading.Thread] = []
        self._config = config
        self._empty: set[str] = set()
        for model in config.model_config_list.config:
            self._models[model.name] = ModelEntry(config=model)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> None:
        """Load the initial versions, apply the labels, then poll the base paths in the background.

        Like TF Serving, the initial load is waited for before the ports open.
        """
        self.sync()
        self.wait_until_settled(wait_s)
        labels = {m.name: dict(m.version_labels) for m in self._config.model_config_list.config}
        with self._lock:
            self._check_labels(labels)
            for name, model_labels in labels.items():
                self._models[name].labels = model_labels
        self._poller = threading.Thread(target=self._poll_loop, name="base-path-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and unload every version (after its in-flight requests)."""
        self._stop.set()
        self._wake.set()
        if self._poller:
            self._poller.join(timeout=30)
        with self._lock:
            entries = [(n, e) for n, m in self._models.items() for e in m.versions.values()]
        for _, entry in entries:
            entry.cancel.set()
        for t in list(self._loaders):
            t.join(timeout=30)
        for name, entry in entries:
            self._unload(name, entry)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.options.file_system_poll_wait_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a storage hiccup must not stop polling
                log.exception("polling the model base paths failed")

    def wait_until_settled(self, timeout_s: float | None = None, names: set[str] | None = None) -> bool:
        """Block until no version (of `names`, default all models) is still START or LOADING."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while True:
                busy = [
                    e
                    for n, m in self._models.items()
                    if names is None or n in names
                    for e in m.versions.values()
                    if e.state in (START, LOADING)
                ]
                if not busy:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining if remaining is not None else 1.0)

    # -- version loading ------------------------------------------------------------------------

    def sync(self) -> None:
        """One pass: list versions on disk, load what is aspired, unload what is no longer aspired."""
        with self._sync_lock:
            with self._lock:
                models = {n: m.config for n, m in self._models.items()}
            for name, model_config in models.items():
                try:
                    folders = store.version_dirs(model_config.base_path)
                except storage.StorageError as err:
                    log.warning("cannot list %s for model %s: %s", model_config.base_path, name, err)
                    continue
                on_disk = sorted(folders)
                if not on_disk and name not in self._empty:
                    log.warning("No versions of servable %s found under base path %s", name, model_config.base_path)
                # Warn once per stretch without versions, not on every poll.
                self._empty = (self._empty | {name}) if not on_disk else (self._empty - {name})
                aspired = set(aspired_versions(model_config.model_version_policy, on_disk))
                self._reconcile(name, model_config, {v: folders[v] for v in aspired})

    def _reconcile(self, name: str, model_config: Any, aspired: dict[int, str]) -> None:
        """Load the aspired versions (number -> folder name) not loaded yet, unload the others once one is up."""
        to_load, to_unload = [], []
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return
            for version, entry in model.versions.items():
                if version not in aspired:
                    self._unaspire(entry)
            for version in sorted(aspired):
                entry = model.versions.get(version)
                # A version that failed stays failed while it is aspired (TF Serving does not
                # retry beyond its retries); once it left and came back, it is loaded afresh.
                if entry is None or (entry.state == END and (entry.error is None or entry.forgotten)):
                    entry = VersionEntry(version=version)
                    model.versions[version] = entry
                    to_load.append(entry)
            states = [model.versions[v].state for v in aspired if v in model.versions]
            settled = all(s in (AVAILABLE, END) for s in states)
            if AVAILABLE in states and settled:
                to_unload = [e for v, e in model.versions.items() if v not in aspired and e.state == AVAILABLE]
        for entry in to_load:
            # The folder's own name: `00000123` is version 123 and is opened as it is spelt.
            uri = storage.join(model_config.base_path, aspired[entry.version])
            t = threading.Thread(
                target=self._load, args=(name, entry, uri), name=f"load-{name}-{entry.version}", daemon=True
            )
            self._loaders = [x for x in self._loaders if x.is_alive()] + [t]
            t.start()
        for entry in to_unload:
            self._unload(name, entry)

    @staticmethod
    def _unaspire(entry: VersionEntry) -> None:
        """A version left the aspired set: stop its load retries, forget how it ended (called under the lock)."""
        if entry.state in (START, LOADING):
            entry.cancel.set()
        if entry.state in (START, LOADING, END):
            entry.forgotten = True

    def _load(self, name: str, entry: VersionEntry, uri: str) -> None:
        with self._lock:
            entry.state = LOADING
            self._lock.notify_all()
        attempts = self.options.max_num_load_retries + 1
        error: ServingError | None = None
        servable = None
        for attempt in range(attempts):
            if entry.cancel.is_set():
                break
            try:
                servable = Servable(name, entry.version, uri, self.options.batching, self.options.saved_model_tags)
                if self.options.enable_model_warmup:
                    count = servable.warmup()
                    log.info("warmed up %s version %d with %d requests", name, entry.version, count)
                error = None
                break
            except Exception as err:  # noqa: BLE001 - any load failure is reported in the model status
                error = (
                    err if isinstance(err, ServingError) else ServingError(_code(err), f"{type(err).__name__}: {err}")
                )
                log.error("Loading servable: {name: %s version: %d} failed: %s", name, entry.version, error.message)
                if servable is not None:
                    servable.close()
                    servable = None
                if attempt + 1 < attempts:
                    entry.cancel.wait(self.options.load_retry_interval_micros / 1e6)
        dropped = None
        with self._lock:
            if entry.cancel.is_set():
                # No longer aspired while it loaded (or the server stops): nobody may be routed to it.
                dropped, servable = servable, None
                entry.state, entry.error = END, error
            elif error is None and servable is not None:
                entry.servable, entry.state = servable, AVAILABLE
                log.info("Successfully loaded servable version {name: %s version: %d}", name, entry.version)
            else:
                entry.state, entry.error = END, error or ServingError(_code(None), "load cancelled")
            self._lock.notify_all()
        if dropped is not None:
            dropped.close()
        self._wake.set()

    def _unload(self, name: str, entry: VersionEntry) -> None:
        with self._lock:
            if entry.state != AVAILABLE:
                return
            entry.state = UNLOADING
            log.info("Quiescing servable version {name: %s version: %d}", name, entry.version)
            while entry.refs:
                self._lock.wait()
            servable, entry.servable = entry.servable, None
        if servable is not None:
            servable.close()
        with self._lock:
            entry.state = END
            self._lock.notify_all()
        log.info("Done unloading servable version {name: %s version: %d}", name, entry.version)

    # -- requests -------------------------------------------------------------------------------

    def resolve_version(self, name: str, version: int | None, label: str | None) -> int:
        """The version a model spec names, following TF Serving's rules; raises ServingError."""
        with self._lock:
            return self._resolve(name, version, label).version

    def _resolve(self, name: str, version: int | None, label: str | None) -> VersionEntry:
        model = self._models.get(name)
        if label:
            if model is None or label not in model.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if model is None:
            raise not_found(f"Servable not found for request: {_spec_repr(name, version)}")
        if version is None:
            available = [v for v, e in model.versions.items() if e.state == AVAILABLE]
            if not available:
                raise not_found(f"Servable not found for request: {_spec_repr(name, None)}")
            version = max(available)
        entry = model.versions.get(version)
        if entry is None or entry.state != AVAILABLE:
            raise not_found(f"Servable not found for request: {_spec_repr(name, version)}")
        return entry

    @contextlib.contextmanager
    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[Servable]:
        """Hold one AVAILABLE version for the duration of a request (it cannot unload meanwhile)."""
        with self._lock:
            entry = self._resolve(name, version, label)
            entry.refs += 1
            servable = entry.servable
        try:
            yield servable
        finally:
            with self._lock:
                entry.refs -= 1
                if not entry.refs:
                    self._lock.notify_all()

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionEntry]:
        """Version states of a model (newest first), as GetModelStatus reports them."""
        with self._lock:
            model = self._models.get(name)
            if label:
                if model is None or label not in model.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if model is None or not model.versions:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                entry = model.versions.get(version)
                if entry is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [_copy(entry)]
            return [_copy(e) for _, e in sorted(model.versions.items(), reverse=True)]

    def model_names(self) -> list[str]:
        """Configured model names."""
        with self._lock:
            return sorted(self._models)

    # -- configuration --------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The ModelServerConfig in effect."""
        return self._config

    def reload_config(self, config: Any, timeout_s: float | None = None) -> None:
        """Apply a new ModelServerConfig as HandleReloadConfigRequest does.

        Models not in the new config are unloaded; new models are loaded and waited for; policy
        changes take effect in the background (poll status for the new versions). Labels may only
        point at AVAILABLE versions unless --allow_version_labels_for_unavailable_models.

        Raises:
            ServingError: the config is invalid or a label points at an unavailable version; the
                previous config stays in effect.
        """
        try:
            validate_model_server_config(config, "reload request")
        except ConfigFileError as err:
            raise invalid_argument(str(err)) from err
        new = {m.name: m for m in config.model_config_list.config}
        labels = {n: dict(m.version_labels) for n, m in new.items()}
        with self._lock:
            for name, m in new.items():
                old = self._models.get(name)
                if old is not None and old.config.base_path != m.base_path:
                    raise invalid_argument(f"Cannot change the base path of model {name} while it is served")
            self._check_labels(labels)
            removed = [(n, m) for n, m in self._models.items() if n not in new]
            added = set(new) - set(self._models)
            for name, m in new.items():
                entry = self._models.setdefault(name, ModelEntry(config=m))
                entry.config = m
                entry.labels = labels[name]
                for v in entry.versions.values():
                    if v.state == END:
                        v.error = None
            for name, model in removed:
                del self._models[name]
                for entry in model.versions.values():
                    entry.cancel.set()
            self._config = config
        for name, model in removed:
            for entry in list(model.versions.values()):
                self._unload(name, entry)
        self.sync()
        if added:
            self.wait_until_settled(timeout_s, names=added)

    def _check_labels(self, labels: dict[str, dict[str, int]]) -> None:
        if self.options.allow_version_labels_for_unavailable_models:
            return
        for name, model_labels in labels.items():
            model = self._models.get(name)
            for label, version in sorted(model_labels.items()):
                entry = model.versions.get(version) if model else None
                if entry is None or entry.state != AVAILABLE:
                    raise failed_precondition(
                        f"Request to assign label {label!r} to version {version} of model {name}, "
                        "which is not currently available for inference"
                    )


def _copy(entry: VersionEntry) -> VersionEntry:
    return VersionEntry(version=entry.version, state=entry.state, error=entry.error)


def _code(err: Exception | None) -> Any:
    import grpc

    if isinstance(err, FileNotFoundError | storage.StorageError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.UNKNOWN
