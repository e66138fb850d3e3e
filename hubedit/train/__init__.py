"""Editor training on accelerate."""

from .loop import EditorTrainingConfig, train_editor

__all__ = ["train_editor", "EditorTrainingConfig"]
