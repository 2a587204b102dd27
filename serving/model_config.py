"""models.config: the text-format ModelServerConfig a server reads, and the edits a deploy makes to it.

The file is a `tensorflow.serving.ModelServerConfig` (tensorflow-serving-api's
`model_server_config_pb2`) in protobuf text format, parsed and printed with `text_format`, so a
file written here is read unchanged by `tensorflow_model_server --model_config_file` and by this
project's server.

Routing lives in this file, because it is all the official image reads. TF Serving answers a
request that names no version or label with the highest version its model entry has loaded, so
the main entry of a model only ever names verified versions: a `specific` policy whose highest
version is the one `stable` points at. A candidate under verification is loaded by a second entry,
`<name>-canary`, on the same base path, whose `specific` policy names only the candidate; it is
reachable by that model name alone (with or without its version number). See `with_routing`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import text_format

from core import storage
from core.errors import StepError

MODEL_CONFIG_FILE = "models.config"
# The label clients send to reach the verified version (the registry's champion).
STABLE_LABEL = "stable"
# Appended to a model's name for the entry that loads a candidate while the deploy verifies it.
CANARY_SUFFIX = "-canary"


class ConfigFileError(StepError):
    """A models.config or batching parameters file cannot be read or is invalid."""


def model_config_uri(model_base_path: str) -> str:
    """The models.config the server reads and the deploy step rewrites: next to the model's base path.

    TF Serving's usual layout: `<root>/models.config` beside `<root>/<model name>/<version>/`, so
    the file never sits among the version folders the server scans.
    """
    base = model_base_path.rstrip("/")
    parent = base.rsplit("/", 1)[0] if "/" in base.removeprefix("gs://") else base
    return storage.join(parent, MODEL_CONFIG_FILE)


def read_config_text(uri: str) -> str:
    """The UTF-8 text of a server config file (local or `gs://`).

    Raises:
        ConfigFileError: the file cannot be read or is not UTF-8.
    """
    try:
        return storage.read_bytes(uri).decode("utf-8")
    except storage.StorageError as err:
        raise ConfigFileError(f"cannot read {uri}: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{uri} is not UTF-8 text: {err}") from err


def new_model_server_config() -> Any:
    """An empty ModelServerConfig."""
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2.ModelServerConfig()


def add_model(config: Any, model_name: str, base_path: str) -> Any:
    """Append a TensorFlow model to `config`'s model list; returns its ModelConfig entry."""
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return model


def single_model_config(model_name: str, base_path: str) -> Any:
    """The config TF Serving builds from `--model_name` and `--model_base_path`."""
    config = new_model_server_config()
    add_model(config, model_name, base_path)
    return config


def parse_model_server_config(text: str, source: str = "model config") -> Any:
    """Parse and validate a text-format ModelServerConfig.

    Raises:
        ConfigFileError: the text is not a ModelServerConfig, or one TF Serving would refuse.
    """
    config = parse_text_proto(text, new_model_server_config(), source)
    validate_model_server_config(config, source)
    return config


def parse_text_proto(text: str, message: Any, source: str) -> Any:
    """Parse a text-format proto file's content into `message` and return it.

    Raises:
        ConfigFileError: the text does not parse; the error carries protobuf's words as TF Serving's
            log does (`Error parsing text-format tensorflow.serving.ModelServerConfig: 1:1: ...`),
            after TF Serving's own (`Invalid protobuf file: '<path>'`).
    """
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        detail = re.sub(r"^\d+:\d+ : ", "", str(err))
        where = f"{err.GetLine()}:{err.GetColumn()}: " if err.GetLine() is not None else ""
        raise ConfigFileError(
            f"Invalid protobuf file: '{source}': Error parsing text-format {message.DESCRIPTOR.full_name}: "
            f"{where}{detail}"
        ) from err
    return message


def validate_model_server_config(config: Any, source: str = "model config") -> None:
    """Check what TF Serving checks before it applies a config: the list form, names, paths, platform.

    Raises:
        ConfigFileError: the first problem found, naming `source` and the model.
    """
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
    """Read and validate a models.config file (local or `gs://`)."""
    return parse_model_server_config(read_config_text(uri), uri)


def format_model_server_config(config: Any) -> str:
    """Text-format form of a ModelServerConfig, as written to models.config."""
    return text_format.MessageToString(config)


