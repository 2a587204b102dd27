"""Beam pipeline options of the preprocess step: local multi-process defaults, Dataflow checks.

The same pipeline runs on the DirectRunner here and on Dataflow (or Flink/Spark) at scale; only
these options differ. Flags the user passes always win over the defaults added here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from core.config import Config
from core.errors import StepError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATAFLOW_REQUIRED = ("project", "region", "temp_location")
# Since Beam 2.68 `DirectRunner` first tries the Prism runner, which downloads a binary from
# GitHub at run time and ignores --direct_num_workers; FnApiRunner is the DirectRunner's own
# batch engine, the one that honours them (apache/beam#34612 recommends pinning it).
LOCAL_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = ("fnapi", "direct", "switchingdirect", "bundlebaseddirect")


def runner_name(beam_args: Sequence[str] | None) -> str:
    """The runner the flags select, normalised: `fnapi`, `direct`, `dataflow`, `flink`, ... (default `fnapi`)."""
    runner = PipelineOptions(list(beam_args or [])).view_as(StandardOptions).runner or LOCAL_RUNNER
    name = runner.rsplit(".", 1)[-1].lower()
    return name[: -len("runner")] if name.endswith("runner") and name != "runner" else name


def is_local(beam_args: Sequence[str] | None) -> bool:
    """Whether the flags select a runner that executes on this machine."""
    return runner_name(beam_args) in LOCAL_RUNNERS


def default_setup_file(root: Path = PROJECT_ROOT) -> Path:
    """The file Beam builds this project's package from for remote workers.

    `setup.py` when the project has one: Beam runs `python setup.py sdist` for it with nothing
    but setuptools. A `pyproject.toml` alone needs the `build` package on the launching machine.
    """
    setup_py = root / "setup.py"
    return setup_py if setup_py.is_file() else root / "pyproject.toml"


def _given(args: Sequence[str], name: str) -> bool:
    flag = f"--{name}"
    return any(a == flag or a.startswith(flag + "=") for a in args)


def pipeline_options(beam_args: Sequence[str] | None, config: Config) -> PipelineOptions:
    """Assemble the PipelineOptions of one preprocess run.

    Local (the default, `FnApiRunner`, or `DirectRunner` when asked for): `--direct_num_workers`
    and `--direct_running_mode` come from `config.preprocess` unless given. Dataflow:
    `--project`, `--region` and `--temp_location` are required, and `--setup_file` defaults to
    this project's (see `default_setup_file`) so workers run the same code, unless a custom
    `--sdk_container_image` already carries it.

    Args:
        beam_args: Beam flags as on a command line, e.g. `["--runner=DataflowRunner", ...]`.
        config: the resolved run configuration.

    Raises:
        StepError: a Dataflow run lacks a required flag.
    """
    args = list(beam_args or [])
    if not _given(args, "runner"):
        args.append(f"--runner={LOCAL_RUNNER}")
    runner = runner_name(args)
    if runner in LOCAL_RUNNERS:
        if not _given(args, "direct_num_workers"):
            args.append(f"--direct_num_workers={config.preprocess.direct_num_workers}")
        if not _given(args, "direct_running_mode"):
            args.append(f"--direct_running_mode={config.preprocess.direct_running_mode}")
    elif runner == "dataflow":
        options = PipelineOptions(args)
        gcp = options.view_as(GoogleCloudOptions)
        missing = [name for name in DATAFLOW_REQUIRED if not getattr(gcp, name)]
        if missing:
            flags = " ".join(f"--{m}=..." for m in missing)
            raise StepError(f"a Dataflow run needs {flags} (e.g. --temp_location=gs://BUCKET/tmp)")
        image = options.view_as(WorkerOptions).sdk_container_image
        if not options.view_as(SetupOptions).setup_file and not image:
            args.append(f"--setup_file={default_setup_file()}")
    return PipelineOptions(args)
