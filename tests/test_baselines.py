"""Baselines: pruning, data minimisation (FS, FS & Retrain) and fairness post-processing (hand-made cases)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hubedit import MLP, MLPConfig
from hubedit.baselines import (
    CalEqOdds,
    FairCls,
    RejectOption,
    ThresholdOpt,
    feature_selection,
    fs_retrain,
    grad_prune,
    grad_scores,
    lottery_ticket_prune,
    magnitude_prune,
    mask_input_features,
    masks_of,
    n_kept,
    permutation_importance,
    prunable_names,
    random_prune,
    snip_prune,
    snip_scores,
)
from hubedit.metrics.scores import equalized_odds_difference, jsd


# --- fixtures ------------------------------------------------------------------------------------------------------
def _synthetic(n=800, f=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, f, generator=g)
    logit = 2.0 * X[:, 0] + 1.5 * X[:, 1] - 1.2 * X[:, 4] + 1.0 * X[:, 2] * X[:, 3] + 0.6 * X[:, 5]
    y = (logit + 0.3 * torch.randn(n, generator=g) > 0).long()
    return X, y


@pytest.fixture(scope="module")
def trained():
    """A small MLP (skip from the input, layernorm) trained on a synthetic task, and its data."""
    torch.manual_seed(0)
    X, y = _synthetic()
    model = MLP(MLPConfig(in_features=6, hidden=(16, 16), activation="relu", norm="layernorm", skips=((0, 2),)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model.accuracy(X, y) > 0.9
    return model, X, y


def _mean_jsd(a: MLP, b: MLP, X) -> float:
    return float(jsd(a.predict_proba(X), b.predict_proba(X)).mean())


def _n_nonzero(model: MLP) -> int:
    return sum(int(m.sum()) for m in masks_of(model).values())


# --- pruning -------------------------------------------------------------------------------------------------------
def test_magnitude_keeps_exactly_the_largest_hand_set_weights():
    model = MLP(MLPConfig(in_features=3, hidden=(2,)))  # 6 + 4 = 10 weights
    w0 = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    w1 = torch.tensor([[-4.0, 0.15], [1.0, -3.0]])
    with torch.no_grad():
        model.layers[0].weight.copy_(w0)
        model.layers[1].weight.copy_(w1)
    before = copy.deepcopy(model.state_dict())
    out = magnitude_prune(model, 0.5)  # keep 5: |-5|, |-4|, |-3|, |2|, |1|
    assert torch.equal(out.layers[0].weight, torch.tensor([[0.0, -5.0, 0.0], [2.0, 0.0, 0.0]]))
    assert torch.equal(out.layers[1].weight, torch.tensor([[-4.0, 0.0], [1.0, -3.0]]))
    for k, v in model.state_dict().items():  # input untouched
        assert torch.equal(v, before[k])
    # ties: equal magnitudes -> the earlier tensor / earlier row-major index is kept
    with torch.no_grad():
        model.layers[0].weight.fill_(1.0)
        model.layers[1].weight.fill_(-1.0)
    out = magnitude_prune(model, 0.3)  # keep 3 of 10 equal magnitudes
    assert masks_of(out)["layers.0.weight"].reshape(-1).tolist() == [True, True, True, False, False, False]
    assert not masks_of(out)["layers.1.weight"].any()


def _all_pruners(X, y):
    return {
        "random": lambda m, k: random_prune(m, k, seed=3),
        "magnitude": lambda m, k: magnitude_prune(m, k),
        "grad": lambda m, k: grad_prune(m, k, X, y),
        "grad_gradient": lambda m, k: grad_prune(m, k, X, y, criterion="gradient"),
        "snip": lambda m, k: snip_prune(m, k, X, y, iterations=1, batch_size=64),
        "snip_iter": lambda m, k: snip_prune(m, k, X, y, iterations=4),
        "lottery": lambda m, k: lottery_ticket_prune(m, k, X, y, iterations=2, epochs_per_iteration=1),
    }


@pytest.mark.parametrize("method", ["random", "magnitude", "grad", "grad_gradient", "snip", "snip_iter", "lottery"])
def test_keep_fraction_is_exact_and_only_weights_are_pruned(trained, method):
    model, X, y = trained
    before = copy.deepcopy(model.state_dict())
    prune = _all_pruners(X, y)[method]
    for keep in (1.0, 0.5, 0.137, 0.01):
        out = prune(model, keep)
        assert _n_nonzero(out) == n_kept(model.n_weights, keep) == round(keep * model.n_weights)
        assert out is not model
        sd = out.state_dict()
        for k, v in before.items():
            if k in prunable_names(model):
                kept = sd[k] != 0
                if method != "lottery":  # one-shot methods keep surviving weights as they were
                    assert torch.equal(sd[k][kept], v[kept])
            elif method != "lottery":  # biases, norm parameters never touched
                assert torch.equal(sd[k], v), k
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])


def test_random_prune_is_deterministic_for_a_seed(trained):
    model = trained[0]
    a, b, c = random_prune(model, 0.3, seed=7), random_prune(model, 0.3, seed=7), random_prune(model, 0.3, seed=8)
    ma, mb, mc = masks_of(a), masks_of(b), masks_of(c)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)


def test_grad_and_snip_importances_match_hand_computed_gradients():
    torch.manual_seed(1)
    model = MLP(MLPConfig(in_features=3, hidden=(4,), activation="relu"))
    X = torch.randn(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    W1, b1 = model.layers[0].weight.detach().double(), model.layers[0].bias.detach().double()
    W2, b2 = model.layers[1].weight.detach().double(), model.layers[1].bias.detach().double()
    # by hand: a = W1 x + b1, h = relu(a), z = W2 h + b2, L = mean CE
    Xd = X.double()
    a = Xd @ W1.T + b1
    h = a.clamp_min(0)
    z = h @ W2.T + b2
    dz = (torch.softmax(z, -1) - F.one_hot(y, 2).double()) / len(X)
    gW2 = dz.T @ h
    da = (dz @ W2) * (a > 0).double()
    gW1 = da.T @ Xd
    taylor = {"layers.0.weight": (gW1 * W1).abs(), "layers.1.weight": (gW2 * W2).abs()}
    for scores in (grad_scores(model, X, y), snip_scores(model, X, y)):
        for k, v in taylor.items():
            torch.testing.assert_close(scores[k].double(), v, rtol=1e-5, atol=1e-7)
    grad_only = grad_scores(model, X, y, criterion="gradient")
    torch.testing.assert_close(grad_only["layers.0.weight"].double(), gW1.abs(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_only["layers.1.weight"].double(), gW2.abs(), rtol=1e-5, atol=1e-7)


def test_lottery_ticket_beats_one_shot_magnitude_at_high_sparsity(trained):
    model, X, y = trained
    keep = 0.08
    lth = lottery_ticket_prune(model, keep, X, y, iterations=3, epochs_per_iteration=5, seed=0)
    mag = magnitude_prune(model, keep)
    assert _n_nonzero(lth) == n_kept(model.n_weights, keep)
    assert _mean_jsd(model, lth, X) < _mean_jsd(model, mag, X)
    # retraining with cross-entropy and without rewinding also holds the mask
    ce = lottery_ticket_prune(model, keep, X, y, iterations=2, epochs_per_iteration=1, loss="ce", rewind="none")
    assert _n_nonzero(ce) == n_kept(model.n_weights, keep)


# --- data minimisation -----------------------------------------------------------------------------------------------
def _model_ignoring(features, in_features=5, seed=0):
    """A random MLP with a skip from the input whose input weights for ``features`` are zero."""
    torch.manual_seed(seed)
    model = MLP(MLPConfig(in_features=in_features, hidden=(16, 8), activation="tanh", skips=((0, 2),)))
    with torch.no_grad():
        for name in ("layers.0.weight", "skips.0_2.weight"):
            w = dict(model.named_parameters())[name]
            w.mul_(3.0)
            w[:, features] = 0.0
    return model.eval()


def test_permutation_importance_is_zero_for_ignored_features_and_fs_masks_them():
    model = _model_ignoring([1, 3])
    X = torch.randn(800, 5, generator=torch.Generator().manual_seed(0))
    y = model.predict(X)  # labels = the model's own decisions: every used feature matters
    for metric in ("accuracy", "loss"):
        imp = permutation_importance(model, X, y, n_repeats=3, seed=0, metric=metric)
        assert imp.shape == (5,)
        assert imp[1] == 0 and imp[3] == 0
        assert (imp[[0, 2, 4]] > 0).all()
    assert torch.equal(permutation_importance(model, X, y, seed=4), permutation_importance(model, X, y, seed=4))
    edited, kept = feature_selection(model, X, y, 3)
    assert kept.tolist() == [0, 2, 4]
    torch.testing.assert_close(edited.predict_proba(X), model.predict_proba(X))


def test_fs_masked_model_ignores_masked_columns_and_equals_feeding_zero():
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=5, hidden=(8, 8, 8), skips=((0, 2), (0, 3), (1, 3)), norm="batchnorm"))
    with torch.no_grad():
        for bn in model.norms:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    importance = torch.tensor([0.3, 0.0, 0.2, 0.05, 0.4])
    edited, kept = feature_selection(model, None, None, 3, importance=importance)
    assert kept.tolist() == [0, 2, 4]
    X = torch.randn(64, 5)
    X2 = X.clone()
    X2[:, [1, 3]] = torch.randn(64, 2) * 10
    Xz = X.clone()
    Xz[:, [1, 3]] = 0.0
    torch.testing.assert_close(edited(X), edited(X2), rtol=0, atol=0)
    torch.testing.assert_close(edited(X), model(Xz), rtol=1e-6, atol=1e-6)
    for name in ("layers.0.weight", "skips.0_2.weight", "skips.0_3.weight"):
        assert (dict(edited.named_parameters())[name][:, [1, 3]] == 0).all()


def test_fs_retrain_keeps_masked_columns_zero_and_beats_fs(trained):
    model, X, y = trained
    imp = permutation_importance(model, X, y, n_repeats=2)
    fs, kept = feature_selection(model, X, y, 5, importance=imp)
    before = copy.deepcopy(model.state_dict())
    student, kept2 = fs_retrain(model, X, 5, importance=imp, epochs=10, lr=3e-3, batch_size=128, seed=0)
    assert torch.equal(kept, kept2)
    masked = [j for j in range(6) if j not in kept.tolist()]
    for name in ("layers.0.weight", "skips.0_2.weight"):
        assert (dict(student.named_parameters())[name][:, masked] == 0).all()
    Xm = X.clone()
    Xm[:, masked] = 0.0
    teacher = model.predict_proba(X)
    jsd_fs = float(jsd(teacher, fs.predict_proba(X)).mean())
    jsd_st = float(jsd(teacher, student.predict_proba(X)).mean())
    assert jsd_st < 0.9 * jsd_fs
    torch.testing.assert_close(student.predict_proba(X), student.predict_proba(Xm))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # reproducible for a seed
    again, _ = fs_retrain(model, X, 5, importance=imp, epochs=10, lr=3e-3, batch_size=128, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))


# --- fairness post-processing --------------------------------------------------------------------------------------
def _fair_data(n=4000, seed=0, means=(0.4, -0.8), sds=(1.6, 1.0)):
    """Two groups with different, calibrated score distributions: y ~ Bernoulli(score)."""
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < 0.4).astype(np.int64)
    z = rng.normal(np.where(g == 1, means[1], means[0]), np.where(g == 1, sds[1], sds[0]))
    s = 1.0 / (1.0 + np.exp(-z))
    y = (rng.random(n) < s).astype(np.int64)
    return s, y, g


def rates_by_group(p1, y, g):
    """Expected TPR / FPR / selection rate per group (0, 1) of a decision with P(yhat = 1) = p1."""
    p1, y, g = (np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for v in (p1, y, g))
    p1 = p1.astype(np.float64)
    return {
        "tpr": np.array([p1[(g == a) & (y == 1)].mean() for a in (0, 1)]),
        "fpr": np.array([p1[(g == a) & (y == 0)].mean() for a in (0, 1)]),
        "selection": np.array([p1[g == a].mean() for a in (0, 1)]),
    }


def _eod(p1, y, g):
    """Equalised odds difference of the expected (soft) decision, the project's metric."""
    as_t = lambda v: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))  # noqa: E731
    value = float(equalized_odds_difference(as_t(p1).double(), as_t(y), as_t(g)))
    r = rates_by_group(p1, y, g)
    assert math.isclose(value, max(abs(r["tpr"][0] - r["tpr"][1]), abs(r["fpr"][0] - r["fpr"][1])), abs_tol=1e-9)
    return value


