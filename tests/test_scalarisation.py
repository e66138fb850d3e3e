"""EPO search and linear scalarisation (hubedit.train.scalarisation) on toy problems with known Pareto fronts.

Two bi-objective problems in 2-D, both with their exact Pareto optimal (EPO) point for a preference r, the
Pareto optimal point where r1*l1 = r2*l2, known in closed form or by a 1-D root:

* two quadratics, l_j = |x - e_j|^2 (convex front): the Pareto set is the segment x = (1-s, s), and
  r1*l1 = r2*l2 at s = sqrt(r2) / (sqrt(r1) + sqrt(r2));
* the EPO paper's toy problem, l_j = 1 - exp(-|x -+ 1/sqrt(2)|^2) (concave front): the Pareto set is the
  diagonal x = (t, t), |t| <= 1/sqrt(2); the EPO point is a root in t.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from hubedit.errors import ConfigError
from hubedit.train.scalarisation import (
    BALANCE,
    DESCENT,
    Scalarisation,
    check_preference,
    epo_step,
    epo_weights,
    linear_weights,
    non_uniformity,
    parse_preference,
)

PREFERENCES = [(1.0, 3.0), (2.0, 1.0), (5.0, 1.0)]
C0 = 1 / math.sqrt(2)


def quadratics(x: torch.Tensor) -> torch.Tensor:
    e1, e2 = torch.tensor([1.0, 0.0], dtype=x.dtype), torch.tensor([0.0, 1.0], dtype=x.dtype)
    return torch.stack([((x - e1) ** 2).sum(), ((x - e2) ** 2).sum()])


def quadratics_epo_point(r) -> np.ndarray:
    s = math.sqrt(r[1]) / (math.sqrt(r[0]) + math.sqrt(r[1]))
    return np.array([1 - s, s])


def concave(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - torch.exp(-((x - C0) ** 2).sum()), 1 - torch.exp(-((x + C0) ** 2).sum())])


def concave_epo_point(r) -> np.ndarray:
    def gap(t: float) -> float:
        l1, l2 = 1 - math.exp(-2 * (t - C0) ** 2), 1 - math.exp(-2 * (t + C0) ** 2)
        return r[0] * l1 - r[1] * l2

    t = brentq(gap, -C0, C0, xtol=1e-12)
    return np.array([t, t])


PROBLEMS = {
    # problem, its EPO point, a start off the Pareto set where the two gradients are not parallel
    "quadratics": (quadratics, quadratics_epo_point, (1.2, 1.0)),
    "concave": (concave, concave_epo_point, (0.3, -0.9)),
}


EPS = 1e-5  # EPO's threshold on mu: at mu <= EPS, r*l is within sqrt(2 * EPS) of the ray (ray_gap below)


def descend(problem, start, method: str, r, steps: int = 80, lr: float = 0.2):
    """Gradient descent on the combined loss, the way a training loop uses Scalarisation.

    The step size decays as 1 / (1 + t/40), as gradient methods' convergence results assume: with a fixed
    step EPO's iterates end up jumping across the ray with an amplitude set by the step size.
    """
    x = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = torch.optim.SGD([x], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + t / 40))
    scal = Scalarisation(method, r, eps=EPS)
    modes = []
    for _ in range(steps):
        loss = scal.combine(problem(x), [x])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if scal.last is not None:
            modes.append(scal.last.mode)
    return x.detach().numpy(), problem(x).detach().numpy(), modes


def ray_gap(losses: np.ndarray, r) -> float:
    """Relative distance of r*l from the preference ray: 0 iff r1*l1 = r2*l2."""
    rl = np.asarray(r) * losses
    return float(abs(rl[0] - rl[1]) / rl.sum())


# --------------------------------------------------------------------------------- convergence to the ray
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_epo_reaches_the_exact_pareto_point_linear_scalarisation_does_not(name):
    problem, epo_point, start = PROBLEMS[name]
    for r in PREFERENCES:
        target = epo_point(r)
        x_epo, l_epo, modes = descend(problem, start, "epo", r)
        x_ls, l_ls, _ = descend(problem, start, "linear", r)
        # EPO: at the EPO point (Pareto optimal, on the ray r1*l1 = r2*l2), reached by balancing first
        assert np.abs(x_epo - target).max() < 1e-2, (name, r, x_epo, target)
        assert ray_gap(l_epo, r) < 1.5 * math.sqrt(2 * EPS), (name, r, l_epo)
        assert BALANCE in modes and modes[-1] == DESCENT, (name, r, modes[:5], modes[-5:])
        # linear scalarisation with the same preference converges (its loss is stationary) but elsewhere
        assert np.abs(x_ls - target).max() > 0.05, (name, r, x_ls, target)
        assert ray_gap(l_ls, r) > 0.3, (name, r, l_ls)


def test_linear_scalarisation_on_the_quadratics_goes_where_theory_says():
    """LS minimises w1*l1 + w2*l2 exactly: at x = w1*e1 + w2*e2, so r1*l1 = r2*l2 only when r1 = r2."""
    r = (1.0, 3.0)
    x_ls, _, _ = descend(quadratics, (1.2, 1.0), "linear", r)
    np.testing.assert_allclose(x_ls, np.array(r) / sum(r), atol=1e-6)


# ---------------------------------------------------------------------------------------------- balance
def test_balance_mode_moves_towards_the_ray_where_linear_scalarisation_moves_away():
    r = (1.0, 3.0)
    x0 = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)  # r*l = (0.98, 0.54): l1 too high
    losses = quadratics(x0)
    grads = torch.stack([torch.autograd.grad(losses[j], x0, retain_graph=True)[0] for j in range(2)])
    mu0 = non_uniformity(losses, r)
    step = epo_step(losses, grads @ grads.T, r)
    assert step.mode == BALANCE and step.mu == pytest.approx(mu0) and mu0 > 0.02
    beta = torch.as_tensor(step.weights)
    for weights, expect_lower in [(beta, True), (linear_weights(r).to(torch.float64), False)]:
        x1 = x0.detach() - 0.05 * (weights @ grads)
        l1 = quadratics(x1)
        assert (non_uniformity(l1, r) < mu0) is expect_lower, (weights, non_uniformity(l1, r), mu0)
    # the objective furthest above the ray (J*: l1) does not rise under the balancing step
    assert quadratics(x0.detach() - 0.05 * (beta @ grads))[0] < losses[0]


def test_balance_steps_shrink_the_non_uniformity_until_descent_takes_over():
    r = (2.0, 1.0)
    x = torch.tensor([0.9, 0.3], dtype=torch.float64, requires_grad=True)  # r*l = (0.2, 1.0): l2 too high
    mus, modes = [], []
    for _ in range(40):
        losses = quadratics(x)
        grads = torch.stack([torch.autograd.grad(losses[j], x, retain_graph=True)[0] for j in range(2)])
        step = epo_step(losses, grads @ grads.T, r, eps=1e-4)
        mus.append(step.mu)
        modes.append(step.mode)
        x = (x - 0.05 * (torch.as_tensor(step.weights) @ grads)).detach().requires_grad_(True)
    first_descent = modes.index(DESCENT)
    assert first_descent > 2 and set(modes[:first_descent]) == {BALANCE}
    assert all(b < a for a, b in zip(mus[:first_descent], mus[1:first_descent + 1])), mus[:first_descent + 1]
    assert mus[first_descent] <= 1e-4 < mus[0]


# ------------------------------------------------------------------------------------ the LP is the LP
def _lp_values_and_feasibility(betas, losses, C, r, eps):
    """The LP's objective and constraints written out directly (numpy), for each row of ``betas``,
    independently of the module's solver."""
    m = len(losses)
    rl = np.asarray(r) * losses
    l_hat = rl / rl.sum()
    mu = float(np.sum(l_hat * np.log(m * l_hat)))
    Ca = C @ (np.asarray(r) * (np.log(m * l_hat) - mu))
    Cb = betas @ C  # row k: C beta_k (C is symmetric)
    tol = 1e-7 * np.abs(C).max()
    if mu > eps:
        worst = rl == rl.max()
        if (Ca > 0).any():
            rows = worst | (Ca <= 0)
            ok = np.all(Cb[:, rows] >= np.where(worst, 0.0, Ca)[rows] - tol, axis=1)
        else:
            ok = np.all(Cb >= -tol, axis=1)
        return betas @ Ca, ok
    ok = np.all(Cb >= -tol, axis=1) & (betas @ Ca >= min(Ca.max(), 0.0) - tol)
    return Cb.sum(axis=1), ok


