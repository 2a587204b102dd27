"""The gate: may this model replace the one in production? Absolute floors plus non-regression.

A candidate is blessed when every metric named in `floors` reaches its floor and every metric
named in `tolerances` is no worse than the champion's by more than its tolerance. In a pipeline
run the champion's metrics are measured in the same step on the same test photos
(`components.evaluate.champion`), so both sit the same exam. Metrics are higher-is-better;
tolerances are absolute differences (0.01 = one point of accuracy). Without a champion (the first
run) only the floors apply. The reason lists every check, passed or failed,
and by how much, so a person reading the run sees why.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateCheck:
    """One comparison of the gate.

    Attributes:
        metric: the flat metric name.
        kind: `floor`, `champion` (non-regression) or `missing` (absent from the candidate).
        value: the candidate's value (None when missing).
        reference: the floor, or the champion's value (None when there is none).
        bound: the least passing value (floor, or champion minus tolerance).
        passed: whether the check passed; a skipped check passes.
        skipped: the check could not be made (the champion lacks the metric).
        message: one readable line.

    """

    metric: str
    kind: str
    value: float | None
    reference: float | None
    bound: float | None
    passed: bool
    skipped: bool
    message: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: `blessed`, a readable `reason`, and every check behind it."""

    blessed: bool
    reason: str
    checks: list[GateCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to `gate.json`."""
        return {"blessed": self.blessed, "reason": self.reason, "checks": [asdict(c) for c in self.checks]}


def _number(values: Mapping[str, Any] | None, key: str) -> float | None:
    if values is None or key not in values:
        return None
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _floor_check(metric: str, value: float, floor: float) -> GateCheck:
    passed = value >= floor
    verb = ">=" if passed else "<"
    message = f"{metric} {value:.4f} {verb} floor {floor:.4f} ({value - floor:+.4f})"
    return GateCheck(metric, "floor", value, floor, floor, passed, False, message)


def _champion_check(metric: str, value: float, champion: float, tolerance: float) -> GateCheck:
    bound = champion - tolerance
    passed = value >= bound
    delta = value - champion
    if passed:
        how = "better than" if delta > 0 else "equal to" if delta == 0 else "within tolerance of"
    else:
        how = "worse than"
    message = (
        f"{metric} {value:.4f} {how} champion {champion:.4f} ({delta:+.4f}, tolerance {tolerance:.4f}"
        f"{'' if passed else f', {bound - value:.4f} beyond it'})"
    )
    return GateCheck(metric, "champion", value, champion, bound, passed, False, message)


def decide(
    metrics: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    floors: Mapping[str, float],
    tolerances: Mapping[str, float],
    champion_source: str = "",
) -> GateDecision:
    """Decide whether the candidate may replace the champion.

    Args:
        metrics: the candidate's flat scalars (`metrics.json` -> `scalars`).
        champion: the champion's flat scalars, or None when nothing is in production yet.
        floors: metric -> least acceptable value.
        tolerances: metric -> how much worse than the champion the candidate may be.
        champion_source: where the champion's scalars come from, for the reason (e.g. `champion
            version 3 on the same 119 test photos`).

    Returns:
        The GateDecision; a metric a floor or tolerance names but the candidate lacks fails the gate,
        one the champion lacks is compared on its floor only, and the reason says so.

    """
    checks: list[GateCheck] = []
    notes: list[str] = []
    for metric in sorted(set(floors) | set(tolerances)):
        value = _number(metrics, metric)
        if value is None or math.isnan(value):
            what = "missing from" if value is None else "not a number in"
            close = difflib.get_close_matches(metric, [str(k) for k in metrics], n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close and value is None else ""
            message = f"{metric} is {what} the candidate's metrics: it cannot be checked{hint}"
            checks.append(GateCheck(metric, "missing", None, None, None, False, False, message))
            continue
        if metric in floors:
            checks.append(_floor_check(metric, value, float(floors[metric])))
        if metric not in tolerances or champion is None:
            continue
        reference = _number(champion, metric)
        if reference is None or math.isnan(reference):
            on = "its floor only" if metric in floors else "nothing: it has no floor either"
            message = f"{metric}: the champion has no such metric, so it is compared on {on}"
            checks.append(GateCheck(metric, "champion", value, None, None, True, True, message))
            continue
        checks.append(_champion_check(metric, value, reference, float(tolerances[metric])))
    if champion is None:
        notes.append("no champion yet: floors only")
    elif champion_source:
        notes.append(f"against {champion_source}")
    if not checks:
        notes.append("no floors or tolerances configured: nothing to check")
    failed = [c for c in checks if not c.passed]
    made = [c for c in checks if not c.skipped]
    if failed:
        names = ", ".join(sorted({c.metric for c in failed}))
        head = f"not blessed: {len(failed)} of {len(made)} checks failed ({names})"
    else:
        head = f"blessed: all {len(made)} checks passed"
    reason = "; ".join([head + (f" ({'; '.join(notes)})" if notes else "")] + [c.message for c in checks])
    return GateDecision(blessed=not failed, reason=reason, checks=checks)
