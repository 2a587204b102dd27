"""The server's configuration files, read exactly as TF Serving reads them.

`models.config` is a text-format `tensorflow.serving.ModelServerConfig` (from
tensorflow-serving-api). The batching parameters file is a text-format
`tensorflow.serving.BatchingParameters`, whose proto is not shipped in the API package: its
descriptor is built here with the same field names and numbers, so a file accepted here is
accepted by `tensorflow_model_server --batching_parameters_file` and the other way round.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from core import storage
from core.config import ServingConfig
from core.errors import StepError

# TF Serving's defaults for fields the batching file leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10


class ConfigFileError(StepError):
    """A models.config or batching parameters file cannot be read or is invalid."""


@functools.lru_cache(maxsize=1)
def batching_parameters_class() -> type:
    """The `tensorflow.serving.BatchingParameters` message class (session_bundle_config.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.Default()
    name = "tensorflow.serving.BatchingParameters"
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    fd = descriptor_pb2.FileDescriptorProto(
        name="fashion/tensorflow_serving_batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    msg = fd.message_type.add(name="BatchingParameters")
    label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    type_msg = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    for number, field_name, type_name in (
        (1, "max_batch_size", ".google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
        (4, "num_batch_threads", ".google.protobuf.Int64Value"),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
        (8, "enable_large_batch_splitting", ".google.protobuf.BoolValue"),
        (9, "max_execution_batch_size", ".google.protobuf.Int64Value"),
    ):
        msg.field.add(name=field_name, number=number, label=label_opt, type=type_msg, type_name=type_name)
    msg.field.add(
        name="allowed_batch_sizes", number=6, label=label_rep, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    )
    msg.field.add(
        name="pad_variable_length_inputs",
        number=7,
        label=label_opt,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    )
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


@dataclass(frozen=True)
class BatchingParameters:
    """The batching settings the scheduler uses, with TF Serving's defaults filled in."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = 0
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigFileError(f"batching parameters: max_batch_size must be positive, got {self.max_batch_size}")
        if self.max_enqueued_batches < 1:
            raise ConfigFileError("batching parameters: max_enqueued_batches must be positive")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ConfigFileError("batching parameters: allowed_batch_sizes must be positive and increasing")
            if sizes[-1] != self.max_batch_size:
                raise ConfigFileError(
                    "batching parameters: the last allowed_batch_sizes entry must equal max_batch_size"
                )

    @property
    def threads(self) -> int:
        """Batch threads: the configured number, else the machine's parallelism as TF Serving does."""
        return self.num_batch_threads or max(1, os.cpu_count() or 1)


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """Parse a text-format BatchingParameters file's content."""
    message = batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ConfigFileError(f"{source}: not a valid BatchingParameters text proto: {err}") from err

    def _value(name: str, default: int) -> int:
        return int(getattr(message, name).value) if message.HasField(name) else default

    return BatchingParameters(
        max_batch_size=_value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=_value("batch_timeout_micros", 0),
        max_enqueued_batches=_value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        num_batch_threads=_value("num_batch_threads", 0),
        allowed_batch_sizes=tuple(int(s) for s in message.allowed_batch_sizes),
        pad_variable_length_inputs=bool(message.pad_variable_length_inputs),
    )


def read_batching_parameters(uri: str) -> BatchingParameters:
    """Read a batching parameters file (local or `gs://`)."""
    return parse_batching_parameters(_read_text(uri), uri)


def render_batching_parameters(serving: ServingConfig, num_batch_threads: int = 0) -> str:
    """The batching parameters file for the project's serving config (`serving.*` fields)."""
    lines = [
        f"max_batch_size {{ value: {serving.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {serving.batch_timeout_micros} }}",
        f"max_enqueued_batches {{ value: {serving.max_enqueued_batches} }}",
    ]
    if num_batch_threads:
        lines.append(f"num_batch_threads {{ value: {num_batch_threads} }}")
    return "\n".join(lines) + "\n"


def _read_text(uri: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8")
    except storage.StorageError as err:
        raise ConfigFileError(f"cannot read {uri}: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{uri} is not UTF-8 text: {err}") from err


def parse_model_server_config(text: str, source: str = "model config") -> Any:
    """Parse and validate a text-format ModelServerConfig."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ConfigFileError(f"{source}: not a valid ModelServerConfig text proto: {err}") from err
    validate_model_server_config(config, source)
    return config


def validate_model_server_config(config: Any, source: str = "model config") -> None:
    """Check what TF Serving checks before it applies a config: the list form, names, paths, platform."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigFileError(f"{source}: only model_config_list is supported (custom_model_config is not)")
    seen = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigFileError(f"{source}: a model config has no name")
        if model.name in seen:
            raise ConfigFileError(f"{source}: model {model.name!r} is configured twice")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigFileError(f"{source}: model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigFileError(f"{source}: model {model.name!r}: platform {model.model_platform!r} is not supported")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigFileError(f"{source}: model {model.name!r}: latest.num_versions must be positive")


def read_model_server_config(uri: str) -> Any:
    """Read a models.config file (local or `gs://`)."""
    return parse_model_server_config(_read_text(uri), uri)


def single_model_config(model_name: str, base_path: str) -> Any:
    """The config TF Serving builds from `--model_name` and `--model_base_path`."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def format_model_server_config(config: Any) -> str:
    """Text-format form of a ModelServerConfig, as written to models.config."""
    return text_format.MessageToString(config)


def write_model_server_config(uri: str, config: Any) -> None:
    """Write a ModelServerConfig as text (atomically for local files)."""
    storage.write_bytes(uri, format_model_server_config(config).encode())


def is_local(uri: str) -> bool:
    """True for a local path (not gs://)."""
    return not storage.is_gcs(uri)


def resolve_path(uri: str, base: str | Path) -> str:
    """A relative local path resolved against `base`; gs:// URIs and absolute paths unchanged."""
    if storage.is_gcs(uri) or Path(uri).is_absolute():
        return uri
    return str((Path(base) / uri).resolve())
