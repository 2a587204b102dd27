"""Protobuf message classes built from shipped descriptor sets, so no process imports TensorFlow for them.

TensorFlow's and tensorflow-serving-api's `_pb2` modules import TensorFlow's package start-up
(about 5 s and its log lines). A `FileDescriptorSet` of exactly the `.proto` files those modules
were generated from is written once from the installed packages (`make protos`, checked by the
tests) and loaded here into a private descriptor pool, so the classes never clash with
TensorFlow's own when both are loaded; on the wire they are the same bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

EXAMPLE_DESCRIPTOR_SET = Path(__file__).with_name("tf_example.binpb")
EXAMPLE_ROOT = "tensorflow/core/example/example.proto"


def build_descriptor_set(roots: tuple[str, ...]) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set of `roots` and all their dependencies, from TensorFlow's default pool.

    The caller imports the `_pb2` modules that define the roots first (that imports TensorFlow):
    this is for writing and checking the shipped files, never for a worker's start-up.
    """
    pool = descriptor_pool.Default()
    ordered: list[Any] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        file = pool.FindFileByName(name)
        for dependency in file.dependencies:
            visit(dependency.name)
        ordered.append(file)

    for root in roots:
        visit(root)
    out = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        file.CopyToProto(out.file.add())
    return out


@functools.cache
def load_pool(path: Path) -> descriptor_pool.DescriptorPool:
    """A private pool holding every file of the descriptor set at `path`."""
    files = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def message_class(path: Path, full_name: str) -> Any:
    """The class of message `full_name` from the descriptor set at `path`."""
    return message_factory.GetMessageClass(load_pool(path).FindMessageTypeByName(full_name))


def build_example_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """`tf.train.Example`'s files, from the installed TensorFlow."""
    from tensorflow.core.example import example_pb2  # noqa: F401

    return build_descriptor_set((EXAMPLE_ROOT,))


def write_descriptor_set(path: str | Path, files: descriptor_pb2.FileDescriptorSet) -> Path:
    """Write a descriptor set to `path`, byte-stable (what the freshness tests compare)."""
    path = Path(path)
    path.write_bytes(files.SerializeToString(deterministic=True))
    return path


def write_example_descriptor_set(path: str | Path = EXAMPLE_DESCRIPTOR_SET) -> Path:
    """Write `build_example_descriptor_set()` to `path` (run after upgrading TensorFlow)."""
    return write_descriptor_set(path, build_example_descriptor_set())


@functools.cache
def example_class() -> Any:
    """`tensorflow.Example` without TensorFlow."""
    return message_class(EXAMPLE_DESCRIPTOR_SET, "tensorflow.Example")
