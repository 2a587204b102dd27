r"""`fashion preprocess`: resize the manifest's photos into TFRecord shards and statistics with Apache Beam.

Locally it runs on Beam's FnApiRunner (the DirectRunner's batch engine) with
`preprocess.direct_num_workers` processes; the same command runs on Dataflow:

    fashion preprocess --manifest gs://BUCKET/ingest --out gs://BUCKET/shards \\
        --runner DataflowRunner --project PROJECT --region europe-west1 \\
        --temp_location gs://BUCKET/tmp [--setup_file ./setup.py] [-- --max_num_workers=20 ...]

Common Beam flags are options of this command; any other Beam flag goes after `--`.
"""

from __future__ import annotations

import argparse
import logging
import re

# Beam pipeline flags accepted directly (others pass after `--`), forwarded verbatim.
BEAM_FLAGS = (
    ("runner", "Beam runner: FnApiRunner (local default), DirectRunner, DataflowRunner, FlinkRunner, ..."),
    ("project", "Google Cloud project (Dataflow)"),
    ("region", "Dataflow region, e.g. europe-west1"),
    ("temp_location", "gs:// prefix for temporary files (Dataflow)"),
    ("staging_location", "gs:// prefix for staged code (Dataflow; defaults under temp_location)"),
    ("setup_file", "setup.py/pyproject.toml of the code workers install (default: this project's)"),
    ("sdk_container_image", "custom worker image that already holds this project"),
    ("job_name", "Dataflow job name"),
    ("max_num_workers", "Dataflow autoscaling limit"),
    ("machine_type", "Dataflow worker machine type"),
    ("service_account_email", "Dataflow worker service account"),
)


def parse_image_size(text: str) -> tuple[int, int]:
    """`HxW` (e.g. `224x224`) -> (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected HEIGHTxWIDTH, e.g. 80x60")
    return int(match.group(1)), int(match.group(2))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `preprocess` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "preprocess",
        help="resize photos into TFRecord shards + stats.json (Apache Beam, local or Dataflow)",
        description="Read an ingest output (manifest.csv, labels.json), decode and resize every photo, "
        "write {split}-SSSSS-of-NNNNN.tfrecord shards, stats.json and rejects.jsonl.",
        epilog="Dataflow: --runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
        "(workers install this project from --setup_file). Other Beam flags go after `--`.",
    )
    parser.add_argument("--manifest", required=True, help="ingest output folder (local or gs://)")
    parser.add_argument("--out", required=True, help="output folder (local or gs://)")
    parser.add_argument("--image-size", type=parse_image_size, metavar="HxW", help="stored image size, e.g. 80x60")
    parser.add_argument("--direct-num-workers", type=int, help="local worker processes (0 = one per CPU)")
    parser.add_argument(
        "--direct-running-mode", choices=("in_memory", "multi_threading", "multi_processing"), help="local workers"
    )
    beam = parser.add_argument_group("Beam pipeline options (passed through)")
    for name, text in BEAM_FLAGS:
        beam.add_argument(f"--{name}", dest=f"beam_{name}", metavar=name.upper(), help=text)
    parser.add_argument("beam_args", nargs=argparse.REMAINDER, help="`--` then any other Beam pipeline flags")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def beam_args_of(args: argparse.Namespace) -> list[str]:
    """The Beam flags of a parsed command line, in Beam's `--name=value` form."""
    out = [f"--{name}={getattr(args, f'beam_{name}')}" for name, _ in BEAM_FLAGS if getattr(args, f"beam_{name}")]
    rest = list(args.beam_args or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    return out + rest


def run(args: argparse.Namespace) -> int:
    """Handle `fashion preprocess`."""
    from components.preprocess.step import resize_images
    from pipeline.cli import resolve_config

    if not getattr(args, "verbose", False):
        # Beam logs each server and worker it starts at INFO; the step's summary is what matters here.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    height, width = args.image_size or (None, None)
    config = resolve_config(
        args,
        {
            "preprocess": {
                "image_height": height,
                "image_width": width,
                "direct_num_workers": args.direct_num_workers,
                "direct_running_mode": args.direct_running_mode,
            }
        },
    )
    result = resize_images(args.manifest, args.out, config, beam_args_of(args))
    splits = ", ".join(f"{s} {n}" for s, n in result.splits.items())
    print(
        f"{result.manifest_rows} manifest rows: {result.records} records written ({splits}), "
        f"{result.rejected} rejected\nshards and stats: {result.out_dir}\nrejects: {result.rejects_path}"
    )
    return 0
