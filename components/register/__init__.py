"""Registration: MLflow tracking of every run and the model registry (aliases `challenger`, `champion`)."""

from components.register.registry import CHALLENGER, CHAMPION, Registry
from components.register.step import RegistrationResult, register_model

__all__ = ["CHALLENGER", "CHAMPION", "Registry", "RegistrationResult", "register_model"]
