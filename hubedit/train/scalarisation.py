"""How the editor's objectives are combined into the one loss a step back-propagates (paper A.8).

Two ways, both giving weights ``beta`` (``beta >= 0``, ``sum(beta) = 1``) for a loss ``sum_j beta_j * l_j``:

* **linear scalarisation** (LS): ``beta = r / sum(r)`` for a preference ``r``, fixed for the whole run. It reaches
  only the convex parts of a Pareto front, and even there not a point chosen in advance.
* **EPO search** (Mahapatra & Rajan, ICML 2020, "Multi-Task Learning with User Preferences: Gradient Descent
  with Controlled Ascent in Pareto Optimization"): ``beta`` is recomputed every step from the losses and their
  gradients so that training converges to the *exact Pareto optimal* point of ``r``, the Pareto optimal point
  on the ray where ``r_1 l_1 = r_2 l_2 = ... = r_m l_m`` (a larger ``r_j`` asks for a smaller ``l_j``).

EPO, one step. With ``l`` the m losses, ``G`` the m x p matrix of their gradients and ``C = G G^T``:

1. ``l_hat = r*l / sum(r*l)`` and the non-uniformity ``mu = KL(l_hat || 1/m) = sum_j l_hat_j log(m l_hat_j)``;
   ``mu = 0`` exactly on the preference ray.
2. The adjustments ``a_j = r_j (log(m l_hat_j) - mu)``, which are ``sum(r*l)`` times ``d mu / d l``: moving along
   ``d_bal = G^T a`` lowers ``mu`` fastest. A step ``-eta d`` with ``d = G^T beta`` changes the losses by
   ``-eta C beta`` to first order, so ``beta^T C a`` is the rate at which ``mu`` falls, ``(C beta)_j`` the rate
   at which ``l_j`` falls.
3. **Balance mode** (``mu > eps``): maximise ``beta^T C a`` over the simplex such that the objectives with the
   largest ``r_j l_j`` (J*) do not rise, ``(C beta)_j >= 0``, and each other objective that ``d_bal`` itself
   would not lower (``(C a)_j <= 0``) rises at most as fast as under ``d_bal``: ``(C beta)_j >= (C a)_j``
   ("controlled ascent"). When ``d_bal`` lowers no objective at all, every objective must not rise.
4. **Descent mode** (``mu <= eps``): maximise ``sum_j (C beta)_j`` (the total rate of descent) such that no
   objective rises, ``C beta >= 0``, and, as in the authors' reference implementation, ``mu`` does not rise
   either: ``beta^T C a >= min(max_j (C a)_j, 0)``. If that is infeasible the last constraint is dropped;
   ``C beta >= 0`` alone is always feasible (the minimum-norm point of the gradients' hull satisfies it).

The LP has m variables and at most m + 1 inequality constraints: scipy's HiGHS solves it in about a millisecond.
It is invariant to scaling ``C`` by a positive number, so ``C`` is divided by its largest entry first.

Cost: EPO needs every objective's gradient separately, i.e. m backward passes through the graph (``retain_graph``)
plus the backward of the combined loss: m + 1 backward passes a step instead of 1, and m flattened gradient
vectors in memory. Linear scalarisation costs nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

METHODS = ("linear", "epo")
BALANCE, DESCENT = "balance", "descent"
_TINY = 1e-12  # floor of l_hat inside the log: a zero loss gets a large negative adjustment, not -inf

__all__ = [
    "METHODS", "EPOStep", "Scalarisation", "check_preference", "epo_step", "epo_weights",
    "linear_weights", "non_uniformity", "parse_preference",
]


# --------------------------------------------------------------------------------------------- validation
def check_preference(preference: Sequence[float] | torch.Tensor | np.ndarray, m: int | None = None) -> np.ndarray:
    """The preference as a float64 vector; ConfigError unless it holds ``m`` (if given) positive finite numbers."""
    try:
        values = np.asarray(preference.detach().cpu() if isinstance(preference, torch.Tensor) else preference,
                            dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preference must be a sequence of positive numbers, got {preference!r}") from exc
    if values.ndim != 1 or values.size == 0:
        raise ConfigError(f"preference must be a non-empty 1-D sequence of positive numbers, got shape "
                          f"{tuple(values.shape)}: {preference!r}")
    if m is not None and values.size != m:
        raise ConfigError(f"preference must have one entry per objective ({m}), got {values.size}: "
                          f"{values.tolist()}")
    if not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ConfigError(f"preference entries must be positive and finite, got {values.tolist()}")
    return values


def parse_preference(text: str) -> tuple[float, ...]:
    """``"1,2"`` -> ``(1.0, 2.0)`` for a command-line option; ConfigError on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"preference must be comma-separated positive numbers such as '1,2', got {text!r}") from None
    check_preference(values)
    return values


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps (the non-uniformity below which EPO only descends) must be a positive number, "
                          f"got {eps!r}")
    return float(eps)