def test_threshold_opt_equalises_odds_on_its_fit_data(trained):
    s, y, g = _fair_data()
    assert _eod((s > 0.5).astype(float), y, g) > 0.1
    for objective in ("accuracy_score", "balanced_accuracy_score"):
        to = ThresholdOpt(objective=objective).fit(None, y, g, scores=s)
        proba = to.predict_proba(None, g, scores=s)
        assert proba.shape == (len(s), 2)
        torch.testing.assert_close(proba.sum(1), torch.ones(len(s)))
        assert _eod(proba[:, 1].double().numpy(), y, g) < 2e-3
    hard = to.predict(None, g, scores=s, seed=5)
    assert torch.equal(hard, to.predict(None, g, scores=s, seed=5))
    assert set(hard.unique().tolist()) <= {0, 1}
    assert _eod(hard.double().numpy(), y, g) < 0.06  # sampled labels: close to the expectation
    # wrapping an MLP directly (fairlearn calls the sklearn wrapper's predict_proba)
    model, X, _ = trained
    sens = (X[:, 0] > 0).long()
    yy = (torch.rand(len(X), generator=torch.Generator().manual_seed(0)) < model.predict_proba(X)[:, 1]).long()
    to = ThresholdOpt(model).fit(X, yy, sens)
    assert _eod(to.predict_proba(X, sens)[:, 1].double().numpy(), yy.numpy(), sens.numpy()) < 5e-3
    with pytest.raises(ValueError, match="equalized odds"):
        ThresholdOpt(tol=0.05).fit(None, y, g, scores=s)
    relaxed = ThresholdOpt(constraints="true_positive_rate_parity", tol=0.05).fit(None, y, g, scores=s)
    r = rates_by_group(relaxed.predict_proba(None, g, scores=s)[:, 1].double().numpy(), y, g)
    assert abs(r["tpr"][0] - r["tpr"][1]) <= 0.05 + 2e-3


