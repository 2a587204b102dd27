"""`fashion schedule`: recurring retraining, on this machine (the local scheduler) or as a Kubeflow recurring run."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

# `fashion run`'s preset when none is given: a local schedule runs exactly what `fashion run` would.
RUN_DEFAULT_PRESET = "demo"
CLUSTER_ONLY = {
    "package": "--package",
    "namespace": "--namespace",
    "service_account": "--service-account",
    "pipeline_root": "--pipeline-root",
    "beam_args": "--beam-args",
}
LOCAL_ONLY = {"serve": "--serve", "workdir": "--workdir", "no_cache": "--no-cache"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `schedule` subcommand."""
    from pipeline.cli import add_config_arguments
    from pipeline.commands.submit import add_connection_arguments, add_parameter_arguments

    parser = subparsers.add_parser(
        "schedule",
        help="schedule recurring retraining runs, here or on a cluster (or --list / --delete them)",
        description="Retrain on a cron schedule: at most one run at a time, no catch-up of slots missed while "
        "the scheduler was stopped. Without --host (or KF_PIPELINES_ENDPOINT) the schedule is kept in the work "
        "directory and this machine's scheduler (`--serve`; --cron starts it in the background) runs `fashion "
        "run` with the same flags at every slot, each run with its own log under <workdir>/schedules/<name>/. "
        "With --host it is a Kubeflow recurring run. --list shows the schedules; --delete removes one by name "
        "(or id on a cluster).",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--cron", help="cron expression: 5 fields ('0 3 * * *') or 6 with seconds first")
    action.add_argument("--list", action="store_true", help="list the schedules (the experiment's, on a cluster)")
    action.add_argument("--delete", metavar="ID_OR_NAME", help="delete one schedule")
    action.add_argument(
        "--serve",
        action="store_true",
        help="run this machine's scheduler in the foreground (under systemd, say); it stops when no schedule is left",
    )
    parser.add_argument("--name", help="name of the schedule (default: <preset>-retrain here)")
    local = parser.add_argument_group("this machine (no --host)")
    local.add_argument("--workdir", help="the runs' work directory, where the schedules live (default: runs/<preset>)")
    local.add_argument("--no-cache", action="store_true", help="each run re-runs ingest and preprocess")
    add_connection_arguments(parser)
    add_parameter_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion schedule`."""
    from core.errors import StepError

    if args.host:
        given = [flag for dest, flag in LOCAL_ONLY.items() if getattr(args, dest)]
        if given:
            raise StepError(
                f"{', '.join(given)}: for this machine's scheduler; drop --host (and KF_PIPELINES_ENDPOINT)"
            )
        return _on_cluster(args)
    given = [flag for dest, flag in CLUSTER_ONLY.items() if getattr(args, dest)]
    if given:
        raise StepError(
            f"{', '.join(given)}: for a Kubeflow cluster, pass --host URL (or set KF_PIPELINES_ENDPOINT); "
            "this machine's scheduler runs `fashion run`"
        )
    return _on_this_machine(args)


# --- this machine ------------------------------------------------------------------------------


def _workdir(args: argparse.Namespace):
    """The work directory and Config of the `fashion run` these flags describe (its defaults included)."""
    from pipeline.commands.submit import resolve_cluster_config

    args.preset = args.preset or RUN_DEFAULT_PRESET
    config = resolve_cluster_config(args)
    return Path(args.workdir or f"runs/{config.preset}").resolve(), config


def _run_arguments(args: argparse.Namespace, workdir: Path) -> tuple[str, ...]:
    """The `fashion run` arguments of every slot: the flags given here, paths made absolute."""
    run_args = [f"--preset={args.preset}"]
    if args.config_path:
        run_args.append(f"--config={Path(args.config_path).resolve()}")
    run_args += [f"--set={override}" for override in args.overrides]
    if args.model_name:
        run_args.append(f"--set=registry.model_name={args.model_name}")
    if args.source:
        local = "://" not in args.source
        run_args.append(f"--source={Path(args.source).resolve() if local else args.source}")
    if args.mlflow_uri:
        run_args.append(f"--mlflow-uri={args.mlflow_uri}")
    if args.model_base_path:
        local = "://" not in args.model_base_path
        run_args.append(f"--model-base-path={Path(args.model_base_path).resolve() if local else args.model_base_path}")
    run_args.append(f"--workdir={workdir}")
    if args.no_cache:
        run_args.append("--no-cache")
    return tuple(run_args)


def _on_this_machine(args: argparse.Namespace) -> int:
    from pipeline import scheduler

    workdir, config = _workdir(args)
    if args.serve:
        return scheduler.serve(workdir)
    if args.list:
        return _list_here(workdir)
    if args.delete:
        deleted = scheduler.remove_schedule(workdir, args.delete)
        print(f"deleted schedule {deleted.name} from {workdir} (its logs stay in {scheduler.schedules_dir(workdir)})")
        running = scheduler.running_retrain(workdir)
        if running and running.get("schedule") == deleted.name:
            print(f"its run in progress (pid {running.get('pid')}) goes on to its end")
        return 0
    cron = scheduler.parse_cron(args.cron)
    schedule = scheduler.LocalSchedule(
        name=scheduler.check_name(args.name or f"{config.preset}-retrain"),
        cron=cron,
        run_args=_run_arguments(args, workdir),
        cwd=os.getcwd(),
        created=scheduler.now().isoformat(timespec="seconds"),
    )
    scheduler.add_schedule(workdir, schedule)
    first = scheduler.next_slot(cron, scheduler.now())
    print(
        f"schedule {schedule.name} created in {workdir}: cron '{cron}', first run at {first:%Y-%m-%d %H:%M:%S}, "
        "one run at a time, catch-up off"
    )
    print(f"each run: fashion run {' '.join(schedule.run_args)}")
    print(f"its logs: {scheduler.schedules_dir(workdir) / schedule.name}/")
    pid, started = scheduler.start_scheduler(workdir)
    log = scheduler.schedules_dir(workdir) / scheduler.SCHEDULER_LOG_FILE
    print(f"scheduler {'started' if started else 'running'} (pid {pid}), log: {log}")
    return 0


def _list_here(workdir: Path) -> int:
    from pipeline import scheduler

    folder = scheduler.schedules_dir(workdir)
    schedules = scheduler.load_schedules(workdir)
    if not schedules:
        print(f"no schedules in {workdir}")
        return 0
    pid = scheduler.scheduler_pid(workdir)
    if pid:
        print(f"scheduler: running (pid {pid}), log: {folder / scheduler.SCHEDULER_LOG_FILE}")
    else:
        print(f"scheduler: not running; start it with `fashion schedule --serve --workdir {workdir}`")
    running = scheduler.running_retrain(workdir) or {}
    at = scheduler.now()
    for s in schedules:
        line = f"{s.name}  cron '{s.cron}'  next {scheduler.next_slot(s.cron, at):%Y-%m-%d %H:%M:%S}"
        finished = [e for e in scheduler.history(workdir, s.name) if e["event"] == "finished"]
        if running.get("schedule") == s.name:
            since = datetime.datetime.fromisoformat(running["slot"]) if running.get("slot") else None
            line += f"  running since the slot of {since:%Y-%m-%d %H:%M:%S} (pid {running.get('pid')})"
        if finished:
            last = finished[-1]
            slot = datetime.datetime.fromisoformat(last["slot"])
            outcome = f"{last['outcome']} (exit code {last['exit_code']})"
            line += f"  last run {slot:%Y-%m-%d %H:%M:%S} {outcome}, log {last['log']}"
        print(line)
        print(f"    fashion run {' '.join(s.run_args)}")
    return 0


# --- a Kubeflow Pipelines cluster --------------------------------------------------------------


def _on_cluster(args: argparse.Namespace) -> int:
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