def _losses_array(losses: torch.Tensor | Sequence[float]) -> np.ndarray:
    values = np.asarray(losses.detach().cpu() if isinstance(losses, torch.Tensor) else losses, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"losses must be a 1-D tensor of m >= 1 scalars, got shape {tuple(values.shape)}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"EPO needs finite, non-negative losses, got {values.tolist()}")
    return values


# ------------------------------------------------------------------------------------------------ weights
def linear_weights(preference: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Linear scalarisation: the preference normalised to sum to one (float32 tensor)."""
    r = check_preference(preference)
    return torch.as_tensor(r / r.sum(), dtype=torch.float32)


def non_uniformity(losses: torch.Tensor | Sequence[float], preference: Sequence[float] | torch.Tensor) -> float:
    """``mu(r*l)``: KL divergence of the normalised loss-preference product from uniform; 0 on the ray."""
    loss_values = _losses_array(losses)
    return _mu(check_preference(preference, loss_values.size) * loss_values)


def _mu(rl: np.ndarray) -> float:
    total = rl.sum()
    if total <= 0:
        return 0.0  # all losses zero: nothing to balance
    l_hat = rl / total
    nonzero = l_hat > 0  # 0 log 0 = 0
    return float(np.sum(l_hat[nonzero] * np.log(rl.size * l_hat[nonzero])))


@dataclass(frozen=True)
class EPOStep:
    """One EPO decision: the weights, the mode that chose them and the non-uniformity it saw."""

    weights: np.ndarray  # beta, float64, on the simplex
    mode: str  # "balance" or "descent"
    mu: float  # non-uniformity of r*l before the step
    relaxed: bool = False  # descent mode had to drop the "mu must not rise" constraint


def epo_step(losses: torch.Tensor | Sequence[float], gram: torch.Tensor | np.ndarray,
             preference: Sequence[float] | torch.Tensor, *, eps: float = 1e-4) -> EPOStep:
    """The EPO weights from the losses and the Gram matrix ``C = G G^T`` of their gradients (m x m)."""
    loss_values = _losses_array(losses)
    m = loss_values.size
    r = check_preference(preference, m)
    eps = _check_eps(eps)
    C = np.asarray(gram.detach().cpu() if isinstance(gram, torch.Tensor) else gram, dtype=np.float64)
    if C.shape != (m, m):
        raise ValueError(f"gram must be {m} x {m} (one row per objective), got shape {tuple(C.shape)}")
    if not np.all(np.isfinite(C)):
        raise ValueError("EPO needs finite gradients; the gradient Gram matrix holds NaN or Inf")
    scale = np.abs(C).max()
    if scale > 0:
        C = C / scale  # the LP is invariant to this; HiGHS's tolerances are absolute
    rl = r * loss_values
    mu = _mu(rl)
    total = rl.sum()
    l_hat = rl / total if total > 0 else np.full(m, 1.0 / m)
    a = r * (np.log(m * np.maximum(l_hat, _TINY)) - mu)
    Ca = C @ a
    if mu > eps:
        worst = rl >= rl.max() * (1 - 1e-12)  # J*: the objectives furthest above the ray
        lowered_by_bal = Ca > 0  # J: the objectives d_bal itself lowers
        if lowered_by_bal.any():
            rows = ~lowered_by_bal | worst
            rhs = np.where(worst, 0.0, Ca)[rows]
        else:
            rows, rhs = np.ones(m, dtype=bool), np.zeros(m)
        beta = _solve(-Ca, -C[rows], -rhs, m)
        if beta is not None:
            return EPOStep(beta, BALANCE, mu)
        # numerically infeasible (ill-conditioned C): fall through to plain descent rather than stop training
    descent_rate = C.sum(axis=0)
    restricted = np.vstack([-C, -Ca[None, :]])
    beta = _solve(-descent_rate, restricted, np.append(np.zeros(m), -min(Ca.max(), 0.0)), m)
    if beta is not None:
        return EPOStep(beta, DESCENT, mu)
    beta = _solve(-descent_rate, -C, np.zeros(m), m)
    if beta is None:  # C beta >= 0 is feasible in exact arithmetic; keep training on the least-bad guess
        beta = _min_norm_weights(C)
    return EPOStep(beta, DESCENT, mu, relaxed=True)


def epo_weights(losses: torch.Tensor, grads: torch.Tensor, preference: torch.Tensor | Sequence[float], *,
                eps: float = 1e-4) -> torch.Tensor:
    """EPO combination weights ``beta`` (shape ``(m,)``, on the simplex): ``d = beta @ grads`` is the step's
    descent direction. ``grads`` is m x p, one flattened gradient per objective."""
    if grads.ndim != 2 or grads.shape[0] != losses.numel():
        raise ValueError(f"grads must be m x p with m = {losses.numel()} (one row per loss), got shape "
                         f"{tuple(grads.shape)}")
    g = grads.detach().to(torch.float64)
    step = epo_step(losses, g @ g.T, preference, eps=eps)
    return torch.as_tensor(step.weights, dtype=grads.dtype, device=grads.device)


def _solve(c: np.ndarray, A_ub: np.ndarray, b_ub: np.ndarray, m: int) -> np.ndarray | None:
    """``argmin c^T beta`` over the simplex with ``A_ub beta <= b_ub``; None when HiGHS finds no solution."""
    from scipy.optimize import linprog  # here, not at the top: scipy.optimize takes ~0.4 s to import

    res = linprog(c, A_ub=A_ub if len(A_ub) else None, b_ub=b_ub if len(A_ub) else None,
                  A_eq=np.ones((1, m)), b_eq=np.ones(1), bounds=[(0.0, None)] * m, method="highs")
    if res.status != 0 or res.x is None:
        return None
    beta = np.clip(res.x, 0.0, None)
    return beta / beta.sum()


def _min_norm_weights(C: np.ndarray, iters: int = 200) -> np.ndarray:
    """Frank-Wolfe for ``min_beta beta^T C beta`` on the simplex (MGDA's point); only a last resort."""
    m = len(C)
    beta = np.full(m, 1.0 / m)
    for t in range(iters):
        j = int(np.argmin(C @ beta))
        step = 2.0 / (t + 3)
        beta = (1 - step) * beta
        beta[j] += step
    return beta


# --------------------------------------------------------------------------------------------- per step
class Scalarisation:
    """Combine m objectives into the loss one training step back-propagates.

    >>> scal = Scalarisation("epo", preference=(1, 2))
    >>> loss = scal.combine(torch.stack([jsd.mean(), penalty.mean()]), editor.parameters())  # doctest: +SKIP
    >>> loss.backward()                                                                        # doctest: +SKIP

    ``combine`` returns ``sum_j beta_j l_j`` with ``beta`` detached, so its gradient is exactly EPO's direction
    ``beta @ G``. For EPO it first takes each objective's gradient with ``torch.autograd.grad(...,
    retain_graph=True)``: m extra backward passes a step (none for ``"linear"``). ``last`` holds the latest
    :class:`EPOStep` (weights, mode, mu) for logging.
    """

    def __init__(self, method: str, preference: Sequence[float] | torch.Tensor, *, eps: float = 1e-4) -> None:
        if method not in METHODS:
            raise ConfigError(f"scalarisation must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        self.preference = check_preference(preference)
        self.eps = _check_eps(eps)
        self.last: EPOStep | None = None

    @property
    def m(self) -> int:
        return int(self.preference.size)

    def weights(self, losses: torch.Tensor, params: Iterable[torch.Tensor],
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The step's weights ``beta`` (detached, on ``losses``' device and dtype).

        ``reduce`` (e.g. ``lambda t: accelerator.reduce(t, "mean")``) is applied to the stacked per-objective
        gradients and to the losses before EPO sees them, so that every process of a data-parallel run
        computes the same weights from the global gradients; without it each process uses its own.
        """
        if losses.ndim != 1 or losses.numel() != self.m:
            raise ValueError(f"losses must be a 1-D tensor of {self.m} scalars (one per preference entry), "
                             f"got shape {tuple(losses.shape)}")
        if self.method == "linear":
            return torch.as_tensor(self.preference / self.preference.sum(), dtype=losses.dtype, device=losses.device)
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("EPO needs the parameters the losses depend on; got none that require grad")
        rows = []
        for j in range(self.m):
            grads = torch.autograd.grad(losses[j], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for p, g in zip(params, grads)]))
        G = torch.stack(rows).detach()
        observed = losses.detach()
        if reduce is not None:
            G, observed = reduce(G), reduce(observed)
        G = G.to(torch.float64)
        self.last = epo_step(observed, G @ G.T, self.preference, eps=self.eps)
        return torch.as_tensor(self.last.weights, dtype=losses.dtype, device=losses.device)

    def combine(self, losses: torch.Tensor, params: Iterable[torch.Tensor],
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``sum_j beta_j * losses[j]`` with the weights detached: call ``.backward()`` on it."""
        return (self.weights(losses, params, reduce) * losses).sum()
