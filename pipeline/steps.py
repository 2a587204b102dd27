"""The pipeline's steps as Kubeflow components: each a thin skin over one function in `components/`.

A step body imports inside itself (it runs in its own process, in the image named by
`config.pipeline`), rebuilds the run's Config from the pipeline parameters, makes one call into
`components.<step>` and records what came out as typed artifacts with metadata. No paths travel
between steps as strings: each step writes into its output artifact's folder and the next one
reads its input artifact's. Each body first calls `start_step`, so the progress of its long
work reaches the local runner's console (or, on a cluster, the step's log) as it goes, and the
process ends as soon as its outputs are written (`pipeline.step_process`).

This module deliberately does not use `from __future__ import annotations`: kfp reads the
artifact annotations of these functions as real types.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from core.config import PipelineConfig


def ingest_images(source_uri: str, preset: str, overrides: dict, manifest: Output[Dataset]):
    """Check and label the catalogue at `source_uri`; the manifest folder is the output Dataset."""
    from components.ingest import step as ingest
    from core.retry import call_with_retries
    from pipeline.metadata import describe_manifest, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step

    start_step()
    with recording_failure(manifest):
        config = step_config(preset, overrides, source_uri=source_uri)
        retry = config.pipeline
        result = call_with_retries(
            lambda: ingest.ingest_catalogue(source_uri, manifest.path, config),
            retry.retries,
            retry.retry_backoff_s,
            "ingest",
        )
        manifest.metadata.update(describe_manifest(result))


def resize_images(preset: str, overrides: dict, beam_args: list, manifest: Input[Dataset], examples: Output[Dataset]):
    """Resize every photo of the manifest into TFRecord shards and statistics (Apache Beam).

    `beam_args` empty runs Beam in this step's container on its cores; Dataflow flags
    (`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`) run the same
    pipeline on Dataflow workers.
    """
    from components.preprocess import step as preprocess
    from core.retry import call_with_retries
    from pipeline.metadata import describe_examples, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step

    start_step()
    with recording_failure(examples):
        config = step_config(preset, overrides)
        retry = config.pipeline
        result = call_with_retries(
            lambda: preprocess.resize_images(manifest.path, examples.path, config, beam_args=list(beam_args) or None),
            retry.retries,
            retry.retry_backoff_s,
            "preprocess",
        )
        examples.metadata.update(describe_examples(result))


def train_model(
    preset: str,
    overrides: dict,
    model_name: str,
    examples: Input[Dataset],
    manifest: Input[Dataset],
    model: Output[Model],
    checkpoint_root: str = "",
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
    skip_unchanged: bool = True,
):
    """Train the unified network on the shards; the model folder is the output Model.

    Checkpoints go under `checkpoint_root` (the pipeline root's `checkpoints/`) in a folder named by
    the examples and the settings, not into this run's output: a re-run of a killed run resumes there.
    The pipeline run's MLflow run opens here and takes every epoch live; the model folder names it.
    A catalogue (the manifest's ids and labels) and settings the champion was trained on are not
    trained again (unless `skip_unchanged` is false): the folder then holds `unchanged.json`, and the
    artifact's `unchanged` says why.
    """
    from components.train import step as trainer
    from pipeline.metadata import describe_model, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step

    start_step()
    with recording_failure(model):
        config = step_config(
            preset,
            overrides,
            mlflow_tracking_uri=mlflow_tracking_uri,
            model_name=model_name,
            skip_unchanged=skip_unchanged,
        )
        result = trainer.train_model(
            examples.path,
            model.path,
            config,
            checkpoint_root=checkpoint_root,
            pipeline_run_id=pipeline_run_id,
            manifest_uri=manifest.path,
        )
        model.metadata.update(describe_model(result, config))
        model.metadata["checkpoint_uri"] = result.checkpoint_uri
        model.metadata["mlflow_run_id"] = result.mlflow_run_id
        model.metadata["unchanged"] = result.unchanged
        model.metadata["catalogue_changes"] = result.changes
        model.metadata["warm_start"] = result.warm_start.get("description", "") or "scratch"


def evaluate_model(
    preset: str,
    overrides: dict,
    gate_floors: dict,
    model_name: str,
    mlflow_tracking_uri: str,
    model: Input[Model],
    examples: Input[Dataset],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
) -> bool:
    """Score the model and the serving champion on the same test photos; decide the gate against the floors and it.

    Returns the gate's `blessed` as the step's single output: kfp.local (2.17) resolves a `dsl.If`
    condition only on a task's single `Output`, not on a named output. The reason, the champion's
    gated metrics and the catalogue drift are on the `evaluation` artifact's metadata.
    """
    from components import evaluate
    from pipeline.metadata import record_evaluation, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step

    start_step()
    with recording_failure(evaluation):
        config = step_config(
            preset, overrides, gate_floors=gate_floors, model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri
        )
        result = evaluate.evaluate_against_champion(model.path, examples.path, evaluation.path, config)
        return record_evaluation(result, evaluation, metrics, confusion, report, summary)


def register_model(
    preset: str,
    overrides: dict,
    model_name: str,
    mlflow_tracking_uri: str,
    pipeline_run_id: str,
    manifest: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    saved_model: Output[Model],
):
    """Export the SavedModel, track the run in MLflow and register the version as the `challenger`."""
    from components import register
    from core.retry import call_with_retries
    from pipeline.metadata import describe_registration, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step

    start_step()
    with recording_failure(saved_model):
        config = step_config(preset, overrides, model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri)
        retry = config.pipeline
        # Registration is idempotent per pipeline run id, so a retry never makes a second run or version.
        result = call_with_retries(
            lambda: register.register_model(
                model.path, evaluation.path, saved_model.path, config, pipeline_run_id, manifest_uri=manifest.path
            ),
            retry.retries,
            retry.retry_backoff_s,
            "register",
        )
        saved_model.metadata.update(describe_registration(result))


def deploy_model(
    preset: str,
    overrides: dict,
    model_name: str,
    mlflow_tracking_uri: str,
    model_base_path: str,
    saved_model: Input[Model],
    evaluation: Input[Artifact],
    deployment: Output[Artifact],
):
    """Publish the registered challenger under the model base path, verify the live endpoint, then promote it."""
    import os

    from components.deploy import step as deploy
    from components.register import Registry
    from core import layouts
    from core.retry import call_with_retries
    from pipeline.metadata import describe_deployment, recording_failure
    from pipeline.params import step_config
    from pipeline.step_process import start_step
    from serving.model_config import model_config_uri

    start_step()
    with recording_failure(deployment):
        config = step_config(
            preset,
            overrides,
            model_name=model_name,
            mlflow_tracking_uri=mlflow_tracking_uri,
            model_base_path=model_base_path,
        )
        serving = config.serving
        # deploy_model takes the registry's `challenger`: the version `saved_model` records, registered upstream.
        # A failed deploy removes what it published, so it can run again from the start.
        result = call_with_retries(
            lambda: deploy.deploy_model(
                Registry.from_config(config),
                config,
                f"{serving.host}:{serving.grpc_port}",
                model_config_uri(serving.model_base_path),
                predictions_path=os.path.join(evaluation.path, layouts.PREDICTIONS),
                min_agreement=serving.smoke_min_agreement,
            ),
            config.pipeline.retries,
            config.pipeline.retry_backoff_s,
            "deploy",
        )
        deployment.metadata.update(describe_deployment(result, config, deployment.path))


STEPS = (ingest_images, resize_images, train_model, evaluate_model, register_model, deploy_model)


def build_components(pipeline: PipelineConfig) -> dict[str, "dsl.base_component.BaseComponent"]:
    """Every step as a kfp component in the configured image, keyed by step name.

    The images already hold this project and its pinned dependencies (infra/docker), so nothing
    is pip-installed when a step starts; training runs in the GPU image when the config asks for
    accelerators.
    """
    built = {}
    for func in STEPS:
        image = pipeline.gpu_image if func is train_model and pipeline.accelerator_count else pipeline.base_image
        built[func.__name__] = dsl.component(func, base_image=image, install_kfp_package=False)
    return built
