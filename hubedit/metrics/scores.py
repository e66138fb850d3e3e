"""Metrics in torch: function-space divergence (JSD), equalised odds difference, per-group rates, accuracy.

Everything here accepts a leading batch of *models* where it says so (shape ``(..., N)`` or
``(..., N, C)``), computes it without a Python loop over models, and is differentiable where it
says so, so the same code serves training losses, evaluation and reports.

Conventions (matching fairlearn, checked in the tests):

* ``equalized_odds_difference`` is ``fairlearn.metrics.equalized_odds_difference`` with its defaults
  (``method="between_groups"``, ``agg="worst_case"``): the larger of the TPR gap and the FPR gap, a gap
  being ``max - min`` over the groups *present in* ``sensitive``.
* A group with **no positives** has TPR = 0, a group with **no negatives** has FPR = 0. This is what
  fairlearn returns (its rates come from ``sklearn.metrics.confusion_matrix(normalize="true")``, which
  turns 0/0 into 0), so such a group can open a gap of up to 1 on its own. Pass ``undefined="ignore"``
  to leave undefined rates out of the gap instead (useful for losses on small batches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LN2",
    "jsd",
    "jsd_from_logits",
    "equalized_odds_difference",
    "group_rates",
    "accuracy",
]

#: Upper bound of the Jensen-Shannon divergence in nats (the y-coordinate of the hypervolume reference point).
LN2 = math.log(2.0)

ArrayLike = Any  # torch.Tensor, numpy array or sequence


# --------------------------------------------------------------------------------------------------
# Jensen-Shannon divergence
# --------------------------------------------------------------------------------------------------
def _plogp_over(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``a * log(a / m)`` elementwise with ``0 log 0 = 0``, and zero (not NaN) gradients where ``a == 0``.

    Both branches of the final ``where`` are finite everywhere (the "double where"), so the masked
    branch cannot leak ``0 * inf = NaN`` into the backward pass. Where ``a > 0``, ``m >= a / 2 > 0``.
    """
    pos = a > 0
    a_safe = torch.where(pos, a, torch.ones_like(a))
    m_safe = torch.where(pos, m, torch.ones_like(m))
    return torch.where(pos, a_safe * torch.log(a_safe / m_safe), torch.zeros_like(m_safe))


