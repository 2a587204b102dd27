"""Pipeline parameters <-> Config: what the DAG carries as parameters, and the Config each step rebuilds.

A compiled pipeline cannot hold a Python object, and a string blob of settings is unreadable in the
Kubeflow UI. So the resolved Config travels as a preset name plus a dict of the fields that differ
from that preset, and the settings users change per run (source, gate floors, model name, MLflow
URI, model base path, whether an unchanged catalogue is skipped) are parameters of their own. Every
step rebuilds the identical Config from them with `step_config`. No kfp import here: the step
bodies import this module at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core import layouts, storage
from core.config import Config, load_config

# (section, field) pairs carried by dedicated pipeline parameters rather than the overrides dict.
DEDICATED = {
    "source_uri": ("data", "source_uri"),
    "gate_floors": ("evaluate", "floors"),
    "model_name": ("registry", "model_name"),
    "mlflow_tracking_uri": ("registry", "tracking_uri"),
    "model_base_path": ("serving", "model_base_path"),
    # Only the train step reads it: `fashion run --force` leaves ingest and preprocess in the step cache.
    "skip_unchanged": ("train", "skip_unchanged"),
}


# The only `pipeline` settings a step reads at run time (core.retry).
STEP_PIPELINE_FIELDS = ("retries", "retry_backoff_s")


def _diff(value: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `value` that differ from `base`, recursing into sections."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        ref = base.get(key)
        if isinstance(item, Mapping) and isinstance(ref, Mapping) and key not in ("floors", "tolerances"):
            nested = _diff(item, ref)
            if nested:
                out[key] = nested
        elif item != ref:
            out[key] = item
    return out


def config_overrides(config: Config) -> dict[str, Any]:
    """The fields of `config` that differ from its preset, minus those with a dedicated parameter.

    The `pipeline` section (images, resources, pipeline root) is left out: it shapes the compiled
    DAG itself and means nothing to a step at run time, except the retry settings the steps apply.
    """
    plain = config.to_dict()
    base = load_config(preset=config.preset).to_dict()
    for section, field_name in DEDICATED.values():
        plain[section].pop(field_name)
        base[section].pop(field_name)
    for tree in (plain, base):
        tree.pop("preset")
        tree["pipeline"] = {k: tree["pipeline"][k] for k in STEP_PIPELINE_FIELDS}
    return _diff(plain, base)


def pipeline_arguments(config: Config, beam_args: list[str] | None = None) -> dict[str, Any]:
    """Every pipeline parameter's value: preset, overrides, the dedicated ones and the Beam flags."""
    plain = config.to_dict()
    args: dict[str, Any] = {
        "preset": config.preset,
        "overrides": config_overrides(config),
        "beam_args": list(beam_args or []),
    }
    for param, (section, field_name) in DEDICATED.items():
        args[param] = plain[section][field_name]
    return args


def checkpoint_root_of(config: Config) -> str:
    """Where the train step keeps checkpoints across runs: `<pipeline_root>/checkpoints`.

    Empty when the pipeline root is left to the cluster's default, which a step cannot name: the
    checkpoints then stay in the run's own model folder and a re-run trains from scratch.
    """
    root = config.pipeline.pipeline_root
    return storage.join(root, layouts.CHECKPOINTS) if root else ""


def step_config(preset: str, overrides: Mapping[str, Any], **dedicated: Any) -> Config:
    """The Config a step runs with: the preset, then `overrides`, then the dedicated parameters.

    Args:
        preset: the preset name the pipeline was launched with.
        overrides: nested dict of settings that differ from the preset (from `config_overrides`).
        **dedicated: any of the keys of `DEDICATED` (`source_uri=...`, `gate_floors=...`); each
            replaces its config field.

    Returns:
        The validated Config.
    """
    layer: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in overrides.items()}
    for param, value in dedicated.items():
        if param not in DEDICATED:
            raise KeyError(f"{param}: not a pipeline parameter; known: {', '.join(sorted(DEDICATED))}")
        section, field_name = DEDICATED[param]
        layer.setdefault(section, {})[field_name] = dict(value) if isinstance(value, Mapping) else value
    return load_config(preset=preset, overrides=layer)
