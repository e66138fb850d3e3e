"""Data-minimisation baselines (paper section 5, "Data Minimization"; A.4.1): FS and FS & Retrain.

Both rank the input features by Breiman's permutation feature importance (PFI) and mask the least
important ones. A masked feature takes the value ``0`` — the feature mean, since the tasks' features are
z-scored — which is implemented in the weights: the masked columns of the first layer's weight and of
every skip map out of the input layer are zeroed, so the edited model computes exactly what the original
model computes on inputs whose masked columns are set to ``0``, whatever values those columns hold.

* :func:`feature_selection` (FS): the original model fed the masked input; nothing else changes.
* :func:`fs_retrain` (FS & Retrain): knowledge distillation (Hinton et al. 2015) into a student of the
  same architecture, initialised from the teacher, fed masked inputs, loss = JSD(teacher softmax on the
  full input, student softmax on the masked input), 100 epochs by default; the masked columns are zero
  at the start and held at zero throughout.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..mlp import MLP
from ._common import check_data, clone_model, guarded_epochs, jsd

__all__ = [
    "permutation_importance",
    "select_features",
    "input_weight_names",
    "mask_input_features",
    "feature_selection",
    "fs_retrain",
]


@torch.no_grad()
def permutation_importance(
    model: MLP,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    n_repeats: int = 5,
    seed: int = 0,
    metric: str = "accuracy",
) -> torch.Tensor:
    """Breiman's permutation feature importance, shape ``(F,)``, float64.

    For each feature ``j`` and repeat ``r``, column ``j`` of ``X`` is shuffled (an independent seeded
    permutation of the rows per feature and repeat, as in ``sklearn.inspection.permutation_importance``)
    and the score drop is recorded; the importance is the mean over repeats.
    ``metric="accuracy"`` (default, Breiman / sklearn's default scorer): drop in accuracy of the argmax
    prediction. ``metric="loss"``: increase of the mean cross-entropy against ``y`` (finer ranking, no ties
    between features that never flip a decision). The model runs in eval mode.
    """
    check_data(model, X, y)
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    was_training = model.training
    model.eval()
    try:
        n, f = X.shape
        y = y.long()

        def score(logits: torch.Tensor) -> torch.Tensor:  # (..., N, C) -> (...,): higher is better
            if metric == "accuracy":
                return (logits.argmax(-1) == y).double().mean(-1)
            lp = torch.log_softmax(logits.double(), -1)
            return lp.gather(-1, y.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)

        base = score(model(X))
        g = torch.Generator().manual_seed(int(seed))
        drops = torch.zeros(n_repeats, f, dtype=torch.float64)
        eye = torch.eye(f, dtype=torch.bool)
        for r in range(n_repeats):
            perms = torch.argsort(torch.rand(f, n, generator=g), dim=1)  # (F, N): one permutation per feature
            shuffled = X[perms.T, torch.arange(f)]  # (N, F): column j permuted by perms[j]
            # (F, N, F): copy j of X with only column j replaced by its shuffled version
            Xp = torch.where(eye[:, None, :], shuffled.unsqueeze(0), X.unsqueeze(0))
            logits = model(Xp.reshape(f * n, f)).reshape(f, n, -1)
            drops[r] = base - score(logits)
        return drops.mean(0)
    finally:
        model.train(was_training)


def select_features(importance: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices (sorted ascending, int64) of the ``n_keep`` most important features; ties are broken in
    favour of the lower feature index."""
    importance = torch.as_tensor(importance, dtype=torch.float64).reshape(-1)
    f = importance.numel()
    if not 0 <= int(n_keep) <= f:
        raise ValueError(f"n_keep must be in 0..{f}, got {n_keep}")
    order = torch.sort(importance, descending=True, stable=True).indices
    return torch.sort(order[: int(n_keep)]).values


def input_weight_names(model: MLP) -> list[str]:
    """Names of the weight matrices that read the input layer: ``layers.0.weight`` and every
    ``skips.0_{d}.weight``."""
    return ["layers.0.weight"] + [f"skips.0_{d}.weight" for s, d in model.config.skips if s == 0]


def _input_weights(model: MLP) -> list[torch.nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] for n in input_weight_names(model)]