def jsd(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen-Shannon divergence of probability vectors along ``dim`` (natural log, in ``[0, ln 2]``).

    ``JSD(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``. Reduces only ``dim``
    (one value per point; take ``.mean(-1)`` for the mean over points). ``p`` and ``q`` broadcast, e.g.
    a reference ``(N, C)`` against a batch of edited models ``(M, N, C)``. Differentiable; exact zeros
    are safe (``0 log 0 = 0``, finite gradients).
    """
    m = 0.5 * (p + q)
    out = 0.5 * (_plogp_over(p, m) + _plogp_over(q, m)).sum(dim)
    return out.clamp(0.0, LN2)


def jsd_from_logits(logits_a: torch.Tensor, logits_b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """:func:`jsd` of ``softmax(logits_a)`` and ``softmax(logits_b)``, computed in log space (stable for
    saturated outputs; ``-inf`` logits are allowed and give finite gradients)."""
    lp = F.log_softmax(logits_a, dim=dim)
    lq = F.log_softmax(logits_b, dim=dim)
    lm = torch.logaddexp(lp, lq) - LN2

    def term(la: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(la)  # la = -inf  <=>  probability exactly 0; then lm may be -inf too
        la_s = torch.where(ok, la, torch.zeros_like(la))
        lm_s = torch.where(ok, lm, torch.zeros_like(lm))
        return torch.where(ok, la_s.exp() * (la_s - lm_s), torch.zeros_like(lm_s))

    return (0.5 * (term(lp) + term(lq))).sum(dim).clamp(0.0, LN2)


# --------------------------------------------------------------------------------------------------
# Group statistics and equalised odds
# --------------------------------------------------------------------------------------------------
def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _prepare(
    y_pred: ArrayLike, y_true: ArrayLike, sensitive: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and return ``(y_pred float, y_true 0/1 in y_pred's dtype, one-hot groups (N, K), group values)``."""
    y_pred, y_true, sensitive = _as_tensor(y_pred), _as_tensor(y_true), _as_tensor(sensitive)
    if y_pred.ndim < 1:
        raise ValueError("y_pred must have shape (..., N), got a scalar")
    n = y_pred.shape[-1]
    if y_true.shape != (n,) or sensitive.shape != (n,):
        raise ValueError(
            f"expected y_true and sensitive of shape ({n},) to match y_pred {tuple(y_pred.shape)}, "
            f"got {tuple(y_true.shape)} and {tuple(sensitive.shape)}"
        )
    if n == 0:
        raise ValueError("equalised odds needs at least one point, got N = 0")
    if not y_pred.is_floating_point():
        y_pred = y_pred.to(torch.float64)  # hard labels: exact counts, exact rates
    if y_true.is_floating_point():
        if not torch.all((y_true == 0) | (y_true == 1)):
            raise ValueError("y_true must hold 0/1 labels")
    elif y_true.dtype != torch.bool and not torch.all((y_true == 0) | (y_true == 1)):
        raise ValueError(f"y_true must hold 0/1 labels, got values {torch.unique(y_true).tolist()[:10]}")
    if sensitive.is_floating_point() and not torch.all(sensitive == sensitive.round()):
        raise ValueError("sensitive must hold integer group ids")
    groups, inverse = torch.unique(sensitive.to(y_pred.device), return_inverse=True)
    onehot = F.one_hot(inverse, len(groups)).to(y_pred.dtype)  # (N, K)
    return y_pred, y_true.to(device=y_pred.device, dtype=y_pred.dtype), onehot, groups


def _group_counts(y_pred: torch.Tensor, y_true: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-group counts as matmuls: ``tp``, ``fp``, ``selected`` have shape ``(..., K)``; ``n*`` ``(K,)``."""
    pos = onehot * y_true[:, None]
    neg = onehot - pos
    return {
        "tp": y_pred @ pos,
        "fp": y_pred @ neg,
        "selected": y_pred @ onehot,
        "correct": y_pred @ pos + (1 - y_pred) @ neg,
        "n": onehot.sum(0),
        "n_pos": pos.sum(0),
        "n_neg": neg.sum(0),
    }


def _gap(rate: torch.Tensor, defined: torch.Tensor, undefined: str) -> torch.Tensor:
    """``max - min`` over the last (groups) axis; with ``undefined="ignore"`` only over ``defined`` groups."""
    if undefined == "ignore":
        if int(defined.sum()) == 0:
            return rate.sum(-1) * 0  # no group has a defined rate: no gap (keeps the graph and shape)
        rate = rate[..., defined]
    return rate.amax(-1) - rate.amin(-1)


def equalized_odds_difference(
    y_pred: ArrayLike,
    y_true: ArrayLike,
    sensitive: ArrayLike,
    *,
    undefined: Literal["zero", "ignore"] = "zero",
) -> torch.Tensor:
    """Equalised odds difference, ``max(TPR gap, FPR gap)`` with gap = max - min over groups.

    ``y_pred``: hard 0/1 predictions (int/bool, computed exactly in float64) or soft probabilities of
    class 1 (floating, differentiable), shape ``(..., N)`` with any leading axes (models). ``y_true``,
    ``sensitive``: shape ``(N,)``; ``sensitive`` holds integer group ids, any number of groups.
    Returns shape ``(...)``. Equals ``fairlearn.metrics.equalized_odds_difference`` (default arguments)
    for hard predictions, including its convention that a group without positives (negatives) has
    TPR (FPR) 0 -- ``undefined="zero"``; ``undefined="ignore"`` drops such groups from that gap.
    """
    if undefined not in ("zero", "ignore"):
        raise ValueError(f"undefined must be 'zero' or 'ignore', got {undefined!r}")
    y_pred, y_true, onehot, _ = _prepare(y_pred, y_true, sensitive)
    c = _group_counts(y_pred, y_true, onehot)
    tpr = c["tp"] / c["n_pos"].clamp_min(1)  # 0 / 0 -> 0, as fairlearn
    fpr = c["fp"] / c["n_neg"].clamp_min(1)
    return torch.maximum(_gap(tpr, c["n_pos"] > 0, undefined), _gap(fpr, c["n_neg"] > 0, undefined))


def group_rates(
    y_pred: ArrayLike,
    y_true: ArrayLike,
    sensitive: ArrayLike,
    *,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
    undefined: Literal["zero", "nan"] = "zero",
) -> dict[Any, dict[str, float]]:
    """Per-group statistics of one model's predictions, for reports and model cards.

    ``y_pred`` of shape ``(N,)`` (hard 0/1 or soft class-1 probabilities). Returns
    ``{group: {"n", "n_pos", "n_neg", "tpr", "fpr", "selection_rate", "accuracy"}}`` with plain Python
    numbers, groups in ascending id order; keys are the ids, or ``group_names[id]`` when given
    (e.g. ``task.sensitive_groups``). Undefined rates are 0 as in fairlearn (``undefined="zero"``,
    consistent with :func:`equalized_odds_difference`) or NaN (``undefined="nan"``).
    """
    if undefined not in ("zero", "nan"):
        raise ValueError(f"undefined must be 'zero' or 'nan', got {undefined!r}")
    y_pred = _as_tensor(y_pred).detach()
    if y_pred.ndim != 1:
        raise ValueError(f"group_rates takes one model's predictions of shape (N,), got {tuple(y_pred.shape)}")
    y_pred, y_true, onehot, groups = _prepare(y_pred, y_true, sensitive)
    c = {k: v.double() for k, v in _group_counts(y_pred, y_true, onehot).items()}
    fill = 0.0 if undefined == "zero" else math.nan
    out: dict[Any, dict[str, float]] = {}
    for k, g in enumerate(groups.tolist()):
        g = int(g)
        n, n_pos, n_neg = (int(c[key][k]) for key in ("n", "n_pos", "n_neg"))
        key = g if group_names is None else group_names[g]
        out[key] = {
            "n": n,
            "n_pos": n_pos,
            "n_neg": n_neg,
            "tpr": float(c["tp"][k] / n_pos) if n_pos else fill,
            "fpr": float(c["fp"][k] / n_neg) if n_neg else fill,
            "selection_rate": float(c["selected"][k] / n),
            "accuracy": float(c["correct"][k] / n),
        }
    return out


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------
def accuracy(probs_or_logits: ArrayLike, y: ArrayLike) -> torch.Tensor:
    """Fraction of correct predictions, shape ``(...)`` (float64, not differentiable).

    Floating input of shape ``(..., N, C)`` (probabilities or logits: the argmax is the same) is reduced
    by argmax over classes; integer/bool input of shape ``(..., N)`` is taken as hard predictions.
    ``y``: labels of shape ``(N,)``.
    """
    scores, y = _as_tensor(probs_or_logits), _as_tensor(y)
    pred = scores.argmax(-1) if scores.is_floating_point() else scores.long()
    if pred.shape[-1:] != y.shape:
        raise ValueError(f"predictions of shape {tuple(pred.shape)} do not match labels of shape {tuple(y.shape)}")
    return (pred == y.to(pred.device).long()).to(torch.float64).mean(-1)
