"""The `fashion` command line: one subcommand per module in `pipeline.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`handler=fn(args, config) -> int`. Configuration is resolved here, at the edge: preset ->
`--config` YAML -> `--set section.field=value` overrides -> the command's own flags.

What reaches the console is decided here too (`pipeline.console`): a command's results, its live
progress and the project's warnings; the libraries' output goes to the command's log file, or to
one per step for `fashion run`. `-v` shows everything live.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import PRESETS, Config, ConfigError, load_config, parse_overrides
from core.errors import StepError
from core.secrets import install_log_redaction, redact
from core.storage import StorageError
from pipeline.console import DEFAULT_LOG_DIR, Console, command_log_path, command_output, logging_to


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


class _OneSpellingHelp(argparse.HelpFormatter):
    """Help that shows each flag in the spelling it was declared with, not its alternate spelling too."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        alternates = getattr(action, "alternate_spellings", ())
        if not alternates:
            return super()._format_action_invocation(action)
        shown = [o for o in action.option_strings if o not in alternates]
        trimmed = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(trimmed)


class FlagParser(argparse.ArgumentParser):
    """An argument parser where `--model_base_path` and `--model-base-path` name the same flag.

    TF Serving's flags are spelt with underscores and this CLI's own with hyphens; a user should
    not have to remember which is which, so every long flag accepts both spellings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _OneSpellingHelp)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        """Add a flag under its declared names plus the other spelling of each long name."""
        declared = set(names)
        alternates = []
        for name in names:
            if isinstance(name, str) and name.startswith("--"):
                other = "--" + (name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_"))
                if other != name and other not in declared:
                    alternates.append(other)
        if alternates and "dest" not in kwargs:
            first_long = next(n for n in names if isinstance(n, str) and n.startswith("--"))
            kwargs["dest"] = first_long[2:].replace("-", "_")
        action = super().add_argument(*names, *alternates, **kwargs)
        action.alternate_spellings = tuple(alternates)
        return action


def version_text() -> str:
    """`fashion <version> (commit <sha>)`: the installed package version and the source's git commit."""
    from importlib.metadata import PackageNotFoundError, version

    from components.register.tracking import git_commit

    try:
        number = version("fashion-classifier")
    except PackageNotFoundError:
        number = "unknown"
    return f"fashion {number} (commit {git_commit()})"


class _VersionAction(argparse.Action):
    """`--version`: print the version and commit, then exit (computed only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and git commit, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered subcommand."""
    parser = FlagParser(
        prog="fashion",
        description="Fashion product categorisation and attribute extraction: a Kubeflow pipeline.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything live: every log record (debug included) and the libraries' own output",
    )
    parser.add_argument(
        "--log-dir",
        help=f"where the log files go (default: {DEFAULT_LOG_DIR}; `run`: each run's folder, one file per step)",
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    from pipeline import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"pipeline.commands.{info.name}")
        module.register(subparsers)
    for command in subparsers.choices.values():
        # After the command too (`fashion serve --log-dir=...`), as a process that starts one writes it.
        command.add_argument("--log-dir", default=argparse.SUPPRESS, help="where the log files go (see `fashion -h`)")
    return parser


def resolve_config(args: argparse.Namespace, extra: dict | None = None):
    """The run's Config from the shared flags plus command-specific overrides."""
    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    config = load_config(
        preset=getattr(args, "preset", None), config_path=getattr(args, "config_path", None), overrides=overrides
    )
    check_gate_settings(config)
    return config


def check_gate_settings(config: Config) -> None:
    """Refuse floors and tolerances on metrics the evaluation never writes (a typo would gate on nothing).

    Raises:
        ConfigError: naming the unknown metrics and listing the known ones.
    """
    from components.evaluate.scalars import known_metrics, unknown_gate_metrics

    groups = config.labels.attributes
    for section in ("floors", "tolerances"):
        unknown = unknown_gate_metrics(getattr(config.evaluate, section), groups)
        if unknown:
            raise ConfigError(
                f"evaluate.{section}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(known_metrics(groups))}"
            )


# Exit codes of every `fashion` command (README "Exit codes"): a script can tell the outcomes apart.
EXIT_OK = 0  # done: the model was blessed, registered or deployed as asked
EXIT_FAILED = 1  # a step or the command failed; the message says why
EXIT_USAGE = 2  # bad flags or settings (argparse uses 2 as well)
EXIT_GATE_REJECTED = 3  # the gate did not bless the model: nothing was registered or deployed
EXIT_UNCHANGED = 4  # `fashion run`: catalogue and settings are the champion's, nothing was trained (--force retrains)
EXIT_INTERRUPTED = 130  # Ctrl-C


# Commands that run a step's work in this process: their records and the libraries' stderr go to a
# log file (`pipeline.console.command_output`), whose path is their last line on stderr.
LOGGED_COMMANDS = ("ingest", "preprocess", "train", "evaluate", "register", "deploy", "rollback", "serve")
# Commands whose own INFO records are their output, as a server's log is; a logged one names its log first.
SERVER_COMMANDS = ("serve", "mlflow-ui")


def quiet_libraries() -> None:
    """Ask the libraries that install their own console handlers to log through the root logger instead.

    MLflow writes its records to stderr through a handler of its own unless told not to; through
    the root logger they reach the log file like every other library's. Set in this process's
    environment, so the step processes a local run starts inherit it.
    """
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def _output(args: argparse.Namespace, console: Console, log_path: Path | None) -> contextlib.AbstractContextManager:
    """Where the command's records and the libraries' output go (see `pipeline.console`)."""
    if args.command == "run":
        return contextlib.nullcontext()  # `fashion run` keeps one log per step (pipeline.local.logs)
    server = args.command in SERVER_COMMANDS
    if log_path is not None:
        return command_output(console, log_path, args.verbose, show_info=server)
    return logging_to(console, None, args.verbose, show_info=server)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()
    quiet_libraries()
    # `fashion run`'s step lines and summary are its output; other commands print results on stdout
    # and keep progress and warnings on stderr, so their stdout pipes cleanly (JSON, paths).
    console = Console(sys.stdout if args.command == "run" else "stderr")
    args.console = console
    log_path = command_log_path(args.command, args.log_dir) if args.command in LOGGED_COMMANDS else None
    logged = f" (log: {log_path})" if log_path is not None else ""
    server = args.command in SERVER_COMMANDS
    try:
        with _output(args, console, log_path):
            if log_path is not None and server:
                console.line(f"log: {log_path} (the libraries' own output)")
            code = int(args.handler(args) or 0)
        if log_path is not None and not server:
            print(f"log: {log_path}", file=sys.stderr)
        return code
    except ConfigError as err:
        print(f"fashion {args.command}: invalid configuration: {redact(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except (StepError, StorageError) as err:
        print(f"fashion {args.command}: {redact(str(err))}{logged}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        # A file-system refusal the step did not foresee (a parent that is a file, no permission):
        # one line with the path, not a traceback.
        where = f" {err.filename}" if err.filename else ""
        print(
            f"fashion {args.command}: cannot use{where}: {err.strerror or err}; check the path and its permissions"
            f"{logged}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"fashion {args.command}: interrupted{logged}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
