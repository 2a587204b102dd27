"""The `fashion` command line: one subcommand per module in `pipeline.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`handler=fn(args, config) -> int`. Configuration is resolved here, at the edge: preset ->
`--config` YAML -> `--set section.field=value` overrides -> the command's own flags.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from core.config import PRESETS, ConfigError, load_config, parse_overrides
from core.errors import StepError
from core.secrets import install_log_redaction, redact
from core.storage import StorageError


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """The configuration flags every command shares."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--preset", choices=PRESETS, default=default_preset, help="named preset (configs/NAME.yaml)")
    group.add_argument("--config", dest="config_path", help="YAML file with this run's overrides")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set train.epochs=3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fashion",
        description="Fashion product categorisation and attribute extraction: a Kubeflow pipeline.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    from pipeline import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"pipeline.commands.{info.name}")
        module.register(subparsers)
    return parser


def resolve_config(args: argparse.Namespace, extra: dict | None = None):
    """The run's Config from the shared flags plus command-specific overrides."""
    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return load_config(
        preset=getattr(args, "preset", None), config_path=getattr(args, "config_path", None), overrides=overrides
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.handler(args) or 0)
    except ConfigError as err:
        print(f"fashion {args.command}: invalid configuration: {redact(str(err))}", file=sys.stderr)
        return 2
    except (StepError, StorageError) as err:
        print(f"fashion {args.command}: {redact(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:
        # A file-system refusal the step did not foresee (a parent that is a file, no permission):
        # one line with the path, not a traceback.
        where = f" {err.filename}" if err.filename else ""
        print(
            f"fashion {args.command}: cannot use{where}: {err.strerror or err}; check the path and its permissions",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"fashion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
