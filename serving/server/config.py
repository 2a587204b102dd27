"""The server's batching parameters file and config paths, read exactly as TF Serving reads them.

The batching parameters file is a text-format `tensorflow.serving.BatchingParameters`, whose
proto is not shipped in the API package: its descriptor is built here with the same field names
and numbers, so a file accepted here is accepted by `tensorflow_model_server
--batching_parameters_file` and the other way round. `models.config` is read and written by
`serving.model_config`, which the deploy step shares.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from core import storage
from core.config import ServingConfig
from serving.model_config import ConfigFileError, parse_text_proto, read_config_text

# TF Serving's defaults for fields the batching file leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10


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
    message = parse_text_proto(text, batching_parameters_class()(), source)

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
    return parse_batching_parameters(read_config_text(uri), uri)


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


def is_local(uri: str) -> bool:
    """True for a local path (not gs://)."""
    return not storage.is_gcs(uri)


def resolve_path(uri: str, base: str | Path) -> str:
    """A relative local path resolved against `base`; gs:// URIs and absolute paths unchanged."""
    if storage.is_gcs(uri) or Path(uri).is_absolute():
        return uri
    return str((Path(base) / uri).resolve())
