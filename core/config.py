"""Typed, layered configuration: dataclass defaults -> preset YAML -> run YAML -> CLI overrides.

Every field is declared once, with its type and what values it allows; `load_config` resolves the
layers and fails at once with the field's dotted name, the bad value and what is allowed.
Nothing here reads the environment: the CLI resolves environment-specific values (tracking URI,
bucket, image tag) and passes them in as overrides.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.secrets import redact_value

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("ci", "demo", "cpu-full", "paper")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of its allowed range."""


def _choice(*allowed: Any) -> dict[str, Any]:
    return {"choices": allowed}


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


# A model to start training from: a registry version (`models:/<name>/<version>`), a registry alias
# (`models:/<name>@<alias>`), or a model folder written by the trainer (a path with a `/`, or gs://).
_MODEL_URI = re.compile(r"^(models:/[^/@\s]+(/[0-9]+|@[A-Za-z0-9_-]+)|gs://[^/\s]+/\S*|[^:\s]*/\S*)$")
MODEL_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias>, a model folder (a path with a /) or gs://..."


def is_model_uri(value: str) -> bool:
    """Whether `value` names a model to start training from (see `MODEL_URI_FORMS`)."""
    return bool(_MODEL_URI.match(value))


def _choice_or_model_uri(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed, "or_model_uri": True}


@dataclass(frozen=True)
class DataConfig:
    """Where the catalogue comes from and how strict ingestion is."""

    source_uri: str = "data/demo"
    min_usable_fraction: float = field(default=0.5, metadata=_range(0.0, 1.0))
    min_image_side: int = field(default=8, metadata=_range(1, None))
    validation_workers: int = field(default=2, metadata=_range(1, 64))
    # Zip sources: members over these limits are refused unread and reported (zip bombs, runaway files).
    max_member_mb: float = field(default=64.0, metadata=_range(0.001, None))
    max_archive_gb: float = field(default=64.0, metadata=_range(0.001, None))
    max_compression_ratio: float = field(default=100.0, metadata=_range(1.0, None))


@dataclass(frozen=True)
class LabelConfig:
    """Which styles.csv columns become the three output levels, and how rare classes are handled."""

    category: str = "subCategory"
    subcategory: str = "articleType"
    attributes: tuple[str, ...] = ("baseColour", "season", "usage", "gender")
    min_class_count: int = field(default=10, metadata=_range(1, None))
    rare_policy: str = field(default="exclude", metadata=_choice("exclude", "other"))
    other_label: str = "other"
    train_fraction: float = field(default=0.8, metadata=_range(0.0, 1.0))
    validation_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0))
    split_salt: str = "fashion-split-v1"


@dataclass(frozen=True)
class PreprocessConfig:
    """The Beam step: stored image size, resize policy, shards and failure tolerance."""

    image_height: int = field(default=80, metadata=_range(8, 2048))
    image_width: int = field(default=60, metadata=_range(8, 2048))
    resize_mode: str = field(default="pad", metadata=_choice("pad", "stretch"))
    pad_color: tuple[int, int, int] = (255, 255, 255)
    image_format: str = field(default="jpeg", metadata=_choice("jpeg", "png"))
    jpeg_quality: int = field(default=95, metadata=_range(1, 100))
    num_shards: int = field(default=0, metadata=_range(0, 10_000))
    compression: str = field(default="none", metadata=_choice("none", "gzip"))
    max_reject_fraction: float = field(default=0.05, metadata=_range(0.0, 1.0))
    direct_num_workers: int = field(default=2, metadata=_range(0, 256))
    direct_running_mode: str = field(
        default="multi_processing", metadata=_choice("in_memory", "multi_threading", "multi_processing")
    )


