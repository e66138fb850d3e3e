"""Sampling of zoo configurations (paper A.6; the ranges are those of hubedit/DESIGN.md's zoo table).

Every configuration is drawn from its own random stream, ``numpy.random.default_rng([seed, config_id])``,
so configuration ``i`` of a zoo does not depend on how many configurations are sampled: the ``small``
preset's configurations are the first ones of the ``paper`` preset with the same seed. The split into
train / validation / test is *by configuration* (all checkpoints of a configuration share its split),
drawn from a separate stream of the zoo seed with exact counts. No global random state is touched.

Sampling order for one configuration (the paper's): depth; hidden widths, each drawn from the choices at
least as wide as the previous layer (so widths never decrease); dropout, activation, normalisation
(global to the model); for each hidden layer ``dst >= 2`` a number of incoming skip connections, drawn
uniformly from the feasible counts ``0 .. min(2, dst - 1)``, and that many distinct sources from the
valid layers ``0 .. dst - 2`` (0 is the input); batch size, learning rate and weight decay (log-uniform);
and a 63-bit training seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..mlp import MLPConfig
from .records import SPLITS, TrainConfig, ZooConfig

__all__ = [
    "DEPTHS",
    "WIDTHS",
    "DROPOUTS",
    "NORM_CHOICES",
    "ACTIVATION_CHOICES",
    "SKIP_COUNTS",
    "BATCH_SIZES",
    "LR_RANGE",
    "WEIGHT_DECAY_RANGE",
    "sample_config",
    "sample_configs",
    "assign_splits",
]

DEPTHS = (1, 2, 3, 4)
WIDTHS = (8, 16, 32, 64)
DROPOUTS = (0.0, 0.1, 0.2)
NORM_CHOICES = ("none", "batchnorm", "layernorm")
ACTIVATION_CHOICES = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
SKIP_COUNTS = (0, 1, 2)
BATCH_SIZES = (32, 64, 128, 256)
LR_RANGE = (1e-4, 1e-2)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
OUT_FEATURES = 2

_SPLIT_STREAM = 0x5E1  # salt of the split assignment stream (kept apart from the per-config streams)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_config(
    n_features: int,
    config_id: int,
    seed: int,
    epochs: int,
    checkpoint_epochs: Sequence[int],
    split: str = "train",
) -> ZooConfig:
    """Configuration ``config_id`` of the zoo with seed ``seed`` (independent of the other configurations)."""
    rng = np.random.default_rng([int(seed), int(config_id)])
    depth = int(rng.choice(DEPTHS))
    hidden: list[int] = []
    for _ in range(depth):
        allowed = [w for w in WIDTHS if not hidden or w >= hidden[-1]]
        hidden.append(int(rng.choice(allowed)))
    dropout = float(rng.choice(DROPOUTS))
    activation = str(rng.choice(ACTIVATION_CHOICES))
    norm = str(rng.choice(NORM_CHOICES))
    skips: list[tuple[int, int]] = []
    for dst in range(2, depth + 1):
        sources = list(range(0, dst - 1))  # 0 .. dst-2
        k = int(rng.choice([c for c in SKIP_COUNTS if c <= len(sources)]))
        if k:
            chosen = rng.choice(len(sources), size=k, replace=False)
            skips.extend((sources[int(i)], dst) for i in chosen)
    batch_size = int(rng.choice(BATCH_SIZES))
    lr = _log_uniform(rng, *LR_RANGE)
    weight_decay = _log_uniform(rng, *WEIGHT_DECAY_RANGE)
    train_seed = int(rng.integers(0, 2**63 - 1, dtype=np.int64))
    mlp = MLPConfig(
        in_features=int(n_features),
        hidden=tuple(hidden),
        out_features=OUT_FEATURES,
        activation=activation,
        norm=norm,
        dropout=dropout,
        skips=tuple(skips),
    )
    return ZooConfig(
        config_id=int(config_id),
        mlp=mlp,
        train=TrainConfig(batch_size=batch_size, lr=lr, weight_decay=weight_decay, epochs=int(epochs)),
        seed=train_seed,
        checkpoint_epochs=tuple(int(e) for e in checkpoint_epochs),
        split=split,
    )


def assign_splits(n: int, seed: int, split_fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> list[str]:
    """Split name of each of ``n`` configurations: exact counts, random assignment from ``seed``.

    Counts are ``round(f * n)`` for validation and test (at least one each when their fraction is
    positive and ``n >= 3``); train takes the rest.
    """
    fr = tuple(float(f) for f in split_fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}")
    n_val, n_test = (int(round(f * n)) for f in fr[1:])
    if n >= 3:
        n_val = max(n_val, 1) if fr[1] > 0 else 0
        n_test = max(n_test, 1) if fr[2] > 0 else 0
    n_val, n_test = min(n_val, n), min(n_test, max(n - n_val, 0))
    labels = np.array(["train"] * (n - n_val - n_test) + ["validation"] * n_val + ["test"] * n_test, dtype=object)
    perm = np.random.default_rng([int(seed), _SPLIT_STREAM]).permutation(n)
    out = np.empty(n, dtype=object)
    out[perm] = labels
    return [str(s) for s in out]


def sample_configs(
    task: str,
    n_features: int,
    n: int,
    seed: int,
    epochs: int,
    checkpoint_epochs: Sequence[int],
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> list[ZooConfig]:
    """``n`` configurations of a zoo for ``task`` (ids ``0 .. n-1``), each with its split set.

    ``task`` only labels errors (the configurations depend on ``n_features``, not on the task's data).
    Deterministic for ``seed``; configuration ``i`` is the same for every ``n > i``.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    cps = tuple(int(e) for e in checkpoint_epochs)
    if not cps or list(cps) != sorted(set(cps)) or cps[0] < 1 or cps[-1] > epochs:
        raise ConfigError(
            f"checkpoint_epochs for task {task!r} must be strictly increasing epochs in 1..{epochs}, got {list(cps)}"
        )
    splits = assign_splits(n, seed, split_fractions)
    assert set(splits) <= set(SPLITS)
    return [sample_config(n_features, i, seed, epochs, cps, splits[i]) for i in range(n)]
