"""Kubeflow Pipelines on a cluster: compile the DAG, submit runs, and schedule recurring retraining (kfp.Client)."""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import StepError
from pipeline.params import pipeline_arguments

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "fashion-classifier"
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?LW#-]+$")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One recurring run as `fashion schedule --list` shows it."""

    recurring_run_id: str
    name: str
    cron: str
    max_concurrency: int
    no_catchup: bool
    enabled: bool
    experiment_id: str


def compile_pipeline(config: Config, out_path: str | Path, beam_args: list[str] | None = None) -> Path:
    """Compile the pipeline for `config` into a Kubeflow Pipelines v2 YAML package.

    Args:
        config: the resolved configuration: images and resources are fixed in the YAML, the rest
            become the pipeline parameters' defaults.
        out_path: where to write the YAML (folders are created).
        beam_args: default Beam flags of the preprocess step, e.g. to run it on Dataflow.

    Returns:
        The written path.
    """
    from kfp import compiler

    from pipeline.dag import build_pipeline

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build_pipeline(config, beam_args), package_path=str(out))
    return out


def names_a_registry(image: str) -> bool:
    """Whether an image reference says where to pull it from: a registry host, or a Docker Hub namespace.

    `europe-docker.pkg.dev/p/r/fashion-classifier:v1`, `localhost:5000/x` and `myorg/x` do; a bare
    `fashion-classifier:latest` does not: it means Docker Hub's official `library/` images, which
    nobody but Docker publishes, so a cluster cannot pull an image built and tagged here.
    """
    return "/" in image.split("@", 1)[0]


def unpullable_images(config: Config) -> dict[str, str]:
    """The images the compiled pipeline would use that name no registry, keyed by their setting.

    The GPU image counts only when training asks for accelerators: otherwise no step runs in it.
    """
    pipeline = config.pipeline
    used = {"pipeline.base_image": pipeline.base_image}
    if pipeline.accelerator_count:
        used["pipeline.gpu_image"] = pipeline.gpu_image
    return {setting: image for setting, image in used.items() if not names_a_registry(image)}


def image_warning(config: Config) -> str | None:
    """One line saying which images no cluster can pull and how to name pushed ones, or None when all can."""
    missing = unpullable_images(config)
    if not missing:
        return None
    named = ", ".join(f"{image} ({setting})" for setting, image in missing.items())
    # A bare reference has no host (hence no port colon): the repository is what precedes the tag or digest.
    fix = " ".join(f"--set {setting}=reg/{re.split('[:@]', image)[0]}:v1" for setting, image in missing.items())
    it = "it" if len(missing) == 1 else "them"
    return (
        f"warning: {named} {'names' if len(missing) == 1 else 'name'} no registry, so no cluster can pull {it}; "
        f"push {it} to a registry and compile with `make compile IMAGE_REGISTRY=reg/ IMAGE_TAG=v1` or `{fix}`"
    )


def kfp_cron(expression: str) -> str:
    """A cron expression in the 6-field form (seconds first) the KFP scheduler expects.

    Standard 5-field expressions (`0 3 * * *`) get a leading `0` seconds field.

    Raises:
        StepError: the expression does not have 5 or 6 fields.
    """
    fields = expression.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise StepError(
            f"cron {expression!r}: expected 5 fields (minute hour day month weekday, e.g. '0 3 * * *') "
            "or 6 with seconds first (e.g. '0 0 3 * * *')"
        )
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def connect(host: str, namespace: str | None = None, token: str | None = None):
    """A kfp.Client for the Kubeflow Pipelines API at `host` (e.g. http://localhost:8080 after a port-forward).

    Raises:
        StepError: the API does not answer.
    """
    import warnings

    import kfp
    import kfp_server_api
    import urllib3

    try:
        with warnings.catch_warnings():
            # The client warns on every construction that it needs KFP >= 2.0.0-beta.2; the README says so.
            warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline v2", category=FutureWarning)
            return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, TimeoutError, OSError) as err:
        raise StepError(f"cannot reach the Kubeflow Pipelines API at {host}: {err}") from err


@contextmanager
def _package(config: Config, package: str | Path | None, beam_args: list[str] | None) -> Iterator[Path]:
    """The given compiled package, or a freshly compiled one in a temporary folder."""
    if package:
        path = Path(package)
        if not path.is_file():
            raise StepError(f"{path}: no such pipeline package (make one with `fashion compile --out {path}`)")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="fashion-pipeline-") as tmp:
        yield compile_pipeline(config, Path(tmp) / "pipeline.yaml", beam_args)


