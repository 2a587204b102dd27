"""Model management on a live endpoint (local server or TF Serving): push a config, read and wait on version states.

It wraps the ModelService calls a rollout needs (HandleReloadConfigRequest, GetModelStatus) and
turns their gRPC failures into StepErrors that name the server. Status calls can name another
model than the admin's own, such as the `<name>-canary` entry a deploy verifies a candidate under.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc

from core.errors import StepError
from serving import contract as sig
from serving.client import PredictionClient

# How often GetModelStatus is asked while a version loads.
POLL_INTERVAL_S = 0.2


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

    def close(self) -> None:
        """Close the channel."""
        self.client.close()

    def __enter__(self) -> ModelAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
