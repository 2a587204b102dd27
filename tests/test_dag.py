"""The compiled pipeline: tasks, edges, the gate, resources, caching, retries and parameters, read from the YAML."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from core.config import load_config
from pipeline.cli import main
from pipeline.params import config_overrides, pipeline_arguments, step_config

STEPS = ["ingest-images", "resize-images", "train-model", "evaluate-model", "register-model", "deploy-model"]


@pytest.fixture(scope="module")
def paper_spec(tmp_path_factory):
    """The `paper` preset (one GPU) compiled through the CLI, with two overrides."""
    out = tmp_path_factory.mktemp("compile") / "pipeline.yaml"
    code = main(
        [
            "compile",
            "--preset",
            "paper",
            "--out",
            str(out),
            "--source",
            "gs://catalogue/fashion",
            "--set",
            "train.epochs=7",
            "--set",
            "pipeline.accelerator_type=nvidia-tesla-t4",
        ]
    )
    assert code == 0
    return yaml.safe_load(out.read_text())


def _tasks(spec):
    """Every task of the pipeline with the DAG it sits in (root or the gate's sub-DAG)."""
    tasks = {name: ("root", t) for name, t in spec["root"]["dag"]["tasks"].items()}
    for comp in spec["components"].values():
        for name, t in comp.get("dag", {}).get("tasks", {}).items():
            tasks[name] = ("gate", t)
    return tasks


def _executor(spec, task):
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_every_step_is_a_task_with_a_display_name(paper_spec):
    tasks = _tasks(paper_spec)
    assert set(STEPS) <= set(tasks)
    names = {name: t["taskInfo"]["name"] for name, (_, t) in tasks.items() if name in STEPS}
    assert names["resize-images"] == "Preprocess (Beam)"
    assert names["deploy-model"] == "Deploy (TF Serving)"
    assert paper_spec["pipelineInfo"]["name"] == "fashion-classifier"


def test_edges_follow_the_data(paper_spec):
    tasks = _tasks(paper_spec)
    deps = {name: set(t.get("dependentTasks", [])) for name, (_, t) in tasks.items()}
    assert deps["resize-images"] == {"ingest-images"}
    assert deps["train-model"] == {"resize-images", "ingest-images"}  # the manifest: the catalogue vs the champion's
    assert deps["evaluate-model"] == {"train-model", "resize-images"}
    assert deps["register-model"] == set()  # inside the gate's sub-DAG, fed through its inputs
    assert deps["deploy-model"] == {"register-model"}
    _, train = tasks["train-model"]
    assert train["inputs"]["artifacts"]["examples"]["taskOutputArtifact"] == {
        "outputArtifactKey": "examples",
        "producerTask": "resize-images",
    }


def test_register_and_deploy_run_only_when_the_gate_blesses(paper_spec):
    tasks = _tasks(paper_spec)
    assert tasks["register-model"][0] == "gate" and tasks["deploy-model"][0] == "gate"
    conditions = [
        t for name, t in paper_spec["root"]["dag"]["tasks"].items() if t.get("triggerPolicy", {}).get("condition")
    ]
    assert len(conditions) == 1
    gate = conditions[0]
    assert "evaluate-model" in gate["dependentTasks"]
    condition = gate["triggerPolicy"]["condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--evaluate-model-Output'] == true"
    assert gate["inputs"]["parameters"]["pipelinechannel--evaluate-model-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "evaluate-model",
    }


def test_typed_artifacts_on_every_boundary(paper_spec):
    comps = paper_spec["components"]

    def outputs(comp):
        return {k: v["artifactType"]["schemaTitle"] for k, v in comps[comp]["outputDefinitions"]["artifacts"].items()}

    assert outputs("comp-ingest-images") == {"manifest": "system.Dataset"}
    assert outputs("comp-resize-images") == {"examples": "system.Dataset"}
    assert outputs("comp-train-model") == {"model": "system.Model"}
    assert outputs("comp-evaluate-model") == {
        "evaluation": "system.Artifact",
        "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics",
        "report": "system.HTML",
        "summary": "system.Markdown",
    }
    assert comps["comp-evaluate-model"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "BOOLEAN"
    assert outputs("comp-register-model") == {"saved_model": "system.Model"}


def test_training_requests_the_configured_gpu_and_image(paper_spec):
    tasks = _tasks(paper_spec)
    train = _executor(paper_spec, tasks["train-model"][1])
    resources = train["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia-tesla-t4"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuRequest"] == "8"
    assert resources["resourceMemoryRequest"] == "32G"
    assert train["image"] == "fashion-classifier-gpu:latest"
    preprocess = _executor(paper_spec, tasks["resize-images"][1])
    assert preprocess["resources"]["resourceCpuRequest"] == "2"
    assert "accelerator" not in preprocess["resources"]
    for step in ("ingest-images", "evaluate-model", "register-model", "deploy-model"):
        container = _executor(paper_spec, tasks[step][1])
        assert container["image"] == "fashion-classifier:latest"
        # The image holds the project: nothing is pip-installed when a step starts.
        assert "pip install" not in " ".join(container["command"])


def test_cpu_presets_request_no_accelerator(tmp_path):
    out = tmp_path / "demo.yaml"
    assert main(["compile", "--preset", "demo", "--out", str(out), "--set", "pipeline.base_image=reg/fashion:1.2"]) == 0
    spec = yaml.safe_load(out.read_text())
    tasks = _tasks(spec)
    train = _executor(spec, tasks["train-model"][1])
    assert "accelerator" not in train.get("resources", {})
    assert train["image"] == "reg/fashion:1.2"


def test_caching_on_for_data_steps_off_for_the_rest(paper_spec):
    tasks = _tasks(paper_spec)
    cached = {name for name, (_, t) in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"ingest-images", "resize-images"}


def test_no_task_is_retried_by_kfp(paper_spec):
    # kfp's task retry would repeat a user error or a corrupt input; steps retry transient errors themselves.
    tasks = _tasks(paper_spec)
    assert not [name for name, (_, t) in tasks.items() if "retryPolicy" in t]


def test_retries_come_from_the_config_and_presets_share_tasks_and_edges(tmp_path, paper_spec):
    out = tmp_path / "ci.yaml"
    assert main(["compile", "--preset", "ci", "--out", str(out), "--set", "pipeline.retries=4"]) == 0
    spec = yaml.safe_load(out.read_text())
    tasks = _tasks(spec)
    # The step reads its retry settings from the overrides it is given as a pipeline parameter.
    overrides = spec["root"]["inputDefinitions"]["parameters"]["overrides"]["defaultValue"]
    assert overrides["pipeline"]["retries"] == 4
    edges = {name: (dag, sorted(t.get("dependentTasks", []))) for name, (dag, t) in tasks.items()}
    paper = {name: (dag, sorted(t.get("dependentTasks", []))) for name, (dag, t) in _tasks(paper_spec).items()}
    assert edges == paper


def test_parameters_carry_the_resolved_config(paper_spec):
    params = paper_spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "source_uri",
        "preset",
        "overrides",
        "gate_floors",
        "model_name",
        "mlflow_tracking_uri",
        "model_base_path",
        "beam_args",
        "skip_unchanged",
    }
    assert params["beam_args"]["parameterType"] == "LIST"
    assert params["source_uri"]["defaultValue"] == "gs://catalogue/fashion"
    assert params["preset"]["defaultValue"] == "paper"
    assert params["gate_floors"]["defaultValue"] == {"category_accuracy": 0.96, "subcategory_accuracy": 0.86}
    # pipeline.* shapes the compiled DAG (images, resources), so it is not a run parameter.
    assert params["overrides"]["defaultValue"] == {"train": {"epochs": 7}}
    assert params["overrides"]["parameterType"] == "STRUCT"


@pytest.mark.parametrize("preset", ["ci", "demo", "paper"])
def test_steps_rebuild_the_exact_config(preset):
    config = load_config(
        preset,
        overrides={
            "data": {"source_uri": "gs://b/catalogue"},
            "train": {"epochs": 3, "learning_rate": 0.01},
            "evaluate": {"floors": {"category_accuracy": 0.7}},
            "registry": {"tracking_uri": "http://mlflow:5000"},
            "labels": {"attributes": ["season"]},
        },
    )
    args = pipeline_arguments(config)
    rebuilt = step_config(
        args["preset"],
        args["overrides"],
        **{k: v for k, v in args.items() if k not in ("preset", "overrides", "beam_args")},
    )
    assert rebuilt == dataclasses.replace(config, pipeline=rebuilt.pipeline)
    assert "data" not in config_overrides(config)
    assert config_overrides(load_config(preset)) == {}
