"""Classify, Regress and MultiInference on `tf.Example` inputs, as TF Serving runs them on a servable.

The request's examples become one string tensor of serialized `tf.Example`s (with the context's
bytes in front of each, for `example_list_with_context`: proto concatenation is a merge), fed to
the signature's `inputs` tensor; the `classes`/`scores` or `outputs` tensors fetched are checked and
turned into results with the checks and words of TF Serving's classifier.cc, regressor.cc and
multi_inference.cc. The signature's method name is checked only when asked
(`--enable_signature_method_name_check`); otherwise any signature with the right tensors serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format

from serving import contract as sig
from serving.server.errors import ServingError, invalid_argument
from serving.server.servable import CLASSIFY_METHOD, REGRESS_METHOD, Servable

CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def serialized_examples(input_proto: Any) -> np.ndarray:
    """A `tensorflow.serving.Input` as the 1-D string tensor of serialized examples TF Serving feeds.

    Raises:
        ServingError: INVALID_ARGUMENT when the input holds no example.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


def _debug_string(message: Any) -> str:
    return text_format.MessageToString(message)


def _shape_string(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in np.shape(array)) + "]"


def _dtype_enum_name(array: np.ndarray) -> str:
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    if array.dtype.kind in ("O", "S", "U"):
        return "DT_STRING"
    return types_pb2.DataType.Name(tf.dtypes.as_dtype(array.dtype).as_datatype_enum)


# -- signatures ---------------------------------------------------------------------------------


def classification_tensors(signature: Any, check_method: bool) -> tuple[str, list[str]]:
    """PreProcessClassification: the input tensor name and the `classes`/`scores` tensor names to fetch."""
    if check_method and signature.method_name != CLASSIFY_METHOD:
        raise invalid_argument(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    outputs = [
        signature.outputs[k].name for k in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES) if k in signature.outputs
    ]
    if not outputs:
        raise invalid_argument(
            "Expected classification signature outputs to contain at least one of "
            f'"{CLASSIFY_OUTPUT_CLASSES}" or "{CLASSIFY_OUTPUT_SCORES}". Signature was: {_debug_string(signature)}'
        )
    return signature.inputs[CLASSIFY_INPUTS].name, outputs


def regression_tensors(signature: Any, check_method: bool) -> tuple[str, list[str]]:
    """PreProcessRegression: the input tensor name and the `outputs` tensor name to fetch."""
    if check_method and signature.method_name != REGRESS_METHOD:
        raise invalid_argument(
            f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return signature.inputs[REGRESS_INPUTS].name, [signature.outputs[REGRESS_OUTPUTS].name]


def _signature(servable: Servable, signature_name: str) -> Any:
    name = signature_name or sig.SIGNATURE_NAME
    if name not in servable.signature_defs:
        raise invalid_argument(f"No signature was found with the name: {name}")
    return servable.signature_defs[name]


# -- results ------------------------------------------------------------------------------------


def classification_result(signature: Any, num_examples: int, fetched: dict[str, np.ndarray], result: Any) -> None:
    """PostProcessClassificationResult: check the fetched tensors and fill a ClassificationResult."""
    outputs = signature.outputs
    classes = fetched.get(outputs[CLASSIFY_OUTPUT_CLASSES].name) if CLASSIFY_OUTPUT_CLASSES in outputs else None
    scores = fetched.get(outputs[CLASSIFY_OUTPUT_SCORES].name) if CLASSIFY_OUTPUT_SCORES in outputs else None
    for tensor, what, want in ((classes, "classes", "DT_STRING"), (scores, "scores", "DT_FLOAT")):
        if tensor is None:
            continue
        if np.ndim(tensor) != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(tensor)}")
        got = _dtype_enum_name(tensor)
        if got != want:
            raise invalid_argument(f"Expected {what} Tensor of {want}. Got: {got}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {what} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    present = classes if classes is not None else scores
    num_classes = present.shape[1] if present is not None else 0
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[i, c]
                # `label` is a proto string: bytes that are not UTF-8 are replaced, not refused.
                entry.label = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[i, c])


