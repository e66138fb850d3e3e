"""The MLP family: architecture config, the module, and import of users' models."""

from .config import ACTIVATIONS, NORMS, MLPConfig
from .module import MLP, activation_fn, skip_key

__all__ = ["MLP", "MLPConfig", "ACTIVATIONS", "NORMS", "activation_fn", "skip_key"]
