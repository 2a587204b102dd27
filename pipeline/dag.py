"""The one factory that builds the Kubeflow pipeline; `fashion run`, `compile`, `submit` and `schedule` all call it.

ingest -> preprocess (Beam) -> train -> evaluate -> if blessed: register (MLflow) -> deploy
(publish, verify the live endpoint, then promote). Train skips a catalogue and settings the champion
was already trained on (evaluate then blesses nothing); evaluate scores the champion on the same
test photos as the new model. Resources, images, caching and retries come
from `config.pipeline`; everything a user changes per run is a pipeline parameter.
No `from __future__ import annotations` here: kfp reads the pipeline's parameter types.
"""

from kfp import dsl

from core.config import Config
from pipeline.params import checkpoint_root_of, pipeline_arguments
from pipeline.steps import build_components

# Steps whose outputs are a pure function of their inputs: a re-run with the same arguments reuses them.
CACHED_STEPS = ("ingest-images", "resize-images")
# Steps that read or write object storage or the registry retry transient failures themselves
# (core.retry: `config.pipeline.retries` times, after `retry_backoff_s`, doubling). kfp's task
# retry is not used: it would repeat a user error or a corrupt input just the same.
RETRIED_STEPS = ("ingest-images", "resize-images", "register-model", "deploy-model")

DISPLAY_NAMES = {
    "ingest-images": "Ingest catalogue",
    "resize-images": "Preprocess (Beam)",
    "train-model": "Train unified model",
    "evaluate-model": "Evaluate and gate",
    "register-model": "Register (MLflow)",
    "deploy-model": "Deploy (TF Serving)",
}


def build_pipeline(config: Config, beam_args: list[str] | None = None, checkpoint_root: str | None = None):
    """Build the `@dsl.pipeline` for `config`: its defaults are the config's values.

    Args:
        config: the resolved configuration; `pipeline.*` sets images and resources at build
            time, the rest becomes the default value of the pipeline parameters.
        beam_args: default Beam flags of the preprocess step (none: Beam runs inside the step).
        checkpoint_root: where training keeps its checkpoints across runs (default: the pipeline
            root's `checkpoints/`; a local run passes its own pipeline root's).

    Returns:
        The pipeline (a kfp GraphComponent): call it under `kfp.local`, or compile it.
    """
    steps = build_components(config.pipeline)
    defaults = pipeline_arguments(config, beam_args)
    checkpoints = checkpoint_root_of(config) if checkpoint_root is None else checkpoint_root
    resources = config.pipeline

    @dsl.pipeline(
        name=config.pipeline.name,
        description="Fashion product categorisation and attribute extraction (Ferreira et al. 2018): "
        "ingest, Beam preprocessing, training, evaluation gate, MLflow registration, TF Serving deployment.",
        pipeline_root=config.pipeline.pipeline_root or None,
    )
    def fashion_pipeline(
        source_uri: str = defaults["source_uri"],
        preset: str = defaults["preset"],
        overrides: dict = defaults["overrides"],
        gate_floors: dict = defaults["gate_floors"],
        model_name: str = defaults["model_name"],
        mlflow_tracking_uri: str = defaults["mlflow_tracking_uri"],
        model_base_path: str = defaults["model_base_path"],
        beam_args: list = defaults["beam_args"],
        skip_unchanged: bool = defaults["skip_unchanged"],
    ):
        ingest = steps["ingest_images"](source_uri=source_uri, preset=preset, overrides=overrides)
        preprocess = steps["resize_images"](
            preset=preset, overrides=overrides, beam_args=beam_args, manifest=ingest.outputs["manifest"]
        )
        preprocess.set_cpu_request(resources.preprocess_cpu)

        # A build-time constant: KFP's driver resolves no pipeline-root placeholder in a task's parameters.
        train = steps["train_model"](
            preset=preset,
            overrides=overrides,
            checkpoint_root=checkpoints,
            examples=preprocess.outputs["examples"],
            mlflow_tracking_uri=mlflow_tracking_uri,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            # The champion's training catalogue is compared with this one's ids and labels before training.
            manifest=ingest.outputs["manifest"],
            model_name=model_name,
            skip_unchanged=skip_unchanged,
        )
        train.set_caching_options(enable_caching=False)
        train.set_cpu_request(resources.train_cpu).set_memory_request(resources.train_memory)
        train.set_memory_limit(resources.train_memory)
        if resources.accelerator_count:
            train.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_count)

        evaluate = steps["evaluate_model"](
            preset=preset,
            overrides=overrides,
            gate_floors=gate_floors,
            model_name=model_name,
            mlflow_tracking_uri=mlflow_tracking_uri,
            model=train.outputs["model"],
            examples=preprocess.outputs["examples"],
        )
        # The gate scores the live champion on the same test photos, and the champion changes between runs.
        evaluate.set_caching_options(enable_caching=False)

        with dsl.If(evaluate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a kfp condition)
            register = steps["register_model"](
                preset=preset,
                overrides=overrides,
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                manifest=ingest.outputs["manifest"],
                model=train.outputs["model"],
                evaluation=evaluate.outputs["evaluation"],
            )
            register.set_caching_options(enable_caching=False)
            deploy = steps["deploy_model"](
                preset=preset,
                overrides=overrides,
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                model_base_path=model_base_path,
                saved_model=register.outputs["saved_model"],
                evaluation=evaluate.outputs["evaluation"],
            )
            deploy.set_caching_options(enable_caching=False)

        for task in (ingest, preprocess, train, evaluate, register, deploy):
            task.set_display_name(DISPLAY_NAMES[task.name])
        for task in (ingest, preprocess):
            task.set_caching_options(enable_caching=True)

    return fashion_pipeline