@pytest.mark.parametrize("cost_constraint,weighted_cost",
                         [("fnr", "aif360"), ("fpr", "aif360"), ("weighted", "aif360"), ("weighted", "pleiss")])
def test_caleqodds_equalises_the_targeted_generalised_rate(cost_constraint, weighted_cost):
    # same base rates, sharper scores in group 0: the trivial (base-rate) classifier costs more than
    # either group, so mixing can equalise the cost (Pleiss et al.'s feasibility condition)
    s, y, g = _fair_data(seed=1, means=(0.0, 0.2), sds=(2.5, 0.8))
    ce = CalEqOdds(cost_constraint=cost_constraint, weighted_cost=weighted_cost).fit(None, y, g, scores=s)
    mixed = ce.expected_score(None, g, scores=s).numpy()
    cost = [ce.group_cost(mixed[g == a], y[g == a], ce.base_rate_[a]) for a in (0, 1)]
    before = [ce.group_cost(s[g == a], y[g == a], ce.base_rate_[a]) for a in (0, 1)]
    assert abs(before[0] - before[1]) > 0.01
    assert abs(cost[0] - cost[1]) < 1e-9
    assert (ce.mix_rate_ > 0).sum() == 1 and ce.mix_rate_.max() < 1  # only the cheaper group is mixed
    p1 = ce.predict_proba(None, g, scores=s)[:, 1].double().numpy()
    m = ce.mix_rate_[g]
    np.testing.assert_allclose(p1, (1 - m) * (s >= 0.5) + m * (ce.base_rate_[g] >= 0.5), atol=1e-7)
    score_out = CalEqOdds(cost_constraint=cost_constraint, weighted_cost=weighted_cost, output="score")
    score_out.fit(None, y, g, scores=s)
    np.testing.assert_allclose(score_out.predict_proba(None, g, scores=s)[:, 1].double().numpy(), mixed, atol=1e-6)


