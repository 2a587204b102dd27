"""gRPC front end: `tensorflow.serving.PredictionService` and `tensorflow.serving.ModelService`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.server import handlers
from serving.server.errors import ServingError, invalid_argument
from serving.server.manager import ModelManager
from serving.server.servable import CLASSIFY_METHOD, REGRESS_METHOD

log = logging.getLogger(__name__)


def _guard(method: Callable) -> Callable:
    """Answer a ServingError with its status code; anything unexpected is INTERNAL, never a crash."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServingError as err:
            context.abort(err.code, err.message)
        except Exception as err:  # noqa: BLE001 - the server keeps serving whatever one request does
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _timeout(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e8 else None


def tensor_inputs(request: Any) -> dict[str, Any]:
    """Request TensorProtos as numpy arrays; a malformed proto is INVALID_ARGUMENT."""
    inputs = {}
    for alias, proto in request.inputs.items():
        try:
            inputs[alias] = tensors.from_proto(proto)
        except (ValueError, TypeError, KeyError) as err:
            raise invalid_argument(f"input tensor {alias} is malformed: {err}") from err
    return inputs


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer as TF Serving does."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    @_guard
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Run the signature on the request's tensors."""
        spec = handlers.Spec.from_proto(request.model_spec)
        result = handlers.predict(
            self.manager, spec, tensor_inputs(request), list(request.output_filter), _timeout(context)
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for alias, array in result.outputs.items():
            tensors.fill_proto(response.outputs[alias], array)
        return response

    @_guard
    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """The signature definitions of the resolved version."""
        spec = handlers.Spec.from_proto(request.model_spec)
        version, sig_map = handlers.metadata(self.manager, spec, list(request.metadata_field))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(sig_map)
        return response

    @_guard
    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Answer as TF Serving does for a model without a classification signature."""
        handlers.check_method(self.manager, handlers.Spec.from_proto(request.model_spec), CLASSIFY_METHOD)

    @_guard
    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Answer as TF Serving does for a model without a regression signature."""
        handlers.check_method(self.manager, handlers.Spec.from_proto(request.model_spec), REGRESS_METHOD)

    @_guard
    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Classify/regress tasks only, so each task fails as those do."""
        if not request.tasks:
            raise invalid_argument("Inference request should contain at least one task")
        for task in request.tasks:
            method = task.method_name
            if method not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise invalid_argument(f"Unsupported signature method_name: {method}")
            handlers.check_method(self.manager, handlers.Spec.from_proto(task.model_spec), method)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ModelManager, on_reload: Callable[[Any], None] | None = None):
        self.manager = manager
        self.on_reload = on_reload

    @_guard
    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Version states of a model."""
        return handlers.status_response(self.manager, handlers.Spec.from_proto(request.model_spec))

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Replace the whole ModelServerConfig; errors keep the previous config."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.reload_config(request.config, _timeout(context))
            if self.on_reload is not None:
                self.on_reload(request.config)
        except ServingError as err:
            response.status.error_code = err.error_code
            response.status.error_message = err.message
            context.abort(err.code, err.message)
        return response
