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
            # TF Serving's words when `Tensor::FromProto` refuses a request tensor.
            raise invalid_argument(f"tensor parsing error: {alias}") from err
    return inputs


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, GetModelMetadata, and Classify, Regress and MultiInference on `tf.Example` inputs."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    @_guard
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Run the signature on the request's tensors."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
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
        """Classify the request's `tf.Example`s with a classification signature."""
        return handlers.classify(self.manager, request, _timeout(context))

    @_guard
    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Regress the request's `tf.Example`s with a regression signature."""
        return handlers.regress(self.manager, request, _timeout(context))

    @_guard
    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Classify and regress the same `tf.Example`s with several signatures of one model, in one run."""
        return handlers.multi_inference(self.manager, request, _timeout(context))


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
