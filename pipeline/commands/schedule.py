"""`fashion schedule`: recurring retraining on a Kubeflow Pipelines cluster (create, list, delete)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `schedule` subcommand."""
    from pipeline.cli import add_config_arguments
    from pipeline.commands.submit import add_connection_arguments, add_parameter_arguments

    parser = subparsers.add_parser(
        "schedule",
        help="schedule recurring retraining runs (or --list / --delete them)",
        description="Create a recurring run of the pipeline on a cron schedule: at most one run at a time, "
        "no catch-up of slots missed while paused. --list shows the experiment's schedules; --delete "
        "removes one by id or name.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--cron", help="cron expression: 5 fields ('0 3 * * *') or 6 with seconds first")
    action.add_argument("--list", action="store_true", help="list the experiment's recurring runs")
    action.add_argument("--delete", metavar="ID_OR_NAME", help="delete one recurring run")
    parser.add_argument("--name", help="display name of the recurring run")
    add_connection_arguments(parser)
    add_parameter_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion schedule`."""
    from pipeline import cluster
    from pipeline.commands.submit import beam_args, require_host, resolve_cluster_config, warn_unpullable_images

    host = require_host(args)
    if args.list:
        schedules = cluster.list_schedules(host, args.experiment, args.namespace, args.token)
        if not schedules:
            print(f"no recurring runs in experiment {args.experiment}")
        for s in schedules:
            state = "enabled" if s.enabled else "disabled"
            print(f"{s.recurring_run_id}  {s.name}  cron '{s.cron}'  {state}  max concurrency {s.max_concurrency}")
        return 0
    if args.delete:
        deleted = cluster.delete_schedule(host, args.delete, args.experiment, args.namespace, args.token)
        print(f"deleted recurring run {deleted.recurring_run_id} ({deleted.name})")
        return 0
    config = resolve_cluster_config(args)
    warn_unpullable_images(config, args)
    created = cluster.schedule_run(
        config,
        host,
        args.cron,
        experiment=args.experiment,
        name=args.name,
        package=args.package,
        namespace=args.namespace,
        token=args.token,
        service_account=args.service_account,
        beam_args=beam_args(args),
    )
    print(
        f"recurring run {created.recurring_run_id} ({created.name}) created in experiment {args.experiment}: "
        f"cron '{created.cron}', max concurrency {created.max_concurrency}, catch-up off"
    )
    return 0
