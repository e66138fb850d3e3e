"""Weight-pruning baselines (paper section 5, "Pruning"; A.4).

Every method is *global unstructured* pruning over all weight matrices of an :class:`~hubedit.MLP`:
the linear layers ``layers.{i}.weight`` (the output layer included) and the skip maps
``skips.{s}_{d}.weight``. Biases and normalisation parameters are never pruned. ``keep`` is the
fraction of weights kept, in ``(0, 1]``; exactly :func:`n_kept` ``= round(keep * n_weights)`` weights
survive, chosen as the largest importance scores over all matrices together, ties broken by position
(the earlier tensor in :func:`prunable_names` order, then the earlier row-major index, is kept).
Pruned weights are set to exactly ``0``; every method returns an edited deep copy and leaves the input
model untouched. Every method except the lottery ticket leaves all non-weight parameters bit-identical.

========================  ===================================================================================
``random_prune``          uniform random scores from a seeded generator
``magnitude_prune``       ``|w|``
``grad_prune``            first-order Taylor importance ``|w * dL/dw|`` (Molchanov et al. 2017) by default, or the
                          plain gradient magnitude ``|dL/dw|`` (``criterion="gradient"``); ``L`` = mean
                          cross-entropy on the given data, model in eval mode, one shot
``snip_prune``            SNIP connection sensitivity ``|dL/dc| = |g * w|`` (Lee et al. 2019) at the given
                          (trained) weights, on one batch of the data (default: all of it); with
                          ``iterations`` rounds (default 5) it re-scores the surviving weights of the masked
                          network each round (iterative SNIP), pruning geometrically towards ``keep``
``lottery_ticket_prune``  iterative magnitude pruning with rewinding (Frankle & Carbin 2019), retraining
                          with the mask fixed on the given data between rounds
========================  ===================================================================================

SNIP's normalisation ``|g*w| / sum |g*w|`` does not change the ranking and is omitted. With
``iterations=1`` on the same data, SNIP and Taylor grad importance select the same weights (both are
``|g * w|``); what separates them here is SNIP's iterative re-scoring of the masked network (and,
optionally, its batch).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..mlp import MLP
from ._common import ce_loss, check_data, clone_model, guarded_epochs, jsd

__all__ = [
    "prunable_names",
    "n_kept",
    "masks_of",
    "sparsity",
    "apply_masks",
    "global_topk_masks",
    "random_prune",
    "magnitude_prune",
    "grad_scores",
    "grad_prune",
    "snip_scores",
    "snip_prune",
    "lottery_ticket_prune",
]


# --- utilities ---------------------------------------------------------------------------------------------------
def prunable_names(model: MLP) -> list[str]:
    """Names (as in ``model.state_dict()``) of the prunable weight matrices, in a fixed order:
    ``layers.0.weight .. layers.{depth}.weight`` then the skip weights in sorted ``(src, dst)`` order."""
    names = [f"layers.{i}.weight" for i in range(len(model.layers))]
    names += [f"skips.{s}_{d}.weight" for s, d in model.config.skips]
    return names


def _weights(model: MLP) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in prunable_names(model)}


def n_kept(n_weights: int, keep: float) -> int:
    """Number of weights kept at fraction ``keep``: ``round(keep * n_weights)`` (Python rounding)."""
    keep = float(keep)
    if not (0.0 < keep <= 1.0) or math.isnan(keep):
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep}")
    return int(round(keep * n_weights))


def masks_of(model: MLP) -> dict[str, torch.Tensor]:
    """Boolean masks of the kept (non-zero) weights, keyed by the names of :func:`prunable_names`.

    A weight that is exactly zero counts as pruned (a trained weight is never exactly zero in practice;
    a model that already had zero weights, e.g. masked input columns, reports them as pruned)."""
    return {n: (w.detach() != 0) for n, w in _weights(model).items()}


def sparsity(model: MLP) -> float:
    """Fraction of weights that are exactly zero."""
    m = masks_of(model)
    return 1.0 - sum(int(v.sum()) for v in m.values()) / model.n_weights


@torch.no_grad()
def apply_masks(model: MLP, masks: dict[str, torch.Tensor]) -> MLP:
    """Zero, in place, the weights where ``masks`` is False; returns ``model``."""
    for n, w in _weights(model).items():
        w.mul_(masks[n].to(w.dtype))
    return model


def global_topk_masks(model: MLP, scores: dict[str, torch.Tensor], k: int,
                      allowed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks keeping the ``k`` highest ``scores`` over all prunable tensors together.

    Ties are broken by position (stable sort: earlier tensor, then earlier row-major index, is kept).
    ``allowed`` (optional masks) restricts the choice to those weights; ``k`` must not exceed their count."""
    names = prunable_names(model)
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64) for n in names])
    if torch.isnan(flat).any():
        raise ValueError("importance scores contain NaN")
    if allowed is not None:
        ok = torch.cat([allowed[n].reshape(-1) for n in names])
        if k > int(ok.sum()):
            raise ValueError(f"cannot keep {k} weights out of {int(ok.sum())} allowed")
        flat = torch.where(ok, flat, torch.full_like(flat, -math.inf))
    order = torch.sort(flat, descending=True, stable=True).indices
    keep_flat = torch.zeros(flat.numel(), dtype=torch.bool)
    keep_flat[order[:k]] = True
    out, start = {}, 0
    for n in names:
        numel = scores[n].numel()
        out[n] = keep_flat[start:start + numel].reshape(scores[n].shape)
        start += numel
    return out


