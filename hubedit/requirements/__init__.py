"""Requirements an editor can enforce: one module each (relaxation for training + hard metric)."""

from .base import REGISTRY, Edit, Outcome, Requirement, get_requirement, register, straight_through
from .fairness import Fairness
from .data_minimisation import DataMinimisation
from .pruning import Pruning

__all__ = [
    "Requirement",
    "Edit",
    "Outcome",
    "REGISTRY",
    "get_requirement",
    "register",
    "straight_through",
    "DataMinimisation",
    "Fairness",
    "Pruning",
]
