"""What a local run did, read back from kfp.local's own files: each task's executor output and the step cache.

kfp.local gives every task it starts a folder `<pipeline root>/<run>/<task>/`, and the step's
executor writes `executor_output.json` there as its last act, with the output artifacts (URI and
metadata) and parameters. So a task folder holding that file is a step that succeeded, a folder
without it a step that failed (on every attempt: the executor makes the folder for the step's
output artifacts before calling it), and no folder a step kfp never started: not reached, skipped
by the gate, or served from the step cache. A step process that dies before kfp's executor is set
up leaves no folder; kfp's own error, the run's `error`, then names the task.

kfp.local keys a cache entry by the task's component, image, command, environment and resolved
arguments; `find_cache_hits` computes that key with kfp's own functions from the compiled spec
and this run's arguments, so it finds exactly the entry kfp reused, and its outputs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import layouts

if TYPE_CHECKING:
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipeline.local.server import ServerHandle

STEP_ORDER = ("ingest-images", "resize-images", "train-model", "evaluate-model", "register-model", "deploy-model")
GATED_STEPS = ("register-model", "deploy-model")
EXECUTOR_OUTPUT = "executor_output.json"


@dataclasses.dataclass
class StepRecord:
    """One step of a local run, as the summary shows it."""

    name: str
    status: str = "not run"
    seconds: float | None = None
    message: str = ""
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    attempts: int = 0
    cache_key: str = ""


@dataclasses.dataclass
class RunResult:
    """What a local pipeline run did: every step, the gate, the registered version, the endpoint."""

    ok: bool
    run_dir: str
    seconds: float
    steps: dict[str, StepRecord]
    error: str = ""
    server: ServerHandle | None = None
    prediction: dict[str, Any] | None = None
    prediction_error: str = ""
    pipeline_root_uri: str = ""
    logs_dir: str = ""

    @property
    def blessed(self) -> bool:
        """True when the evaluate step's gate blessed the model (so register and deploy ran)."""
        evaluate = self.steps.get("evaluate-model")
        return bool(evaluate and evaluate.parameters.get("Output"))

    def artifact(self, step: str, name: str) -> dict[str, Any]:
        """`{"uri": ..., "metadata": {...}}` of one output artifact ({} when the step did not make it)."""
        return self.steps[step].outputs.get(name, {}) if step in self.steps else {}


