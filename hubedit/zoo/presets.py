"""Named sizes of a zoo build: ``tiny`` (tests, quickstart), ``small`` (reproduction in hours), ``paper``.

Measured on the 2-core development machine (2 worker processes, see ``scripts/bench_zoo_training.py``):
``tiny`` builds in about 30-60 s for Adult and 10 s for Bank; ``small`` in about 15-25 min (Adult) and
5-13 min (Bank); ``paper`` is projected at about 1.7 h (Adult) and 0.3 h (Bank).

Checkpoints (paper A.6: "one early, one at the midpoint, and one at the final epoch") are stored after
epochs ``max(1, epochs // 20)``, ``epochs // 2`` and ``epochs`` (duplicates removed): for 60 epochs that is
3 / 30 / 60. Epoch 3 is early enough that slow configurations (small learning rate, large batches) are
still clearly weaker, which gives the population the spread of quality that editors should see, while
the fast ones are already reasonable models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

__all__ = ["ZooPreset", "PRESETS", "get_preset", "default_checkpoint_epochs"]


def default_checkpoint_epochs(epochs: int) -> tuple[int, ...]:
    """Early / middle / final checkpoint epochs for a run of ``epochs`` epochs."""
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    return tuple(sorted({max(1, epochs // 20), max(1, epochs // 2), epochs}))


@dataclass(frozen=True)
class ZooPreset:
    """How big a zoo build is.

    ``max_train_rows`` caps the task's training rows (a fixed, seeded subset) for quick builds; None uses
    them all. ``max_group_size`` is how many configurations the batched trainer trains together (the
    grouping, and therefore the exact floating-point result, depends on it).
    """

    name: str
    n_configs: int
    epochs: int
    checkpoint_epochs: tuple[int, ...] = ()
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    max_train_rows: int | None = None
    max_group_size: int = 256
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.n_configs < 1 or self.epochs < 1:
            raise ConfigError(f"preset {self.name!r}: n_configs and epochs must be positive")
        cps = tuple(int(e) for e in self.checkpoint_epochs) or default_checkpoint_epochs(self.epochs)
        if list(cps) != sorted(set(cps)) or cps[0] < 1 or cps[-1] > self.epochs:
            raise ConfigError(f"preset {self.name!r}: checkpoint epochs {list(cps)} must increase within 1..{self.epochs}")
        object.__setattr__(self, "checkpoint_epochs", cps)
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if self.max_group_size < 1:
            raise ConfigError(f"preset {self.name!r}: max_group_size must be positive")

    def replace(self, *, n_configs: int | None = None, epochs: int | None = None, **kw) -> "ZooPreset":
        """A copy with some fields overridden; changing ``epochs`` recomputes the default checkpoints."""
        d = asdict(self)
        if n_configs is not None:
            d["n_configs"] = int(n_configs)
        if epochs is not None and int(epochs) != self.epochs:
            d["epochs"] = int(epochs)
            if "checkpoint_epochs" not in kw:
                d["checkpoint_epochs"] = ()
        d.update(kw)
        return ZooPreset(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpoint_epochs"] = list(self.checkpoint_epochs)
        d["split_fractions"] = list(self.split_fractions)
        return d


PRESETS: dict[str, ZooPreset] = {
    p.name: p
    for p in (
        ZooPreset(
            "tiny",
            n_configs=32,
            epochs=4,
            description="32 configurations x 4 epochs (checkpoints 1/2/4): tests and the quickstart, well under a minute",
        ),
        ZooPreset(
            "small",
            n_configs=300,
            epochs=60,
            description="300 configurations x 60 epochs: the paper's training recipe on a smaller population",
        ),
        ZooPreset(
            "paper",
            n_configs=4000,
            epochs=60,
            description="4000 configurations x 60 epochs, 12,000 checkpoints: the paper's population (A.6)",
        ),
    )
}


def get_preset(preset: "str | ZooPreset") -> ZooPreset:
    if isinstance(preset, ZooPreset):
        return preset
    try:
        return PRESETS[str(preset)]
    except KeyError:
        raise ConfigError(f"unknown zoo preset {preset!r}; known presets: {', '.join(PRESETS)}") from None