@dataclass(frozen=True)
class ModelConfig:
    """The unified network: backbone, its input size and the message-passing head."""

    backbone: str = field(default="small_cnn", metadata=_choice("small_cnn", "resnet50", "mobilenet_v3_small"))
    weights: str | None = None
    input_height: int = field(default=80, metadata=_range(8, 1024))
    input_width: int = field(default=60, metadata=_range(8, 1024))
    branch_units: int = field(default=1024, metadata=_range(1, 16384))
    l2: float = field(default=5e-4, metadata=_range(0.0, 1.0))
    dropout: float = field(default=0.3, metadata=_range(0.0, 0.99))
    head: str = field(default="unified", metadata=_choice("unified", "independent"))
    width_multiplier: float = field(default=1.0, metadata=_range(0.05, 8.0))
    head_norm: bool = False
    # Colour statistics of the product's pixels against the background (components/train/colour.py)
    # as an extra input to the attribute branch; 0 turns them off, else the histogram's levels per channel.
    colour_levels: int = field(default=0, metadata=_range(0, 16))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: the paper's Adam 1e-3 by default, sized per preset."""

    batch_size: int = field(default=32, metadata=_range(1, 65536))
    epochs: int = field(default=10, metadata=_range(1, 10_000))
    learning_rate: float = field(default=1e-3, metadata=_range(0.0, 10.0))
    lr_schedule: str = field(default="constant", metadata=_choice("constant", "cosine", "onecycle"))
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0, 1000.0))
    early_stopping_patience: int = field(default=3, metadata=_range(0, 1000))
    steps_per_epoch: int = field(default=0, metadata=_range(0, None))
    augment: bool = True
    # Brightness/contrast jitter in the augmentation; it can turn a label's colour into another
    # (white into grey, navy into black), so colour-sensitive recipes may turn it off.
    colour_jitter: bool = True
    mixed_precision: str = field(default="auto", metadata=_choice("auto", "off", "mixed_float16", "mixed_bfloat16"))
    shuffle_buffer: int = field(default=4096, metadata=_range(1, None))
    class_weight_power: float = field(default=1.0, metadata=_range(0.0, 4.0))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 0.5))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    clip_norm: float = field(default=0.0, metadata=_range(0.0, None))
    seed: int = 42
    # How training starts. `scratch`: random weights. `champion`: the backbone and shared layers of the
    # registry's serving champion, its heads resized to this catalogue's classes (a known class keeps its
    # weights, a new one starts fresh); the first run, with no champion yet, starts from scratch.
    # Or a model URI (MODEL_URI_FORMS) to start from that model the same way.
    init: str = field(default="champion", metadata=_choice_or_model_uri("scratch", "champion"))
    # Epochs of a warm-started training (0: `epochs`): a model that starts from one that already
    # learnt most of the catalogue needs fewer.
    warm_start_epochs: int = field(default=0, metadata=_range(0, 10_000))
    # Skip training when the catalogue (ids and labels) and the training settings are those the
    # champion was trained on; `fashion run --force` retrains anyway.
    skip_unchanged: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    """The paper's metrics and the gate that decides whether a model may ship."""

    attribute_threshold: float = field(default=0.75, metadata=_range(0.0, 1.0))
    hierarchical_decoding: bool = False
    floors: Mapping[str, float] = field(
        default_factory=lambda: {"category_accuracy": 0.5, "subcategory_accuracy": 0.3}, metadata=_range(0.0, 1.0)
    )
    tolerances: Mapping[str, float] = field(
        default_factory=lambda: {"category_accuracy": 0.01, "subcategory_accuracy": 0.01}, metadata=_range(0.0, 1.0)
    )
    sample_grid_size: int = field(default=24, metadata=_range(0, 1000))


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow tracking and registry; an empty URI means the embedded store in the work directory."""

    tracking_uri: str = ""
    artifact_uri: str = ""
    experiment: str = "fashion-classifier"
    model_name: str = "fashion-classifier"


@dataclass(frozen=True)
class ServingConfig:
    """The TF Serving endpoint and where versions are published."""

    model_name: str = "fashion"
    model_base_path: str = ""
    host: str = "127.0.0.1"
    grpc_port: int = field(default=8500, metadata=_range(0, 65535))
    rest_port: int = field(default=8501, metadata=_range(0, 65535))
    enable_batching: bool = True
    max_batch_size: int = field(default=32, metadata=_range(1, 4096))
    batch_timeout_micros: int = field(default=2000, metadata=_range(0, None))
    max_enqueued_batches: int = field(default=64, metadata=_range(1, None))
    request_timeout_s: float = field(default=30.0, metadata=_range(0.1, 3600.0))
    max_message_mb: int = field(default=64, metadata=_range(1, 2047))
    # Photos declaring more pixels are refused by the exported model before any decode (bombs).
    max_image_pixels: int = field(default=40_000_000, metadata=_range(1, None))
    # Least share of the evaluation's smoke photos whose served labels must equal the evaluation's.
    # The served model resizes the original photo itself, the evaluation saw the resized record, so
    # a barely trained model can flip a near tie; a different model disagrees on most.
    smoke_min_agreement: float = field(default=0.9, metadata=_range(0.0, 1.0))
    # Flip test-time augmentation: answers averaged over the photo and its mirror image, in the
    # exported model and in the evaluation that verifies it (twice the model's compute per photo).
    flip_tta: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """Orchestration: names, images, resources and retries for the Kubeflow DAG."""

    name: str = "fashion-classifier"
    pipeline_root: str = ""
    base_image: str = "fashion-classifier:latest"
    gpu_image: str = "fashion-classifier-gpu:latest"
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = field(default=0, metadata=_range(0, 16))
    train_cpu: str = "2"
    train_memory: str = "8G"
    preprocess_cpu: str = "2"
    # Retries of the steps that touch storage or the registry; the first waits `retry_backoff_s`
    # (whole seconds: KFP's retry policy has no finer unit), each next one twice as long.
    retries: int = field(default=2, metadata=_range(0, 100))
    retry_backoff_s: int = field(default=10, metadata=_range(0, 3600))


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one run."""

    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable dict of every field."""
        return _to_plain(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML, as saved next to every output: URI passwords are redacted."""
        return yaml.safe_dump(redact_value(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML to `path`, readable by its owner only, and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # The mode of an existing file is not changed by os.open: set it explicitly.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_yaml())
        return path


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the declared type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: got {value!r}, expected {_describe(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}: got {value!r}, expected a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{name}: got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}, expected a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{name}: got {value!r}, expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            # YAML 1.1 reads an unquoted `off`/`on` (e.g. `--set train.mixed_precision=off`) as a boolean.
            return "on" if value else "off"
        if isinstance(value, int | float):
            return str(value)
        raise ConfigError(f"{name}: got {value!r}, expected a string")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{name}: got {value!r}, expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name}: got {value!r}, expected a list of {len(args)} values")
        return tuple(_coerce(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: got {value!r}, expected a mapping")
        key_t, val_t = args or (str, Any)
        return {
            _coerce(f"{name}", key_t, k): (v if val_t is Any else _coerce(f"{name}.{k}", val_t, v))
            for k, v in value.items()
        }
    return value


def _check(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        if meta.get("or_model_uri"):
            if isinstance(value, str) and is_model_uri(value):
                return
            allowed += f" or a model URI ({MODEL_URI_FORMS})"
        raise ConfigError(f"{name}: got {value!r}, allowed: {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, Mapping):
        # A map's range bounds each of its values (floors and tolerances are shares in [0, 1]).
        for key, item in value.items():
            _check(f"{name}.{key}", item, meta)
        return
    if value is None or isinstance(value, str):
        return
    if lo is not None and value < lo:
        raise ConfigError(f"{name}: got {value!r}, must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}: got {value!r}, must be <= {hi}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: got {values!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown setting; allowed: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for key, raw in values.items():
        name = f"{prefix}.{key}" if prefix else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, raw or {}, name)
            continue
        value = _coerce(name, tp, raw)
        _check(name, value, known[key].metadata)
        kwargs[key] = value
    return cls(**kwargs)


# Map-valued settings: a later layer merges into them entry by entry, and a null entry removes one.
MAP_FIELDS = ("floors", "tolerances")


def _merge(base: dict[str, Any], over: Mapping[str, Any], in_map: bool = False) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if in_map and value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value, in_map=key in MAP_FIELDS)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn `section.field=value` strings (CLI `--set`) into a nested dict; values parse as YAML."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        dotted, raw = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r}: empty field name")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML config layer; an empty file is an empty layer."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return dict(data)


def preset_path(preset: str) -> Path:
    """The YAML file that defines a named preset."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: got {preset!r}, allowed: {', '.join(PRESETS)}")
    return CONFIG_DIR / f"{preset}.yaml"


def load_config(
    preset: str | None = None,
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the layers into one validated Config.

    Args:
        preset: a named preset (`ci`, `demo`, `cpu-full`, `paper`); defaults to the run file's
            `preset` key, else `demo`.
        config_path: an optional YAML file for this run; it may name its own `preset`.
        overrides: nested dict of final overrides (from CLI flags / `--set`).

    Returns:
        The frozen, validated Config.

    Raises:
        ConfigError: a value is of the wrong type, out of range, or names an unknown field.

    """
    run_layer = read_yaml(config_path) if config_path else {}
    overrides = dict(overrides or {})
    chosen = overrides.pop("preset", None) or preset or run_layer.get("preset") or "demo"
    layer = _merge(read_yaml(preset_path(chosen)), run_layer)
    layer = _merge(layer, overrides)
    layer["preset"] = chosen
    return _build(Config, layer, "")


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Rebuild a Config from its saved dict (e.g. the YAML stored with an artifact)."""
    return _build(Config, dict(values), "")
