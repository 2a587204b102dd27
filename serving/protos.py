"""TF Serving's API messages without importing TensorFlow: classes built from the official descriptors.

tensorflow-serving-api's `_pb2` modules import `tensorflow.core.framework`, which runs
TensorFlow's package start-up (about 5 s and its log lines) before a client can send anything.
The same messages are built here from `tfs_api.binpb`, a `FileDescriptorSet` of exactly the
`.proto` files those modules were generated from (PredictionService and ModelService with every
file they depend on), written by `write_descriptor_set` from the installed packages and checked
against them by the tests. The classes live in a private descriptor pool, so they never clash
with TensorFlow's own when both are loaded; on the wire they are the same bytes.

A few messages the server reads are in no installed package (TF Serving's monitoring and SSL
configs, grpc's health check): `declared_messages` builds those from their declared fields.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from core import protos as core_protos

DESCRIPTOR_SET = Path(__file__).with_name("tfs_api.binpb")
# The services a client calls; their files pull in every message they use.
ROOT_FILES = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
)
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
MESSAGES = {
    "ModelSpec": "tensorflow.serving.ModelSpec",
    "PredictRequest": "tensorflow.serving.PredictRequest",
    "PredictResponse": "tensorflow.serving.PredictResponse",
    "GetModelMetadataRequest": "tensorflow.serving.GetModelMetadataRequest",
    "GetModelMetadataResponse": "tensorflow.serving.GetModelMetadataResponse",
    "SignatureDefMap": "tensorflow.serving.SignatureDefMap",
    "GetModelStatusRequest": "tensorflow.serving.GetModelStatusRequest",
    "GetModelStatusResponse": "tensorflow.serving.GetModelStatusResponse",
    "ModelVersionStatus": "tensorflow.serving.ModelVersionStatus",
    "ReloadConfigRequest": "tensorflow.serving.ReloadConfigRequest",
    "ReloadConfigResponse": "tensorflow.serving.ReloadConfigResponse",
    "TensorProto": "tensorflow.TensorProto",
    "TensorShapeProto": "tensorflow.TensorShapeProto",
}
# Unary methods: (service, method) -> (request, response) message names above.
METHODS = {
    (PREDICTION_SERVICE, "Predict"): ("PredictRequest", "PredictResponse"),
    (PREDICTION_SERVICE, "GetModelMetadata"): ("GetModelMetadataRequest", "GetModelMetadataResponse"),
    (MODEL_SERVICE, "GetModelStatus"): ("GetModelStatusRequest", "GetModelStatusResponse"),
    (MODEL_SERVICE, "HandleReloadConfigRequest"): ("ReloadConfigRequest", "ReloadConfigResponse"),
}


def build_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set of the root files and all their dependencies, from the installed `_pb2` modules.

    This imports tensorflow-serving-api (and so TensorFlow): it is for writing and checking the
    shipped file, never for a client's start-up.
    """
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2  # noqa: F401

    return core_protos.build_descriptor_set(ROOT_FILES)


def write_descriptor_set(path: str | Path = DESCRIPTOR_SET) -> Path:
    """Write `build_descriptor_set()` to `path` (run after upgrading tensorflow-serving-api)."""
    return core_protos.write_descriptor_set(path, build_descriptor_set())


@functools.cache
def api() -> SimpleNamespace:
    """The message classes (`api().PredictRequest`, ...) and the DataType values (`api().DT_FLOAT`, ...)."""
    pool = core_protos.load_pool(DESCRIPTOR_SET)
    classes = {
        short: message_factory.GetMessageClass(pool.FindMessageTypeByName(full)) for short, full in MESSAGES.items()
    }
    data_types = pool.FindEnumTypeByName("tensorflow.DataType")
    enums = {value.name: value.number for value in data_types.values}
    return SimpleNamespace(**classes, **enums, pool=pool)


def unary(channel: Any, service: str, method: str) -> Any:
    """A callable for one unary RPC on `channel`, (de)serialising with the classes of `api()`."""
    request, response = METHODS[(service, method)]
    classes = api()
    return channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=getattr(classes, request).SerializeToString,
        response_deserializer=getattr(classes, response).FromString,
    )


# Field kinds `declared_messages` understands, by the names a .proto file spells them with.
_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
}


@functools.cache
def declared_messages(
    file_name: str,
    package: str,
    messages: tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...],
    enums: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (),
) -> SimpleNamespace:
    """Message classes of a proto3 file that no installed package ships, from its declared fields.

    tensorflow-serving-api leaves out some of TF Serving's config files (monitoring_config.proto,
    ssl_config.proto) and grpcio leaves out grpc's health.proto; their messages are declared here with
    the same package, names and field numbers, so text and wire formats are those of the real files.
    They live in a private pool, as `api()`'s do.

    Args:
        file_name: the file's name in that pool.
        package: the proto package (`tensorflow.serving`).
        messages: (message name, ((field name, number, kind), ...)) in declaration order; a kind is a
            scalar type (`string`, `bool`, ...), another message of this file, or an enum of `enums`
            (spelt as there).
        enums: (enum name, ((value name, number), ...)); `Message.Enum` nests the enum in that message.

    Returns:
        A namespace with one class per message and one name->number mapping per enum (by its last name).
    """
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    declared = {name: file.message_type.add(name=name) for name, _ in messages}
    enum_names = {name for name, _ in enums}
    for enum_name, values in enums:
        outer, _, inner = enum_name.rpartition(".")
        enum = (declared[outer].enum_type if outer else file.enum_type).add(name=inner)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for message_name, fields in messages:
        for field_name, number, kind in fields:
            field = declared[message_name].field.add(
                name=field_name, number=number, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
                continue
            field.type = (
                descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                if kind in enum_names
                else descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            )
            field.type_name = f".{package}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    classes: dict[str, Any] = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name, _ in messages
    }
    classes.update({name.rpartition(".")[2]: dict(values) for name, values in enums})
    return SimpleNamespace(**classes)