def _feature_mask(model: MLP, kept: Sequence[int] | torch.Tensor) -> torch.Tensor:
    f = model.config.in_features
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1)
    if kept.numel() and (kept.min() < 0 or kept.max() >= f):
        raise ValueError(f"kept feature indices must be in 0..{f - 1}, got {kept.tolist()}")
    mask = torch.zeros(f, dtype=torch.bool)
    mask[kept] = True
    return mask


@torch.no_grad()
def mask_input_features(model: MLP, kept: Sequence[int] | torch.Tensor) -> MLP:
    """A deep copy of ``model`` whose input columns outside ``kept`` are zero in every weight reading
    the input (equivalent to feeding ``0`` for those features)."""
    out = clone_model(model)
    mask = _feature_mask(out, kept)
    for w in _input_weights(out):
        w.mul_(mask.to(w.dtype))
    return out


def _importance_or_pfi(model, X, y, importance, n_repeats, seed):
    if importance is not None:
        importance = torch.as_tensor(importance, dtype=torch.float64).reshape(-1)
        if importance.numel() != model.config.in_features:
            raise ValueError(f"expected {model.config.in_features} importances, got {importance.numel()}")
        return importance
    if X is None or y is None:
        raise ValueError("pass either importance= or data X and labels y to compute permutation importance")
    return permutation_importance(model, X, y, n_repeats=n_repeats, seed=seed)


def feature_selection(
    model: MLP,
    X: torch.Tensor | None,
    y: torch.Tensor | None,
    n_keep: int,
    *,
    importance: torch.Tensor | None = None,
    n_repeats: int = 5,
    seed: int = 0,
) -> tuple[MLP, torch.Tensor]:
    """FS baseline: keep the ``n_keep`` features of highest PFI, mask the rest by zeroing their input
    weight columns. Returns ``(edited model, kept indices)``.

    ``importance`` (shape ``(F,)``) skips the PFI computation; pass it when sweeping ``n_keep`` on one
    model (``X`` and ``y`` may then be ``None``)."""
    imp = _importance_or_pfi(model, X, y, importance, n_repeats, seed)
    kept = select_features(imp, n_keep)
    return mask_input_features(model, kept), kept


def fs_retrain(
    model: MLP,
    X: torch.Tensor,
    n_keep: int,
    *,
    y: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    kept: Sequence[int] | torch.Tensor | None = None,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    n_repeats: int = 5,
) -> tuple[MLP, torch.Tensor]:
    """FS & Retrain baseline: distil ``model`` into a same-architecture student on masked inputs.

    The kept features are ``kept`` if given, else the top ``n_keep`` by ``importance`` (or by PFI
    computed on ``(X, y)``). The student starts as the FS model (teacher weights, masked columns zero) and
    is trained with Adam (``lr``, minibatches of ``batch_size``, seeded shuffling) for ``epochs`` epochs
    over ``X`` on ``mean JSD(teacher(X), student(X_masked))``, ``X_masked`` = ``X`` with masked columns 0.
    The masked weight columns get zero gradient (their inputs are 0) and are additionally re-zeroed after
    every step, so they are exactly zero at the end. Module in eval mode during training (dropout off,
    BatchNorm running statistics frozen): the deployed function is what is optimised. An epoch that
    diverges (non-finite loss or weights) is undone and ends training (``_common.guarded_epochs``).
    Returns ``(student, kept indices)``; the teacher is untouched.
    """
    check_data(model, X, y)
    if kept is None:
        kept = select_features(_importance_or_pfi(model, X, y, importance, n_repeats, seed), n_keep)
    kept = torch.sort(torch.as_tensor(kept, dtype=torch.long).reshape(-1)).values
    student = mask_input_features(model, kept)
    mask = _feature_mask(student, kept).to(X.dtype)
    with torch.no_grad():
        target = model.predict_proba(X)
    Xm = X * mask
    if epochs > 0 and len(X) > 0:
        in_weights = _input_weights(student)
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        g = torch.Generator().manual_seed(int(seed))
        n = len(X)
        bs = max(1, min(int(batch_size), n))
        student.eval()

        def one_epoch() -> bool:
            perm = torch.randperm(n, generator=g)
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                loss = jsd(target[idx], F.softmax(student(Xm[idx]), -1)).mean()
                opt.zero_grad(set_to_none=True)
                if not bool(torch.isfinite(loss)):
                    return False
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for w in in_weights:
                        w.mul_(mask)
            return True

        with torch.enable_grad():
            guarded_epochs(student, epochs, one_epoch)
    return student.eval(), kept