@contextmanager
def _api_errors(what: str, host: str) -> Iterator[None]:
    """Turn the API client's exceptions into a StepError naming the call and the host."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as err:
        raise StepError(f"{what} failed at {host}: HTTP {err.status} {err.reason}: {err.body}") from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StepError(f"{what} failed: cannot reach {host}: {err}") from err


def submit_run(
    config: Config,
    host: str,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    package: str | Path | None = None,
    namespace: str | None = None,
    token: str | None = None,
    service_account: str | None = None,
    beam_args: list[str] | None = None,
) -> dict[str, Any]:
    """Create one pipeline run in `experiment` (created when missing) with the config's parameters.

    Returns:
        `run_id`, `experiment_id`, `name` and the run's `url` in the KFP UI.
    """
    client = connect(host, namespace, token)
    with _package(config, package, beam_args) as path, _api_errors("creating the run", host):
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(path),
            arguments=pipeline_arguments(config, beam_args),
            run_name=run_name or f"{config.pipeline.name} {config.preset}",
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=config.pipeline.pipeline_root or None,
            service_account=service_account,
        )
    run = result.run_info
    return {
        "run_id": result.run_id,
        "experiment_id": run.experiment_id,
        "name": run.display_name,
        "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}",
    }


def schedule_run(
    config: Config,
    host: str,
    cron: str,
    experiment: str = DEFAULT_EXPERIMENT,
    name: str | None = None,
    package: str | Path | None = None,
    namespace: str | None = None,
    token: str | None = None,
    service_account: str | None = None,
    beam_args: list[str] | None = None,
) -> Schedule:
    """Create a recurring retraining run: one at a time (max concurrency 1), no catch-up of missed slots.

    Returns:
        The created schedule.
    """
    expression = kfp_cron(cron)
    client = connect(host, namespace, token)
    with _package(config, package, beam_args) as path, _api_errors("creating the recurring run", host):
        created = client.create_recurring_run(
            experiment_id=client.create_experiment(name=experiment, namespace=namespace).experiment_id,
            job_name=name or f"{config.pipeline.name} retraining",
            description=f"Retrain {config.pipeline.name} ({config.preset}) on cron '{expression}'",
            cron_expression=expression,
            max_concurrency=1,
            no_catchup=True,
            params=pipeline_arguments(config, beam_args),
            pipeline_package_path=str(path),
            enabled=True,
            pipeline_root=config.pipeline.pipeline_root or None,
            service_account=service_account,
        )
    return _schedule(created)


def _schedule(item) -> Schedule:
    trigger = item.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
    return Schedule(
        recurring_run_id=item.recurring_run_id or "",
        name=item.display_name or "",
        cron=cron or "",
        max_concurrency=int(item.max_concurrency or 0),
        no_catchup=bool(item.no_catchup),
        enabled=str(item.mode or "").upper() == "ENABLE",
        experiment_id=item.experiment_id or "",
    )


def list_schedules(
    host: str, experiment: str | None = DEFAULT_EXPERIMENT, namespace: str | None = None, token: str | None = None
) -> list[Schedule]:
    """Every recurring run of `experiment` (of all experiments when None)."""
    client = connect(host, namespace, token)
    out: list[Schedule] = []
    with _api_errors("listing recurring runs", host):
        experiment_id = None
        if experiment:
            try:
                experiment_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id
            except ValueError:
                return []
        token_page = ""
        while True:
            page = client.list_recurring_runs(
                page_token=token_page, page_size=100, experiment_id=experiment_id, namespace=namespace
            )
            out += [_schedule(item) for item in page.recurring_runs or []]
            token_page = page.next_page_token or ""
            if not token_page:
                return out


def delete_schedule(
    host: str,
    recurring_run: str,
    experiment: str | None = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
    token: str | None = None,
) -> Schedule:
    """Delete one recurring run, given its id or its name.

    Raises:
        StepError: no recurring run, or several, match.
    """
    matches = [
        s for s in list_schedules(host, experiment, namespace, token) if recurring_run in (s.recurring_run_id, s.name)
    ]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(s.recurring_run_id for s in matches)
        raise StepError(
            f"recurring run {recurring_run!r}: expected exactly one match by id or name, found {found}; "
            "see `fashion schedule --list`"
        )
    client = connect(host, namespace, token)
    with _api_errors("deleting the recurring run", host):
        client.delete_recurring_run(matches[0].recurring_run_id)
    return matches[0]
