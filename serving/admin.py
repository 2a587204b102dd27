"""Model management on a live endpoint (local server or TF Serving): push a config, read and wait on version states.

It wraps the ModelService calls a rollout needs (HandleReloadConfigRequest, GetModelStatus) and
turns their gRPC failures into StepErrors that name the server.
"""

from __future__ import annotations

import time
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

    def reload_config(self, config: Any) -> None:
        """Make the server apply a whole ModelServerConfig now.

        Raises:
            StepError: the server refused it (e.g. a label on a version that is not AVAILABLE);
                the server's previous config stays in effect.
        """
        try:
            self.client.reload_config(config)
        except grpc.RpcError as err:
            raise StepError(
                f"the server at {self.target} refused the new config: {err.code().name}: {err.details()}"
            ) from err

    def known_versions(self) -> list[int]:
        """Every version the server has seen of the model, loaded or not (version numbers are never reused)."""
        try:
            return [v for v, _ in self.client.status()]
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise StepError(f"GetModelStatus failed at {self.target}: {err.code().name}: {err.details()}") from err

    def wait_available(self, version: int, deadline_s: float) -> None:
        """Poll GetModelStatus until `version` is AVAILABLE.

        Raises:
            StepError: the version ended (its load failed; the server's reason is in the message),
                or it was not AVAILABLE within `deadline_s`.
        """
        probe = PredictionClient(self.target, self.model_name, version=version, timeout_s=self.timeout_s)
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
                    raise StepError(f"version {version} failed to load on {self.target}: {reason}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            probe.close()
        raise StepError(f"version {version} not AVAILABLE on {self.target} after {deadline_s:.0f}s (state {state})")

    def close(self) -> None:
        """Close the channel."""
        self.client.close()

    def __enter__(self) -> ModelAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
