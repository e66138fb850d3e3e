"""Plain records of a model zoo: what one sampled configuration is, and what one stored checkpoint holds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..mlp import MLP, MLPConfig

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters of one zoo member (paper Table 2 / hubedit/DESIGN.md zoo table)."""

    batch_size: int
    lr: float
    weight_decay: float
    epochs: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ZooConfig:
    """One sampled configuration: architecture, training hyper-parameters and seed.

    ``checkpoint_epochs`` are the epochs after which a checkpoint is stored (early, middle, final).
    """

    config_id: int
    mlp: MLPConfig
    train: TrainConfig
    seed: int
    checkpoint_epochs: tuple[int, ...]
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")

    def to_dict(self) -> dict:
        return {
            "config_id": self.config_id,
            "mlp": self.mlp.to_dict(),
            "train": self.train.to_dict(),
            "seed": self.seed,
            "checkpoint_epochs": list(self.checkpoint_epochs),
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ZooConfig":
        return cls(
            config_id=int(d["config_id"]),
            mlp=MLPConfig.from_dict(d["mlp"]),
            train=TrainConfig(**d["train"]),
            seed=int(d["seed"]),
            checkpoint_epochs=tuple(int(e) for e in d["checkpoint_epochs"]),
            split=d.get("split", "train"),
        )


@dataclass
class Checkpoint:
    """One stored zoo member: a trained MLP at one epoch, with its provenance and accuracies.

    ``weights`` is the MLP serialised as a safetensors blob (:meth:`MLP.to_bytes`): exact, self-describing
    (config in the header) and safe to load (no pickle).
    """

    model_id: str
    task: str
    config: ZooConfig
    epoch: int
    weights: bytes = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return self.config.split

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def stage(self) -> str:
        """``early`` / ``middle`` / ``final``: which of the configuration's checkpoints this is."""
        epochs = self.config.checkpoint_epochs
        if self.epoch == epochs[-1]:
            return "final"
        return "early" if self.epoch == epochs[0] else "middle"

    def to_module(self) -> MLP:
        """The checkpoint as an :class:`MLP` in eval mode."""
        model = MLP.from_bytes(self.weights, source=f"zoo checkpoint {self.model_id}")
        model.source = {"model_id": self.model_id, "task": self.task}
        return model

    def row(self) -> dict:
        """The checkpoint as one row of the zoo's parquet shards (see :mod:`hubedit.zoo.dataset`)."""
        c = self.config
        return {
            "model_id": self.model_id,
            "task": self.task,
            "config_id": c.config_id,
            "epoch": self.epoch,
            "stage": self.stage,
            "seed": c.seed,
            "config": json.dumps(c.to_dict(), sort_keys=True),
            "depth": c.mlp.depth,
            "hidden": list(c.mlp.hidden),
            "activation": c.mlp.activation,
            "norm": c.mlp.norm,
            "dropout": c.mlp.dropout,
            "n_skips": len(c.mlp.skips),
            "batch_size": c.train.batch_size,
            "lr": c.train.lr,
            "weight_decay": c.train.weight_decay,
            "train_accuracy": self.metrics.get("train_accuracy"),
            "validation_accuracy": self.metrics.get("validation_accuracy"),
            "test_accuracy": self.metrics.get("test_accuracy"),
            "weights": self.weights,
        }

    @classmethod
    def from_row(cls, row: dict) -> "Checkpoint":
        metrics = {k: float(row[k]) for k in ("train_accuracy", "validation_accuracy", "test_accuracy") if row.get(k) is not None}
        return cls(
            model_id=row["model_id"],
            task=row["task"],
            config=ZooConfig.from_dict(json.loads(row["config"])),
            epoch=int(row["epoch"]),
            weights=bytes(row["weights"]),
            metrics=metrics,
        )


def model_id(task: str, config_id: int, epoch: int) -> str:
    return f"{task}-c{config_id:05d}-e{epoch:03d}"