def write_model_server_config(uri: str, config: Any) -> None:
    """Write a ModelServerConfig as text (atomically for local files)."""
    storage.write_bytes(uri, format_model_server_config(config).encode())


def find_model(config: Any, model_name: str) -> Any:
    """The ModelConfig entry of `model_name` in a ModelServerConfig.

    Raises:
        ConfigFileError: the config has no model of that name.
    """
    for model in config.model_config_list.config:
        if model.name == model_name:
            return model
    raise ConfigFileError(f"the models.config has no model named {model_name!r}: add it or set serving.model_name")


def read_or_single_model_config(uri: str, model_name: str, base_path: str) -> Any:
    """The models.config at `uri`; a fresh single-model one when the file does not exist yet.

    Raises:
        ConfigFileError: the file is invalid, or has no model named `model_name`.
    """
    config = read_model_server_config(uri) if storage.exists(uri) else single_model_config(model_name, base_path)
    find_model(config, model_name)
    return config


def set_version_policy(
    model: Any, *, specific: Iterable[int] | None = None, latest: int | None = None, all_versions: bool = False
) -> None:
    """Replace a ModelConfig's version policy; with no argument it is TF Serving's default (latest one).

    Args:
        model: the ModelConfig entry to change.
        specific: serve exactly these versions.
        latest: serve the newest `latest` versions.
        all_versions: serve every version found.

    Raises:
        ValueError: more than one policy was given.
    """
    if sum((specific is not None, latest is not None, all_versions)) > 1:
        raise ValueError("give one version policy: specific, latest or all_versions")
    policy = model.model_version_policy
    policy.Clear()
    if specific is not None:
        # Set even when empty: an empty `specific` policy loads nothing, where no policy means `latest`.
        policy.specific.SetInParent()
        policy.specific.versions.extend(sorted(set(specific)))
    elif latest is not None:
        policy.latest.num_versions = latest
    elif all_versions:
        policy.all.SetInParent()


def set_labels(model: Any, labels: Mapping[str, int]) -> None:
    """Replace a ModelConfig's version labels (label -> version number)."""
    model.version_labels.clear()
    for label, version in labels.items():
        model.version_labels[label] = int(version)


def canary_model_name(model_name: str) -> str:
    """The model name a candidate of `model_name` is loaded under while it is verified."""
    return f"{model_name}{CANARY_SUFFIX}"


def named_versions(config: Any, model_name: str) -> set[int]:
    """The versions a model's entry and its canary entry name, in their `specific` policies or behind a label."""
    named: set[int] = set()
    for model in config.model_config_list.config:
        if model.name in (model_name, canary_model_name(model_name)):
            named |= set(model.model_version_policy.specific.versions) | set(model.version_labels.values())
    return named


def canary_versions(config: Any, model_name: str) -> set[int]:
    """The versions the canary entry of `model_name` loads; empty when there is no canary entry."""
    canary = canary_model_name(model_name)
    return {
        v for m in config.model_config_list.config if m.name == canary for v in m.model_version_policy.specific.versions
    }


def with_routing(
    config: Any, model_name: str, serving: Iterable[int], stable: int | None, candidate: int | None = None
) -> Any:
    """A copy of `config` in which `model_name` serves `serving` with `stable` on one, and `candidate` as its canary.

    Args:
        config: the ModelServerConfig to start from; it is not changed.
        model_name: the model whose entries change; the other models are kept as they are.
        serving: the versions the main entry loads (`specific` policy). Unlabelled requests get
            the highest of them, so the caller names only verified versions here.
        stable: the version the `stable` label points at (one of `serving`); None for no label.
        candidate: the version the `<model_name>-canary` entry loads, on the same base path; None
            removes that entry.

    Raises:
        ValueError: `stable` is not one of `serving`.
    """
    serving = set(serving)
    if stable is not None and stable not in serving:
        raise ValueError(f"the stable version {stable} must be one of the served versions {sorted(serving)}")
    new = new_model_server_config()
    new.CopyFrom(config)
    model = find_model(new, model_name)
    set_version_policy(model, specific=serving)
    set_labels(model, {STABLE_LABEL: stable} if stable is not None else {})
    canary_name = canary_model_name(model_name)
    models = new.model_config_list.config
    for index in reversed(range(len(models))):
        if models[index].name == canary_name:
            del models[index]
    if candidate is not None:
        canary = add_model(new, canary_name, model.base_path)
        set_version_policy(canary, specific=[candidate])
    return new