def _prune_by_scores(model: MLP, keep: float | None, score_fn: Callable[[MLP], dict[str, torch.Tensor]],
                     n_keep: int | None = None) -> MLP:
    """Keep the highest-scoring weights: ``n_kept(n_weights, keep)`` of them, or exactly ``n_keep`` (0 allowed)."""
    out = clone_model(model)
    if (keep is None) == (n_keep is None):
        raise ValueError("give exactly one of keep (a fraction) and n_keep (a number of weights)")
    if n_keep is not None and not 0 <= int(n_keep) <= out.n_weights:
        raise ValueError(f"n_keep must be in 0..{out.n_weights}, got {n_keep}")
    k = n_kept(out.n_weights, keep) if n_keep is None else int(n_keep)
    masks = global_topk_masks(out, score_fn(out), k)
    apply_masks(out, masks)
    return out.eval()


# --- one-shot methods --------------------------------------------------------------------------------------------
def random_prune(model: MLP, keep: float, seed: int = 0) -> MLP:
    """Keep ``n_kept`` weights chosen uniformly at random (deterministic for a ``seed``)."""
    def scores(m: MLP) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(int(seed))
        return {n: torch.rand(w.shape, generator=g, dtype=torch.float64) for n, w in _weights(m).items()}

    return _prune_by_scores(model, keep, scores)


def magnitude_prune(model: MLP, keep: float | None = None, *, n_keep: int | None = None) -> MLP:
    """Keep the ``n_kept`` weights of largest ``|w|`` globally (or exactly ``n_keep`` of them, 0 allowed: used to
    match another method's per-model weight count)."""
    return _prune_by_scores(model, keep, lambda m: {n: w.detach().abs() for n, w in _weights(m).items()}, n_keep)


