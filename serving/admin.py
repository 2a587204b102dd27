"""Model management on a live endpoint (local server or TF Serving): push a config, read and wait on version states.

It wraps the ModelService calls a rollout needs (HandleReloadConfigRequest, GetModelStatus) and
turns their gRPC failures into StepErrors that name the server. Status calls can name another
model than the admin's own, such as the `<name>-canary` entry a deploy verifies a candidate under.
`Replicas` makes the same calls on every replica of an endpoint, found by `replica_targets`
(a list of addresses, or every address of a `dns:///` name such as a Kubernetes headless service).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from core.errors import StepError
from serving import contract as sig
from serving import protos
from serving.client import PredictionClient

# How often GetModelStatus is asked while a version loads.
POLL_INTERVAL_S = 0.2
# gRPC's name syntax for "every address this DNS name resolves to".
DNS_SCHEME = "dns:///"

T = TypeVar("T")


def replica_targets(endpoint: str) -> list[str]:
    """The gRPC `host:port` of every replica behind an endpoint, in a stable order.

    Args:
        endpoint: `host:port` (one server), a comma-separated list of them, or
            `dns:///<name>:<port>`: every address the name resolves to, which for a Kubernetes
            headless service (`clusterIP: None`) is one per ready pod.

    Raises:
        StepError: the endpoint names no replica, or a `dns:///` name does not resolve.
    """
    targets: list[str] = []
    for part in filter(None, (p.strip() for p in endpoint.split(","))):
        if not part.startswith(DNS_SCHEME):
            targets.append(part)
            continue
        host, _, port = part.removeprefix(DNS_SCHEME).rpartition(":")
        if not host or not port.isdigit():
            raise StepError(f"{part}: expected {DNS_SCHEME}<name>:<port>")
        try:
            found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise StepError(f"cannot resolve {host} ({part}): {err.strerror}") from err
        addresses = sorted({info[4][0] for info in found})
        targets += [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
    if not targets:
        raise StepError(f"no serving replica in {endpoint!r}: give host:port, a list of them, or {DNS_SCHEME}name:port")
    return list(dict.fromkeys(targets))


class ModelAdmin:
    """Management calls against one model of a serving endpoint.

    Args:
        target: `host:port` of the gRPC endpoint.
        model_name: the served model's name.
        timeout_s: deadline of every call.
        max_message_bytes: send and receive limit of the channel.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout_s: float = 30.0,
        max_message_bytes: int = sig.DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.client = PredictionClient(target, model_name, timeout_s=timeout_s, max_message_bytes=max_message_bytes)
        self._metadata = protos.unary(self.client.channel, protos.PREDICTION_SERVICE, "GetModelMetadata")

    def reload_config(self, config: Any, timeout_s: float | None = None) -> None:
        """Make the server apply a whole ModelServerConfig now.

        Args:
            config: the whole ModelServerConfig.
            timeout_s: deadline of the call (default the admin's). TF Serving answers a config that
                adds a model only once that model's versions have loaded, so such a push needs
                as long as a load may take.

        Raises:
            StepError: the server refused it (e.g. a label on a version that is not AVAILABLE);
                the server's previous config stays in effect.
        """
        client = self.client
        if timeout_s is not None:
            client = PredictionClient(self.target, self.model_name, timeout_s=timeout_s)
        try:
            client.reload_config(config)
        except grpc.RpcError as err:
            raise StepError(
                f"the server at {self.target} refused the new config: {err.code().name}: {err.details()}"
            ) from err
        finally:
            if client is not self.client:
                client.close()

    def states(self, model_name: str | None = None) -> dict[int, str]:
        """State name of every version the server has seen of a model (default the admin's); empty if none.

        Raises:
            StepError: GetModelStatus failed for another reason than an unknown model.
        """
        name = model_name or self.model_name
        client = (
            self.client if name == self.model_name else PredictionClient(self.target, name, timeout_s=self.timeout_s)
        )
        try:
            return dict(client.status())
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise StepError(f"GetModelStatus failed at {self.target}: {err.code().name}: {err.details()}") from err
        finally:
            if client is not self.client:
                client.close()

    def known_versions(self, model_name: str | None = None) -> list[int]:
        """Every version the server has seen of a model, loaded or not (version numbers are never reused)."""
        return sorted(self.states(model_name), reverse=True)

    def wait_available(self, version: int, deadline_s: float, model_name: str | None = None) -> None:
        """Poll GetModelStatus until `version` of a model (default the admin's) is AVAILABLE.

        Raises:
            StepError: the version ended (its load failed; the server's reason is in the message),
                or it was not AVAILABLE within `deadline_s`.
        """
        name = model_name or self.model_name
        probe = PredictionClient(self.target, name, version=version, timeout_s=self.timeout_s)
        deadline = time.monotonic() + deadline_s
        state = "UNKNOWN"
        try:
            while time.monotonic() < deadline:
                try:
                    states = dict(probe.status())
                    state = states.get(version, "UNKNOWN")
                except grpc.RpcError as err:
                    # NOT_FOUND: the server has not seen the version yet (its poll has not run).
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise StepError(f"GetModelStatus failed at {self.target}: {err.details()}") from err
                    state = "UNKNOWN"
                if state == "AVAILABLE":
                    return
                if state == "END":
                    reason = probe.version_errors().get(version, "unloaded")
                    raise StepError(f"version {version} failed to load as {name} on {self.target}: {reason}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            probe.close()
        raise StepError(
            f"version {version} not AVAILABLE as {name} on {self.target} after {deadline_s:.0f}s (state {state})"
        )

    def wait_unloaded(self, versions: Iterable[int], deadline_s: float) -> None:
        """Poll GetModelStatus until none of `versions` of the admin's model is loaded any more.

        TF Serving unloads in the background after a reload, and a request that names no version
        goes to the highest loaded one until then.

        Raises:
            StepError: one is still loaded after `deadline_s`.
        """
        pending = set(versions)
        deadline = time.monotonic() + deadline_s
        while pending:
            states = self.states()
            pending = {v for v in pending if states.get(v, "END") != "END"}
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise StepError(f"versions {sorted(pending)} still loaded on {self.target} after {deadline_s:.0f}s")
            time.sleep(POLL_INTERVAL_S)

    def resolved_version(self, label: str | None = None) -> int:
        """The version that answers the admin's model when a request names `label` (None: no version or label).

        Raises:
            grpc.RpcError: the server resolves no version (NOT_FOUND) or cannot be reached.
        """
        api = protos.api()
        spec = api.ModelSpec(name=self.model_name)
        if label:
            spec.version_label = label
        request = api.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        return int(self._metadata(request, timeout=self.timeout_s).model_spec.version.value)

    def wait_resolved(self, version: int, deadline_s: float, label: str | None = None) -> None:
        """Poll GetModelMetadata until requests that name `label` (None: nothing) are answered by `version`.

        Raises:
            StepError: another version (or none) answers them after `deadline_s`.
        """
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                answered: int | str = self.resolved_version(label)
            except grpc.RpcError as err:
                answered = err.code().name
            if answered == version:
                return
            if time.monotonic() >= deadline:
                asked = f"label {label!r}" if label else "no version or label"
                raise StepError(
                    f"requests naming {asked} get {answered} instead of version {version} on {self.target} "
                    f"after {deadline_s:.0f}s"
                )
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        """Close the channel."""
        self.client.close()

    def __enter__(self) -> ModelAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Replicas:
    """ModelAdmin's calls on every replica of an endpoint at once; a call returns when all have answered.

    A call that returns without error was done by every replica; otherwise the first failure (in
    replica order) is raised, once the others have finished theirs.

    Args:
        endpoint: the replicas, as `replica_targets` reads them.
        model_name: the served model's name.
        timeout_s: deadline of every call.
        max_message_bytes: send and receive limit of the channels.
    """

    def __init__(
        self,
        endpoint: str,
        model_name: str,
        timeout_s: float = 30.0,
        max_message_bytes: int = sig.DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.targets = replica_targets(endpoint)
        self.admins = [ModelAdmin(t, model_name, timeout_s, max_message_bytes) for t in self.targets]

    def _each(self, call: Callable[[ModelAdmin], T]) -> list[T]:
        with ThreadPoolExecutor(max_workers=len(self.admins), thread_name_prefix="replica") as pool:
            futures = [pool.submit(call, admin) for admin in self.admins]
        return [future.result() for future in futures]

    def reload_config(self, config: Any, timeout_s: float | None = None) -> None:
        """Make every replica apply `config` now (see `ModelAdmin.reload_config`)."""
        self._each(lambda admin: admin.reload_config(config, timeout_s))

    def available(self) -> set[int]:
        """The versions of the model that are AVAILABLE on every replica."""
        states = self._each(lambda admin: admin.states())
        return set.intersection(*({v for v, state in s.items() if state == "AVAILABLE"} for s in states))

    def known_versions(self, model_name: str | None = None) -> list[int]:
        """Every version of a model that some replica has seen, newest first."""
        return sorted(set().union(*self._each(lambda admin: admin.known_versions(model_name))), reverse=True)

    def wait_available(self, version: int, deadline_s: float, model_name: str | None = None) -> None:
        """Wait until `version` is AVAILABLE on every replica (see `ModelAdmin.wait_available`)."""
        self._each(lambda admin: admin.wait_available(version, deadline_s, model_name))

    def wait_unloaded(self, versions: Iterable[int], deadline_s: float) -> None:
        """Wait until no replica has any of `versions` loaded."""
        versions = set(versions)
        self._each(lambda admin: admin.wait_unloaded(versions, deadline_s))

    def wait_resolved(self, version: int, deadline_s: float, label: str | None = None) -> None:
        """Wait until every replica answers requests that name `label` (None: nothing) with `version`."""
        self._each(lambda admin: admin.wait_resolved(version, deadline_s, label))

    def close(self) -> None:
        """Close every channel."""
        for admin in self.admins:
            admin.close()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
