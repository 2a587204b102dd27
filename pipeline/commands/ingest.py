"""`fashion ingest`: read a catalogue, check every photo, write the manifest and report."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ingest` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "ingest",
        help="check and label a catalogue (folder, .zip or gs:// prefix)",
        description="Read styles.csv + images/, check every photo, write manifest.csv, labels.json "
        "and ingest_report.json accounting for every row and photo.",
    )
    parser.add_argument("--source", help="folder, .zip or gs://bucket/prefix (default: data.source_uri)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--min-usable", type=float, help="fail when the usable share is below this (0-1)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion ingest`."""
    from components.ingest.step import ingest_catalogue, summarize
    from pipeline.cli import resolve_config

    config = resolve_config(args, {"data": {"source_uri": args.source, "min_usable_fraction": args.min_usable}})
    result = ingest_catalogue(config.data.source_uri, args.out, config)
    print(json.dumps(result.report, indent=2) if args.json else summarize(result.report))
    print(f"manifest: {result.manifest_path}\nreport: {result.report_path}")
    return 0
