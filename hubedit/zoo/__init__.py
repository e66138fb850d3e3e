"""Model zoos: configuration sampling, batched population training, and the Hub dataset layout."""

from .dataset import Zoo, ZooSplit
from .records import Checkpoint, TrainConfig, ZooConfig

__all__ = ["Zoo", "ZooSplit", "Checkpoint", "TrainConfig", "ZooConfig"]