def _aif360_reject_option_loop(s, y, g, priv, bound, n_thr, n_margin, metric):
    """A literal loop in the shape of aif360's RejectOptionClassification.fit, for cross-checking."""
    best = None
    for t in np.linspace(0.01, 0.99, n_thr):
        hi = t if t <= 0.5 else 1.0 - t
        for m in np.linspace(0.0, hi, n_margin):
            pred = (s > t).astype(int)
            crit = (s <= t + m) & (s > t - m)
            pred[crit & (g == priv)] = 0
            pred[crit & (g != priv)] = 1
            tpr = pred[y == 1].mean()
            tnr = 1 - pred[y == 0].mean()
            bal = 0.5 * (tpr + tnr)
            un = 1 - priv
            d_tpr = pred[(g == un) & (y == 1)].mean() - pred[(g == priv) & (y == 1)].mean()
            d_fpr = pred[(g == un) & (y == 0)].mean() - pred[(g == priv) & (y == 0)].mean()
            fair = max(abs(d_tpr), abs(d_fpr)) if metric == "equalized_odds" else 0.5 * (d_tpr + d_fpr)
            if -bound <= fair <= bound and (best is None or bal > best[0]):
                best = (bal, t, m)
    return best


@pytest.mark.parametrize("metric", ["equalized_odds", "average_odds"])
def test_reject_option_respects_its_bound_and_matches_the_aif360_loop(metric):
    s, y, g = _fair_data(n=1500, seed=2)
    for bound in (0.02, 0.05, 0.1):
        ro = RejectOption(bound=bound, metric=metric).fit(None, y, g, scores=s)
        assert ro.feasible_
        pred = ro.predict(None, g, scores=s).numpy()
        r = rates_by_group(pred, y, g)
        un, pr = 1 - ro.privileged_, ro.privileged_
        d_tpr, d_fpr = r["tpr"][un] - r["tpr"][pr], r["fpr"][un] - r["fpr"][pr]
        value = max(abs(d_tpr), abs(d_fpr)) if metric == "equalized_odds" else 0.5 * (d_tpr + d_fpr)
        assert -bound <= value <= bound
        assert math.isclose(value, ro.fairness_metric_, abs_tol=1e-12)
        assert ro.privileged_ == 0  # group 0 has the higher selection rate in _fair_data
    ro = RejectOption(bound=0.05, metric=metric, num_class_thresh=25, num_ROC_margin=10).fit(None, y, g, scores=s)
    bal, t, m = _aif360_reject_option_loop(s, y, g, ro.privileged_, 0.05, 25, 10, metric)
    assert (ro.classification_threshold_, ro.ROC_margin_) == (t, m)
    assert math.isclose(ro.balanced_accuracy_, bal, abs_tol=1e-12)
    with pytest.warns(UserWarning, match="unable to satisfy"):
        bad = RejectOption(bound=0.0, metric=metric, low_class_thresh=0.4, high_class_thresh=0.6, num_class_thresh=3,
                           num_ROC_margin=1).fit(None, y, g, scores=s)
    assert not bad.feasible_ and bad.ROC_margin_ == 0.0


