"""Small helpers shared by the baselines (private)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..metrics.scores import jsd
from ..mlp import MLP

__all__ = ["jsd", "clone_model", "ce_loss", "check_data", "guarded_epochs"]


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


def guarded_epochs(model: MLP, epochs: int, one_epoch: Callable[[], bool]) -> int:
    """Run ``one_epoch()`` ``epochs`` times on ``model``. ``one_epoch`` returns False (and stops early) when a
    step's loss is not finite; such an epoch, or one that leaves a parameter non-finite, is undone and ends
    training: the model keeps its last finite weights. Returns the number of epochs kept.

    Retraining baselines (FS & Retrain, lottery ticket) run on every zoo model, some of which sit close to
    instability; one diverging model must not turn a whole evaluation into NaN."""
    for e in range(int(epochs)):
        good = {k: v.clone() for k, v in model.state_dict().items()}
        ok = one_epoch()
        if not ok or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            model.load_state_dict(good)
            return e
    return int(epochs)
