"""Shared helpers of tests/test_graph.py and tests/test_metanet.py: a local MLP config sampler."""

from __future__ import annotations

import random

import torch

from hubedit.mlp import ACTIVATIONS, MLP, NORMS, MLPConfig


def sample_config(rng: random.Random, in_features: int | None = None, out_features: int | None = None) -> MLPConfig:
    """A random architecture covering every option of the family (widths, norms, activations, skips)."""
    depth = rng.randint(1, 5)
    hidden = tuple(rng.choice([1, 2, 3, 5, 8, 16]) for _ in range(depth))
    skips = []
    for dst in range(2, depth + 1):
        candidates = list(range(0, dst - 1))
        skips += [(s, dst) for s in rng.sample(candidates, rng.randint(0, min(2, len(candidates))))]
    return MLPConfig(
        in_features=in_features or rng.randint(1, 12),
        hidden=hidden,
        out_features=out_features or rng.randint(2, 4),
        activation=rng.choice(ACTIVATIONS),
        norm=rng.choice(NORMS),
        dropout=rng.choice([0.0, 0.1, 0.2]),
        skips=tuple(skips),
        norm_eps=rng.choice([1e-5, 1e-3]),
    )


@torch.no_grad()
def randomise(model: MLP, gen: torch.Generator) -> MLP:
    """Give every parameter and buffer (BatchNorm statistics and counters included) non-default values."""
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t.fill_(int(torch.randint(0, 1000, (1,), generator=gen)))
        elif name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=gen) * 2 + 0.1)
        else:
            t.copy_(torch.randn(t.shape, generator=gen) * 0.7)
    return model.eval()


def sampled_models(n: int, seed: int = 0, **kw) -> list[MLP]:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    return [randomise(MLP(sample_config(rng, **kw)), gen) for _ in range(n)]