@pytest.mark.parametrize("m", [2, 3])
def test_lp_solution_is_feasible_and_no_simplex_point_does_better(m):
    """Against a grid over the simplex: the LP's beta is feasible and at least as good as every feasible point."""
    rng = np.random.default_rng(m)
    grid = np.linspace(0, 1, 201 if m == 2 else 61)
    simplex = np.array([(b, 1 - b) for b in grid] if m == 2 else
                       [(b1, b2, 1 - b1 - b2) for b1 in grid for b2 in grid if b1 + b2 <= 1 + 1e-12])
    seen = set()
    for _ in range(12):
        G = rng.normal(size=(m, 5))
        losses = rng.uniform(0.1, 2.0, size=m)
        r = rng.uniform(0.5, 3.0, size=m)
        eps = 1e-4 if rng.uniform() < 0.5 else 10.0  # 10 > any mu here: descent mode
        C = G @ G.T
        step = epo_step(torch.tensor(losses), torch.tensor(C), r, eps=eps)
        seen.add(step.mode)
        assert step.weights.min() >= 0 and step.weights.sum() == pytest.approx(1.0)
        if step.relaxed:
            continue
        (value,), (ok,) = _lp_values_and_feasibility(step.weights[None, :], losses, C, r, eps)
        assert ok, (step, losses, r)
        values, feasible = _lp_values_and_feasibility(simplex, losses, C, r, eps)
        best = values[feasible].max() if feasible.any() else -np.inf
        assert value >= best - 1e-6 * np.abs(C).max(), (value, best, step.mode)
    assert seen == {BALANCE, DESCENT}