def test_faircls_reduces_eod_as_alpha_goes_to_zero():
    s, y, g = _fair_data(n=3000, seed=3)
    eods, plug_gaps = [], []
    for alpha in (0.4, 0.2, 0.1, 0.0):
        fc = FairCls(alpha=alpha).fit(None, y, g, scores=s)
        p1 = fc.predict_proba(None, g, scores=s)[:, 1].double().numpy()
        eods.append(_eod(p1, y, g))
        # plug-in rates (weights p_y(x) = the model's own probabilities) of the realised rule
        w = np.stack([1 - s, s], 1)
        rates = [[(p1 * w[:, lab])[g == a].sum() / w[g == a, lab].sum() for a in (0, 1)] for lab in (0, 1)]
        plug_gaps.append(max(abs(r[0] - r[1]) for r in rates))
        assert plug_gaps[-1] <= alpha + 1e-6
        for (lab, a), v in fc.lp_rates_.items():  # the realised rule reproduces the LP solution
            assert abs(rates[lab][a] - v) < 1e-6
        assert abs(np.mean(p1 * (1 - s) + (1 - p1) * s) - fc.lp_risk_) < 1e-6
    assert eods[0] > 0.1
    assert eods[-1] < 0.05
    assert eods[-1] < eods[1] < eods[0]
    # demographic parity variant equalises selection rates at alpha = 0
    sp = FairCls(alpha=0.0, criterion="sp").fit(None, y, g, scores=s)
    sel = rates_by_group(sp.predict_proba(None, g, scores=s)[:, 1].double().numpy(), y, g)["selection"]
    assert abs(sel[0] - sel[1]) < 1e-6


