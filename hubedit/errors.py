"""Exceptions raised at hubedit's boundaries.

Every error says what was expected and what came. They subclass ``ValueError`` (bad input) or
``RuntimeError`` so callers that only know the builtins still catch them.
"""

from __future__ import annotations


class HubeditError(Exception):
    """Base class of all hubedit errors."""


class UnknownTaskError(HubeditError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedArchitectureError(HubeditError, ValueError):
    """A model (or layer) outside what hubedit can represent or edit."""


class FeatureMismatchError(HubeditError, ValueError):
    """Input feature count or schema differs from what was expected."""


class NonFiniteWeightsError(HubeditError, ValueError):
    """NaN or Inf in a model's parameters."""


class CorruptFileError(HubeditError, ValueError):
    """A file that is not what it claims to be (bad header, wrong hash, missing keys)."""


class ConfigError(HubeditError, ValueError):
    """An invalid configuration value."""