def test_balance_never_raises_the_objective_furthest_above_the_ray():
    """The J* constraint: in balance mode the worst objective (largest r_j l_j) must not rise, even where the
    direction that lowers mu fastest would raise it (about 1 draw in 40 here; the test checks some occur)."""
    rng = np.random.default_rng(7)
    binding = 0
    for _ in range(150):
        G = rng.normal(size=(3, 4))
        C = G @ G.T
        losses, r = rng.uniform(0.1, 2.0, size=3), rng.uniform(0.5, 3.0, size=3)
        step = epo_step(torch.tensor(losses), torch.tensor(C), r, eps=1e-4)
        assert step.mode == BALANCE
        worst = int(np.argmax(r * losses))
        rate = (C @ step.weights)[worst]  # how fast l_worst falls under d = beta @ G
        assert rate >= -1e-9 * np.abs(C).max(), (losses, r, step)
        unconstrained = _best_balance_without_worst_constraint(losses, C, r, worst)
        binding += bool((C @ unconstrained)[worst] < -1e-6)
    assert binding >= 2


def _best_balance_without_worst_constraint(losses, C, r, worst):
    """The balance LP with the J* row removed (scipy directly): what the constraint prevents."""
    from scipy.optimize import linprog

    m = len(losses)
    rl = r * losses
    l_hat = rl / rl.sum()
    mu = float(np.sum(l_hat * np.log(m * l_hat)))
    Ca = C @ (r * (np.log(m * l_hat) - mu))
    rows = [j for j in range(m) if j != worst and (Ca[j] <= 0 or not (Ca > 0).any())]
    rhs = np.array([Ca[j] if (Ca > 0).any() else 0.0 for j in rows])
    res = linprog(-Ca, A_ub=-C[rows] if rows else None, b_ub=-rhs if rows else None,
                  A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m, method="highs")
    return res.x


def test_epo_weights_from_gradients_match_the_gram_form_and_keep_dtype():
    rng = np.random.default_rng(0)
    grads = torch.tensor(rng.normal(size=(2, 7)), dtype=torch.float32)
    losses = torch.tensor([0.2, 0.9])
    beta = epo_weights(losses, grads, torch.tensor([1.0, 1.0]))
    g = grads.double()
    assert beta.dtype == torch.float32 and beta.shape == (2,)
    np.testing.assert_allclose(beta.numpy(), epo_step(losses, g @ g.T, (1.0, 1.0)).weights, atol=1e-6)


def test_on_the_ray_epo_only_descends():
    losses = torch.tensor([0.6, 0.2])  # r*l = (0.6, 0.6)
    assert non_uniformity(losses, (1.0, 3.0)) == pytest.approx(0.0, abs=1e-12)
    step = epo_step(losses, torch.tensor([[1.0, 0.3], [0.3, 2.0]]), (1.0, 3.0))
    assert step.mode == DESCENT and not step.relaxed