def test_post_processors_wrap_an_mlp(trained):
    model, X, _ = trained
    sens = (X[:, 0] > 0).long()
    yy = (torch.rand(len(X), generator=torch.Generator().manual_seed(1)) < model.predict_proba(X)[:, 1]).long()
    for pp in (CalEqOdds(model), RejectOption(model, bound=0.1), FairCls(model, alpha=0.05)):
        pp.fit(X, yy, sens)
        proba = pp.predict_proba(X, sens)
        assert proba.shape == (len(X), 2) and proba.dtype == torch.float32
        assert torch.equal(pp.predict(X, sens, generator=torch.Generator().manual_seed(2)),
                           pp.predict(X, sens, seed=2))
    with pytest.raises(RuntimeError, match="not fitted"):
        FairCls(model).predict_proba(X, sens)


def test_mask_input_features_leaves_the_input_model_untouched(trained):
    model = trained[0]
    before = copy.deepcopy(model.state_dict())
    out = mask_input_features(model, [0, 1])
    assert (out.layers[0].weight[:, 2:] == 0).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_retraining_baselines_survive_a_diverging_model(trained):
    """A learning rate that overflows the weights within an epoch: the diverging epochs are undone, the
    results stay finite and keep their constraints (one unstable zoo model must not NaN an evaluation)."""
    model, X, y = trained
    lt = lottery_ticket_prune(model, 0.3, X, iterations=2, epochs_per_iteration=2, lr=1e30)
    weights = [p for n, p in lt.named_parameters() if n.endswith("weight") and p.dim() == 2]
    assert all(bool(torch.isfinite(p).all()) for p in lt.parameters())
    assert sum(int((w != 0).sum()) for w in weights) == n_kept(lt.n_weights, 0.3)
    student, kept = fs_retrain(model, X, 2, y=y, epochs=3, lr=1e30)
    assert all(bool(torch.isfinite(p).all()) for p in student.parameters())
    fs_only, _ = feature_selection(model, X, y, 2)
    # nothing finite survived an epoch: the student is the FS model it started from
    for a, b in zip(student.parameters(), fs_only.parameters()):
        assert torch.equal(a, b)
    assert torch.isfinite(student.predict_proba(X)).all()
