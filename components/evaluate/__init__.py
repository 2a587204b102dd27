"""Evaluation: the paper's metrics on the test split, readable reports, and the gate that protects production."""

from components.evaluate.evaluation import Evaluation, evaluate_predictions
from components.evaluate.gate import GateCheck, GateDecision, decide
from components.evaluate.step import EvaluationResult, evaluate_model, write_evaluation

__all__ = [
    "Evaluation",
    "EvaluationResult",
    "GateCheck",
    "GateDecision",
    "decide",
    "evaluate_model",
    "evaluate_predictions",
    "write_evaluation",
]