# ------------------------------------------------------------------------------------ the per-step API
def test_combine_backpropagates_beta_times_the_gradients_with_beta_detached():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x = torch.randn(16, 3)
    out = net(x)
    losses = torch.stack([(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 2).pow(2).mean() * 0.1])
    params = list(net.parameters())
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[j], params, retain_graph=True)])
                         for j in range(2)])
    reduced = []
    scal = Scalarisation("epo", (1.0, 2.0))
    loss = scal.combine(losses, params, reduce=lambda t: reduced.append(t.shape) or t)
    loss.backward()
    beta = torch.as_tensor(scal.last.weights, dtype=torch.float32)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, beta @ grads, rtol=1e-5, atol=1e-6)
    assert reduced == [(2, sum(p.numel() for p in params)), (2,)]  # gradients and losses both went through it
    assert loss.item() == pytest.approx(float(beta @ losses.detach()), rel=1e-6)


def test_linear_combine_is_the_normalised_preference_and_takes_no_extra_gradients():
    w = torch.tensor([0.5, 2.0], requires_grad=True)
    losses = torch.stack([w[0] ** 2, w[1] ** 2])
    scal = Scalarisation("linear", (1.0, 3.0))
    loss = scal.combine(losses, [w])
    assert loss.item() == pytest.approx(0.25 * 0.25 + 0.75 * 4.0)
    assert scal.last is None
    torch.testing.assert_close(linear_weights((1, 3)), torch.tensor([0.25, 0.75]))


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("bad, says", [
    ((1.0, -2.0), "positive and finite"),
    ((0.0, 1.0), "positive and finite"),
    ((1.0, float("nan")), "positive and finite"),
    ((1.0, float("inf")), "positive and finite"),
    ((), "non-empty 1-D"),
    ([[1.0, 2.0]], "non-empty 1-D"),
    (("a", 1), "sequence of positive numbers"),
])
def test_bad_preferences_say_what_was_expected_and_what_came(bad, says):
    with pytest.raises(ConfigError, match=says) as info:
        Scalarisation("epo", bad)
    assert "got" in str(info.value)


def test_preference_length_must_match_the_objectives():
    with pytest.raises(ConfigError, match=r"one entry per objective \(2\), got 3"):
        check_preference((1, 2, 3), 2)
    with pytest.raises(ConfigError, match="one entry per objective"):
        epo_step(torch.tensor([0.1, 0.2]), torch.eye(2), (1.0, 2.0, 3.0))
    scal = Scalarisation("epo", (1.0, 2.0, 3.0))
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"3 scalars .* got shape \(2,\)"):
        scal.combine(w * 2, [w])


def test_parse_preference_and_other_settings():
    assert parse_preference("1,2") == (1.0, 2.0)
    assert parse_preference(" 0.5 , 3 ") == (0.5, 3.0)
    for text in ["1,a", "1,,2", ""]:
        with pytest.raises(ConfigError, match="comma-separated positive numbers such as '1,2'"):
            parse_preference(text)
    with pytest.raises(ConfigError, match="positive and finite"):
        parse_preference("-1,2")
    with pytest.raises(ConfigError, match="one of linear, epo, got 'chebyshev'"):
        Scalarisation("chebyshev", (1, 1))
    with pytest.raises(ConfigError, match="eps .* positive number, got 0"):
        Scalarisation("epo", (1, 1), eps=0)


def test_bad_losses_and_gradients_are_refused():
    with pytest.raises(ValueError, match="non-negative losses"):
        epo_step(torch.tensor([-0.1, 0.2]), torch.eye(2), (1, 1))
    with pytest.raises(ValueError, match="non-negative losses"):
        epo_step(torch.tensor([float("nan"), 0.2]), torch.eye(2), (1, 1))
    with pytest.raises(ValueError, match=r"gram must be 2 x 2 .* got shape \(3, 3\)"):
        epo_step(torch.tensor([0.1, 0.2]), torch.eye(3), (1, 1))
    with pytest.raises(ValueError, match=r"grads must be m x p with m = 2"):
        epo_weights(torch.tensor([0.1, 0.2]), torch.ones(3, 4), (1, 1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        epo_step(torch.tensor([0.1, 0.2]), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), (1, 1))