def _loss_grads(model: MLP, X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy w.r.t. the prunable weights, model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        ws = _weights(model)
        with torch.enable_grad():
            grads = torch.autograd.grad(ce_loss(model, X, y), list(ws.values()))
    finally:
        model.train(was_training)
    return {n: g.detach() for n, g in zip(ws, grads)}


def grad_scores(model: MLP, X: torch.Tensor, y: torch.Tensor, criterion: str = "taylor") -> dict[str, torch.Tensor]:
    """Importance of each weight from the gradient of the mean cross-entropy on ``(X, y)`` (eval mode):
    ``"taylor"``: ``|w * dL/dw|`` (first-order Taylor estimate of the loss change when ``w`` is removed);
    ``"gradient"``: ``|dL/dw|``."""
    check_data(model, X, y)
    if criterion not in ("taylor", "gradient"):
        raise ValueError(f"criterion must be 'taylor' or 'gradient', got {criterion!r}")
    grads = _loss_grads(model, X, y)
    ws = _weights(model)
    if criterion == "gradient":
        return {n: g.abs() for n, g in grads.items()}
    return {n: (g * ws[n].detach()).abs() for n, g in grads.items()}


def grad_prune(model: MLP, keep: float, X: torch.Tensor, y: torch.Tensor, *, criterion: str = "taylor") -> MLP:
    """Keep the ``n_kept`` weights of largest gradient importance (:func:`grad_scores`), one shot, all data."""
    return _prune_by_scores(model, keep, lambda m: grad_scores(m, X, y, criterion))


def snip_scores(model: MLP, X: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity ``|dL/dc_j|`` at ``c = 1`` where the weight is ``c_j * w_j``: equals
    ``|g_j * w_j|`` with ``g = dL/dw`` (mean cross-entropy on ``(X, y)``, eval mode)."""
    check_data(model, X, y)
    grads = _loss_grads(model, X, y)
    ws = _weights(model)
    return {n: (g * ws[n].detach()).abs() for n, g in grads.items()}


def snip_prune(model: MLP, keep: float, X: torch.Tensor, y: torch.Tensor, *, iterations: int = 5,
               batch_size: int | None = None, seed: int = 0) -> MLP:
    """SNIP (Lee et al. 2019) on the trained weights (SNIP proper scores at initialisation; the models
    edited here are trained, so the sensitivity is taken at the given weights).

    Scores are computed on one batch per round: ``batch_size`` points drawn (seeded) from ``(X, y)``, or
    all of them (``batch_size=None``, default: the editing split is small). With ``iterations > 1``
    (default 5, the paper's "reduced number of iterations"; ``iterations=1`` is one-shot SNIP) the network
    is pruned in rounds to ``keep ** (t / iterations)`` of the weights, each round re-scoring the survivors
    of the masked network (iterative SNIP, cf. Verdenius et al. 2020, de Jorge et al. 2021); the last
    round keeps exactly :func:`n_kept` weights."""
    check_data(model, X, y)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    out = clone_model(model)
    n = out.n_weights
    k_final = n_kept(n, keep)
    g = torch.Generator().manual_seed(int(seed))
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in _weights(out).items()}
    for t in range(1, iterations + 1):
        k = k_final if t == iterations else max(k_final, int(round(n * keep ** (t / iterations))))
        if batch_size is None or batch_size >= len(X):
            xb, yb = X, y
        else:
            idx = torch.randperm(len(X), generator=g)[:batch_size]
            xb, yb = X[idx], y[idx]
        masks = global_topk_masks(out, snip_scores(out, xb, yb), k, allowed=masks)
        apply_masks(out, masks)
    return out.eval()


# --- lottery ticket ------------------------------------------------------------------------------------------------
def lottery_ticket_prune(
    model: MLP,
    keep: float,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    iterations: int = 3,
    epochs_per_iteration: int = 5,
    rewind: str = "original",
    loss: str = "jsd",
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> MLP:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019), cheap version.

    Round ``t = 1..iterations``: prune the surviving weights globally by magnitude down to
    ``keep ** (t / iterations)`` of all weights (each round removes the same fraction
    ``1 - keep ** (1 / iterations)`` of the survivors; the last round keeps exactly :func:`n_kept`), then
    rewind and retrain for ``epochs_per_iteration`` epochs on ``X`` with the mask fixed.

    ``rewind="original"``: the survivors (and all biases / norm parameters) are reset to the values of the
    input model, which is the *trained* model; so this is the fine-tuning-rewind variant (rewinding to the
    end of training, cf. Renda et al. 2020), and only the mask carries over between rounds.
    ``rewind="none"``: no reset, training continues from the previous round's weights.

    Retraining loss: ``loss="jsd"`` (default) distils the original model, JSD(original softmax, pruned
    softmax) on ``X`` (labels unused), which targets the function-preservation objective the evaluation
    measures; ``loss="ce"`` uses cross-entropy against ``y``. Adam, learning rate ``lr``, minibatches of
    ``batch_size`` (seeded shuffling), module in eval mode (dropout off, BatchNorm running statistics
    frozen: the function optimised is the deployed one). All parameters other than pruned weights train.
    """
    check_data(model, X, y)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if rewind not in ("original", "none"):
        raise ValueError(f"rewind must be 'original' or 'none', got {rewind!r}")
    if loss not in ("jsd", "ce"):
        raise ValueError(f"loss must be 'jsd' or 'ce', got {loss!r}")
    if loss == "ce" and y is None:
        raise ValueError("loss='ce' needs labels y")
    original = clone_model(model)
    with torch.no_grad():
        target = original.predict_proba(X)
    out = clone_model(model)
    n = out.n_weights
    k_final = n_kept(n, keep)
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in _weights(out).items()}
    g = torch.Generator().manual_seed(int(seed))
    for t in range(1, iterations + 1):
        k = k_final if t == iterations else max(k_final, int(round(n * keep ** (t / iterations))))
        masks = global_topk_masks(out, {nm: w.detach().abs() for nm, w in _weights(out).items()}, k, allowed=masks)
        if rewind == "original":
            out.load_state_dict(original.state_dict())
        apply_masks(out, masks)
        _train_masked(out, masks, X, y, target, loss=loss, epochs=epochs_per_iteration, lr=lr,
                      batch_size=batch_size, generator=g)
    apply_masks(out, masks)
    return out.eval()


def _train_masked(model: MLP, masks: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor | None,
                  target: torch.Tensor, *, loss: str, epochs: int, lr: float, batch_size: int,
                  generator: torch.Generator) -> None:
    """Train ``model`` (eval mode) with the pruned weights held at exactly zero (an epoch that
    diverges is undone and ends training, see :func:`guarded_epochs`)."""
    if epochs <= 0:
        return
    model.eval()
    weights = _weights(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(X)
    bs = max(1, min(int(batch_size), n))

    def one_epoch() -> bool:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            logits = model(X[idx])
            if loss == "jsd":
                lval = jsd(target[idx], torch.softmax(logits, -1)).mean()
            else:
                lval = F.cross_entropy(logits, y[idx].long())
            opt.zero_grad(set_to_none=True)
            if not bool(torch.isfinite(lval)):
                return False
            lval.backward()
            for nm, w in weights.items():
                if w.grad is not None:
                    w.grad.mul_(masks[nm].to(w.dtype))
            opt.step()
            apply_masks(model, masks)
        return True

    with torch.enable_grad():
        guarded_epochs(model, epochs, one_epoch)
