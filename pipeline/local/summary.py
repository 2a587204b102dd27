"""The end-of-run report of `fashion run`: each step with status, time and what it made; gate, version, endpoint.

Everything comes from the `RunResult`: the artifacts' metadata each step recorded, the gate's
decision, the server handle, the prediction and where the logs are.
"""

from __future__ import annotations

from typing import Any

from pipeline.local.logs import RUN_LOG
from pipeline.local.results import STEP_ORDER, RunResult, StepRecord

HEADLINE_METRICS = (
    "category_accuracy",
    "subcategory_accuracy",
    "category_of1",
    "subcategory_of1",
    "attributes_of1",
    "attributes_map",
    "hierarchy_consistency",
)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def step_note(step: StepRecord) -> str:
    """One line on what the step produced, from its artifacts' metadata (its error when it failed)."""
    if step.status == "failed":
        return step.message
    meta = {name: out.get("metadata", {}) for name, out in step.outputs.items()}
    if step.name == "ingest-images" and "manifest" in meta:
        m = meta["manifest"]
        splits = ", ".join(f"{k} {_number(v)}" for k, v in sorted((m.get("splits") or {}).items()))
        return f"{_number(m.get('usable', '?'))} usable of {_number(m.get('rows', '?'))} rows ({splits})"
    if step.name == "resize-images" and "examples" in meta:
        m = meta["examples"]
        splits = ", ".join(f"{k} {_number(v)}" for k, v in sorted((m.get("splits") or {}).items()))
        size = f"{_number(m.get('image_height', '?'))}x{_number(m.get('image_width', '?'))}"
        return f"{size} {m.get('image_format', '')} shards ({splits}), {_number(m.get('rejected', 0))} rejected"
    if step.name == "train-model" and "model" in meta:
        m = meta["model"]
        if m.get("unchanged"):
            return "not retrained: catalogue and settings unchanged since the champion"
        epochs, best = _number(m.get("epochs", "?")), _number(m.get("best_epoch", "?"))
        start = m.get("warm_start") or "scratch"
        return f"{m.get('backbone', '?')}, {epochs} epochs, best epoch {best}, from {start}"
    if step.name == "evaluate-model" and step.status == "succeeded":
        evaluated = meta.get("evaluation", {})
        if evaluated.get("unchanged"):
            return "nothing to evaluate"
        against = f" against {evaluated['champion']} on the same photos" if evaluated.get("champion") else ""
        return ("blessed" if step.parameters.get("Output") else "not blessed") + against
    if step.name == "register-model" and "saved_model" in meta:
        m = meta["saved_model"]
        return f"{m.get('model_name', '')} version {_number(m.get('version', '?'))}"
    if step.name == "deploy-model" and "deployment" in meta:
        m = meta["deployment"]
        return f"serving version {_number(m.get('serving_version', '?'))} at {m.get('endpoint', '?')}, verified"
    return ""


def format_summary(result: RunResult) -> str:
    """The end-of-run report: steps with status and time, metrics, gate, version, endpoint, prediction."""
    state = "succeeded" if result.ok else "FAILED"
    lines = [f"Pipeline run {state} in {result.seconds:.0f}s  ({result.run_dir})", ""]
    lines.append(f"  {'step':<16} {'status':<16} {'time':>8}  notes")
    for name in STEP_ORDER:
        step = result.steps.get(name, StepRecord(name))
        took = f"{step.seconds:.1f}s" if step.seconds is not None else "-"
        lines.append(f"  {name:<16} {step.status:<16} {took:>8}  {step_note(step)}")
    metrics = result.artifact("evaluate-model", "metrics").get("metadata", {})
    if metrics:
        shown = [k for k in HEADLINE_METRICS if k in metrics] or sorted(metrics)[:6]
        lines += ["", "Metrics (test split): " + "  ".join(f"{k} {_number(metrics[k])}" for k in shown)]
    trained = result.artifact("train-model", "model").get("metadata", {})
    evaluate = result.steps.get("evaluate-model")
    if trained.get("unchanged"):
        lines.append(f"Not retrained: {trained['unchanged']}; --force retrains anyway")
    elif trained.get("catalogue_changes"):
        lines.append(f"Catalogue: {trained['catalogue_changes']}")
    if evaluate and evaluate.parameters and not trained.get("unchanged"):
        verdict = "PASSED" if evaluate.parameters.get("Output") else "NOT PASSED"
        reason = result.artifact("evaluate-model", "evaluation").get("metadata", {}).get("reason", "")
        lines.append(f"Gate: {verdict}: {reason}")
    registered = result.artifact("register-model", "saved_model").get("metadata", {})
    if registered:
        lines.append(
            f"Registered: {registered.get('model_name', '?')} version {_number(registered.get('version', '?'))}"
            f" (MLflow run {registered.get('run_id', '?')})"
        )
    deployed = result.artifact("deploy-model", "deployment").get("metadata", {})
    if deployed:
        lines.append(
            f"Deployed: registry version {_number(deployed.get('registry_version', '?'))} is serving version "
            f"{_number(deployed.get('serving_version', '?'))} (label stable, alias champion)"
        )
    if result.pipeline_root_uri:
        lines.append(f"Pipeline root: {result.pipeline_root_uri}")
    if result.server is not None:
        s = result.server
        how = "reused" if s.reused else "started"
        lines.append(
            f"Endpoint: gRPC {s.grpc_address}, REST {s.rest_address}/v1/models/{s.model_name} "
            f"(server pid {s.pid}, {how}; log {s.log_path})"
        )
    if result.prediction:
        p = result.prediction
        groups = ", ".join(f"{g} {v['value']} ({v['score']:.2f})" for g, v in p.get("attribute_groups", {}).items())
        lines.append(
            f"Prediction over gRPC (stable = version {p.get('model_version', '?')}) for {p['photo']}, a photo outside "
            f"the training data: category {p['category']} ({p['category_score']:.2f}), sub-category "
            f"{p['subcategory']} ({p['subcategory_score']:.2f}); {groups}"
        )
    if result.prediction_error:
        lines.append(f"No prediction: nothing is serving yet ({result.prediction_error}).")
    if result.logs_dir:
        lines.append(f"Logs: {result.logs_dir}/ (one per step that ran, {RUN_LOG}.log for the rest)")
    if not result.ok:
        lines += ["", f"Error: {result.error}", "The serving champion was left untouched."]
    return "\n".join(lines)