def regression_result(signature: Any, num_examples: int, fetched: dict[str, np.ndarray], result: Any) -> None:
    """PostProcessRegressionResult: check the fetched tensor and fill a RegressionResult."""
    name = signature.outputs[REGRESS_OUTPUTS].name
    tensor = fetched.get(name)
    if tensor is None:
        raise invalid_argument(f"Could not find output tensor '{name}'")
    ndim = np.ndim(tensor)
    if not (ndim == 1 or (ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_string(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}"
        )
    got = _dtype_enum_name(tensor)
    if got != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    if tensor.size != num_examples:
        raise invalid_argument(f"Expected output batch size to be {num_examples}.  Got: {tensor.size}")
    for value in tensor.reshape(-1).tolist():
        result.regressions.add().value = value


def _model_spec(target: Any, request_spec: Any, version: int) -> None:
    """MakeModelSpec: the request's name, its signature name (empty: serving_default), the version that answered."""
    target.Clear()
    target.name = request_spec.name
    target.signature_name = request_spec.signature_name or sig.SIGNATURE_NAME
    target.version.value = version


# -- the operations -----------------------------------------------------------------------------


def _fetch(
    servable: Servable,
    input_names: Sequence[str],
    output_names: Sequence[str],
    examples: np.ndarray,
    deadline: float | None,
    batched: bool,
) -> dict[str, np.ndarray]:
    """One session run feeding `examples` to every input tensor; output tensor name -> value."""
    outputs = tuple(output_names)

    def run(feeds: Any) -> dict[str, np.ndarray]:
        return dict(zip(outputs, servable.run_tensors(feeds, outputs), strict=True))

    feeds = {name: examples for name in input_names}
    if not batched:
        return run(feeds)
    return servable.compute(("examples", tuple(input_names), outputs), run, feeds, deadline)


def classify(
    servable: Servable,
    request: Any,
    check_method: bool = False,
    deadline: float | None = None,
    batched: bool = True,
) -> Any:
    """RunClassify on one servable: a `ClassificationResponse`.

    Raises:
        ServingError: the signature does not classify, the input is empty, or the run or its outputs fail.
    """
    from tensorflow_serving.apis import classification_pb2

    response = classification_pb2.ClassificationResponse()
    return _single_task(
        servable, request, response, classification_tensors, classification_result, check_method, deadline, batched
    )


def regress(
    servable: Servable,
    request: Any,
    check_method: bool = False,
    deadline: float | None = None,
    batched: bool = True,
) -> Any:
    """RunRegress on one servable: a `RegressionResponse`.

    Raises:
        ServingError: the signature does not regress, the input is empty, or the run or its outputs fail.
    """
    from tensorflow_serving.apis import regression_pb2

    response = regression_pb2.RegressionResponse()
    return _single_task(
        servable, request, response, regression_tensors, regression_result, check_method, deadline, batched
    )


def _single_task(
    servable: Servable,
    request: Any,
    response: Any,
    tensors: Callable[[Any, bool], tuple[str, list[str]]],
    fill_result: Callable[[Any, int, dict[str, np.ndarray], Any], None],
    check_method: bool,
    deadline: float | None,
    batched: bool,
) -> Any:
    """Classify or Regress: the signature's tensors, one run over the request's examples, the result filled in."""
    signature = _signature(servable, request.model_spec.signature_name)
    input_name, output_names = tensors(signature, check_method)
    _model_spec(response.model_spec, request.model_spec, servable.version)
    examples = serialized_examples(request.input)
    fetched = _fetch(servable, [input_name], output_names, examples, deadline, batched)
    fill_result(signature, len(examples), fetched, response.result)
    return response


def multi_inference(
    servable: Servable,
    request: Any,
    check_method: bool = False,
    deadline: float | None = None,
    batched: bool = True,
) -> Any:
    """TensorFlowMultiInferenceRunner::Infer: every task's signature in one run over the same examples.

    A task's own `method_name` decides how its signature is read, as in TF Serving; with
    `check_method`, the signature's method must match it as well.

    Raises:
        ServingError: tasks on different models, a signature twice, an unknown signature or method,
            an empty input, or a failing run.
    """
    from tensorflow_serving.apis import inference_pb2

    model_name = ""
    seen: set[str] = set()
    input_names: set[str] = set()
    output_names: set[str] = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or sig.SIGNATURE_NAME
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in servable.signature_defs:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        signature = servable.signature_defs[name]
        if task.method_name == CLASSIFY_METHOD:
            input_name, outputs = classification_tensors(signature, check_method)
        elif task.method_name == REGRESS_METHOD:
            input_name, outputs = regression_tensors(signature, check_method)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        input_names.add(input_name)
        output_names.update(outputs)
    examples = serialized_examples(request.input)
    fetched = _fetch(servable, sorted(input_names), sorted(output_names), examples, deadline, batched)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        signature = servable.signature_defs[task.model_spec.signature_name or sig.SIGNATURE_NAME]
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            classification_result(signature, len(examples), fetched, result.classification_result)
        else:
            regression_result(signature, len(examples), fetched, result.regression_result)
        _model_spec(result.model_spec, task.model_spec, servable.version)
    return response