def read_executor_output(task_dir: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Artifacts (`{name: {uri, metadata}}`) and parameters from one task's executor_output.json ({} when absent)."""
    path = Path(task_dir) / EXECUTOR_OUTPUT
    if not path.is_file():
        return {}, {}
    data = json.loads(path.read_text())
    artifacts = {
        name: {"uri": entry["artifacts"][0].get("uri", ""), "metadata": entry["artifacts"][0].get("metadata", {})}
        for name, entry in (data.get("artifacts") or {}).items()
        if entry.get("artifacts")
    }
    return artifacts, dict(data.get("parameterValues") or {})


def find_cache_hits(
    pipeline_spec: pipeline_spec_pb2.PipelineSpec,
    arguments: Mapping[str, Any],
    cache_root: str | Path,
    run_dir: str | Path | None,
) -> dict[str, StepRecord]:
    """The steps this run took from kfp.local's step cache, with the outputs kfp handed on downstream.

    Follows kfp.local 2.17's `task_executor.execute_single_task`: the same arguments (pipeline
    parameters, then upstream outputs), the same `LocalCache.compute_key`. A step that left a
    folder in `run_dir` ran, so it was no hit; only root-level tasks are looked at, where this
    pipeline's cached steps are.

    Args:
        pipeline_spec: the compiled spec kfp.local ran (the pipeline's `pipeline_spec`).
        arguments: the pipeline arguments the run was called with.
        cache_root: kfp.local's `cache_root`.
        run_dir: this run's folder under the pipeline root (none when no task started).

    Returns:
        `{step: StepRecord(status="cached")}` for every step served from the cache.
    """
    from kfp.local import cache, graph_utils, io, utils
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    root = pipeline_spec.root
    store = io.IOStore()
    for key, value in OrchestratorUtils.join_user_inputs_and_defaults(dict(arguments), root.input_definitions).items():
        store.put_parent_input(key, value)
    local_cache = cache.LocalCache(str(cache_root))
    hits: dict[str, StepRecord] = {}
    tasks = dict(root.dag.tasks)
    for name in reversed(graph_utils.topological_sort_tasks(tasks)):
        task = tasks[name]
        component = pipeline_spec.components[task.component_ref.name]
        ran = run_dir is not None and (Path(run_dir) / name).is_dir()
        if ran or not task.caching_options.enable_cache or component.WhichOneof("implementation") != "executor_label":
            continue
        executor = utils.struct_to_executor_spec(pipeline_spec.deployment_spec["executors"][component.executor_label])
        if executor.WhichOneof("spec") != "container":
            continue
        try:
            task_arguments = OrchestratorUtils.make_task_arguments(task.inputs, store)
        except ValueError:
            # An input comes from a step that ran in this run: its new artifact cannot match an entry.
            continue
        container = executor.container
        key = local_cache.compute_key(
            component_name=task.component_ref.name,
            image=container.image,
            full_command=[*container.command, *container.args],
            arguments=task_arguments,
            env_vars={env.name: env.value for env in container.env},
            custom_cache_key=task.caching_options.cache_key or None,
        )
        outputs = local_cache.get(key)
        if outputs is None:
            continue
        for output_name, value in outputs.items():
            store.put_task_output(name, output_name, value)
        artifacts, parameters = _split_outputs(outputs)
        hits[name] = StepRecord(name, "cached", seconds=0.0, outputs=artifacts, parameters=parameters, cache_key=key)
    return hits


def _split_outputs(outputs: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The outputs kfp handed on, as `{name: {uri, metadata}}` artifacts and plain parameters."""
    from kfp import dsl

    artifacts, parameters = {}, {}
    for name, value in outputs.items():
        if isinstance(value, dsl.Artifact):
            artifacts[name] = {"uri": value.uri, "metadata": dict(value.metadata)}
        else:
            parameters[name] = value
    return artifacts, parameters


def read_step_error(task_dir: Path) -> str:
    """`Type: message` of the error a failed step recorded in one of its output folders, else ''."""
    for path in sorted(task_dir.glob(f"*/{layouts.STEP_ERROR}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return f"{record.get('type', 'Error')}: {record.get('message', '')}"
    return ""


def read_steps(
    run_dir: str | Path | None,
    cached: Mapping[str, StepRecord] | None = None,
    names: Iterable[str] = STEP_ORDER,
) -> dict[str, StepRecord]:
    """Every step's status, outputs and parameters, from its task folder in `run_dir` or its cache hit.

    A closed gate (the evaluate step's `Output` parameter is false) marks the gated steps
    `skipped (gate)`.

    Args:
        run_dir: this run's folder under the pipeline root (none when no task started).
        cached: the steps served from the cache (`find_cache_hits`).
        names: the steps, in pipeline order.

    Returns:
        `{step: StepRecord}` in pipeline order; times, attempts and failure messages are left to the caller.
    """
    cached = cached or {}
    steps: dict[str, StepRecord] = {}
    for name in names:
        task_dir = Path(run_dir) / name if run_dir is not None else None
        if task_dir is not None and (task_dir / EXECUTOR_OUTPUT).is_file():
            outputs, parameters = read_executor_output(task_dir)
            steps[name] = StepRecord(name, "succeeded", outputs=outputs, parameters=parameters)
        elif task_dir is not None and task_dir.is_dir():
            steps[name] = StepRecord(name, "failed", message=read_step_error(task_dir))
        elif name in cached:
            steps[name] = dataclasses.replace(cached[name])
        else:
            steps[name] = StepRecord(name)
    evaluate = steps.get("evaluate-model")
    if evaluate and evaluate.status in ("succeeded", "cached") and evaluate.parameters.get("Output") is False:
        for name in GATED_STEPS:
            if name in steps:
                steps[name].status = "skipped (gate)"
    return steps
