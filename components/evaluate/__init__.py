"""Evaluation: the paper's metrics on the test split, readable reports, and the gate that protects production.

The public names load on first use (PEP 562), so that a light module such as `scalars` (the
metric names the CLI checks settings against) imports without numpy's and scikit-learn's cost.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Evaluation": "components.evaluate.evaluation",
    "evaluate_predictions": "components.evaluate.evaluation",
    "GateCheck": "components.evaluate.gate",
    "GateDecision": "components.evaluate.gate",
    "decide": "components.evaluate.gate",
    "EvaluationResult": "components.evaluate.step",
    "evaluate_against_champion": "components.evaluate.step",
    "evaluate_model": "components.evaluate.step",
    "write_evaluation": "components.evaluate.step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
