"""`make run`'s pipeline time: this checkout against a baseline commit, the same demo run in the same session.

    .venv/bin/python -m bench.pipeline_time --baseline 2bd5c92 --out runs/bench-pipeline-time

Each checkout runs `fashion run --preset demo` (the main job of `make run`, after the install) in
a fresh work directory, serving on free loopback ports, and its server is stopped afterwards. The
baseline is a `git worktree` of `--baseline` run with this environment's Python (the same pinned
packages). Reported per run: the pipeline time the run prints, each step's time, the process CPU
time of the whole command, and the load average at the start; then, as the plain baseline's
ratio, this checkout's pipeline time over the baseline's. Runs alternate (baseline first) so a
drift in the machine's load falls on both. A TensorFlow import in a fresh Python is timed in the
same session, as the unit every step that loads it pays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
PIPELINE = re.compile(r"Pipeline run succeeded in (\d+(?:\.\d+)?)s")
STEP = re.compile(r"^\s+([a-z-]+)\s+(succeeded|cached|skipped)\s+(\d+(?:\.\d+)?)s")


def checkout(rev: str, where: Path) -> Path:
    """A detached worktree of `rev` at `where` (made once; reused when it is there)."""
    if not (where / ".git").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True)
    return where


def timed_import(module: str) -> float:
    """Wall seconds a fresh Python takes to import `module` and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
    return time.perf_counter() - start


def run_demo(tree: Path, workdir: Path) -> dict:
    """`fashion run --preset demo` from `tree` in `workdir`; its pipeline and step times."""
    grpc_port, rest_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--preset=demo",
        f"--workdir={workdir}",
        f"--set=serving.grpc_port={grpc_port}",
        f"--set=serving.rest_port={rest_port}",
    ]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        stop = [sys.executable, "-c", f"from pipeline.local.server import stop_server; stop_server({str(workdir)!r})"]
        subprocess.run(stop, cwd=tree, env=env, capture_output=True, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: fashion run exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    found = PIPELINE.search(done.stdout)
    if found is None:
        raise SystemExit(f"{tree}: no pipeline time in the run's output:\n{done.stdout[-3000:]}")
    steps = {m.group(1): float(m.group(3)) for m in map(STEP.match, done.stdout.splitlines()) if m}
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "pipeline_s": float(found.group(1)),
        "command_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_at_start": round(load, 2),
        "steps_s": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline", default="2bd5c92", help="the commit to compare with (default: before #19's start-up work)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-pipeline-time")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each checkout, alternating")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    baseline_tree = checkout(args.baseline, args.out / "baseline-tree")
    print(json.dumps({"tensorflow_import_s": round(timed_import("tensorflow"), 2), "cpus": os.cpu_count()}), flush=True)
    results: dict[str, list[dict]] = {"baseline": [], "current": []}
    for i in range(args.repeats):
        for name, tree in (("baseline", baseline_tree), ("current", REPO)):
            run = run_demo(tree, args.out / f"{name}-{i}")
            results[name].append(run)
            print(
                json.dumps({"checkout": name, "rev": args.baseline if name == "baseline" else "HEAD", **run}),
                flush=True,
            )
    mean = {k: sum(r["pipeline_s"] for r in v) / len(v) for k, v in results.items()}
    cpu = {k: sum(r["cpu_s"] for r in v) / len(v) for k, v in results.items()}
    print(
        json.dumps(
            {
                "baseline_pipeline_s": round(mean["baseline"], 1),
                "pipeline_s": round(mean["current"], 1),
                "ratio": round(mean["current"] / mean["baseline"], 3),
                "cpu_ratio": round(cpu["current"] / cpu["baseline"], 3),
                "goal_s": 60,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
