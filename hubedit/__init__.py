"""hubedit: learned editing of MLP classifiers for requirement compliance, with the Hugging Face Hub as home."""

from .errors import (
    ConfigError,
    CorruptFileError,
    FeatureMismatchError,
    HubeditError,
    NonFiniteWeightsError,
    UnknownTaskError,
    UnsupportedArchitectureError,
)
from .mlp import MLP, MLPConfig
from .tasks import Task, load_task

from .version import __version__

__all__ = [
    "MLP",
    "MLPConfig",
    "Task",
    "load_task",
    "HubeditError",
    "ConfigError",
    "CorruptFileError",
    "FeatureMismatchError",
    "NonFiniteWeightsError",
    "UnknownTaskError",
    "UnsupportedArchitectureError",
    "__version__",
]


def __getattr__(name):  # lazy: keep `import hubedit` light (no datasets / hub imports until needed)
    if name in ("Zoo", "ZooSplit"):
        from . import zoo

        return getattr(zoo, name)
    if name in ("Editor", "EditedMLP", "EditorPipeline"):
        from . import editor

        return getattr(editor, name)
    if name == "train_editor":
        from .train import train_editor

        return train_editor
    raise AttributeError(f"module 'hubedit' has no attribute {name!r}")
