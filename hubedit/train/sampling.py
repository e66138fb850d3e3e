"""Deterministic per-step sampling of zoo models and data points (so a resumed run continues exactly)."""

from __future__ import annotations

import math

import torch


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator for one (seed, step, stream): independent of how many steps ran before a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1))


def sample_models(n_models: int, per_step: int, seed: int, step: int, rank: int, world: int) -> list[int]:
    """Indices of the zoo models a process trains on at ``step``: one global draw, split across processes."""
    g = step_generator(seed, step, 0)
    total = min(n_models, per_step * world)
    idx = torch.randperm(n_models, generator=g)[:total]
    return idx[rank::world].tolist()


def sample_points(n_points: int, per_step: int, seed: int, step: int, rank: int) -> torch.Tensor:
    g = step_generator(seed, step, 1 + rank)
    return torch.randint(n_points, (per_step,), generator=g)


def sample_lambdas(k: int, lam_range: tuple[float, float], seed: int, step: int, rank: int) -> torch.Tensor:
    """Log-uniform lambdas in ``lam_range`` (one per model) for lambda-conditioned editors."""
    g = step_generator(seed, step, 101 + rank)
    lo, hi = math.log(lam_range[0]), math.log(lam_range[1])
    return torch.exp(lo + (hi - lo) * torch.rand(k, generator=g, dtype=torch.float64)).float()
