"""Small helpers shared by the baselines (private)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..evaluation.metrics import jsd
from ..mlp import MLP

__all__ = ["jsd", "clone_model", "ce_loss", "check_data"]


def clone_model(model: MLP) -> MLP:
    """A deep copy in eval mode with trainable parameters (the input model is never changed)."""
    out = copy.deepcopy(model)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def ce_loss(model: MLP, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(X), y.long())


def check_data(model: MLP, X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    model.check_input(X)
    if y is not None and y.shape != (X.shape[0],):
        raise ValueError(f"expected labels of shape ({X.shape[0]},), got {tuple(y.shape)}")
