"""The ``Editor`` (hub mixin), edited models and composition."""

from .edited import EditedMLP
from .editor import Editor, EditorPipeline

__all__ = ["Editor", "EditorPipeline", "EditedMLP"]
