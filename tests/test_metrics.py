"""Tests of hubedit.metrics: metrics against fairlearn / scipy, Pareto tools against brute force, plots, timing."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
from fairlearn.metrics import equalized_odds_difference as fl_eod
from scipy.spatial.distance import jensenshannon

from hubedit import MLP, MLPConfig
from hubedit.metrics import (
    DEFAULT_REF,
    LN2,
    TimingResult,
    accuracy,
    dominance_table,
    equalized_odds_difference,
    group_rates,
    hypervolume,
    hypervolume_table,
    jsd,
    jsd_from_logits,
    pareto_figure,
    pareto_front,
    pareto_plot,
    select_on_validation,
    time_per_model,
    timing_table,
    to_markdown,
)
from hubedit.metrics import timing as timing_mod


def fairlearn_eod(y_true, y_pred, s) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on 0/0 rows of the confusion matrix
        return float(fl_eod(y_true, y_pred, sensitive_features=s))


# ==================================================================================================
# JSD
# ==================================================================================================
def random_probs(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g, dtype=dtype), -1)


def test_jsd_matches_scipy_and_bounds():
    p, q = random_probs(50, 4, seed=1), random_probs(50, 4, seed=2)
    got = jsd(p, q)
    assert got.shape == (50,)
    ref = jensenshannon(p.numpy(), q.numpy(), axis=-1) ** 2  # scipy returns the JS *distance* (sqrt), base e
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got, jsd(q, p))
    assert (got >= 0).all() and (got <= LN2).all()
    assert torch.equal(jsd(p, p), torch.zeros(50, dtype=torch.float64))
    disjoint = jsd(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.3, 0.7]))
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-7)
    # dim other than -1, and broadcasting a reference (N, C) against a batch of models (M, N, C)
    assert torch.allclose(jsd(p.T, q.T, dim=0), got)
    batch = random_probs(3, 50, 4, seed=3)
    assert jsd(batch, p).shape == (3, 50)
    assert torch.allclose(jsd(batch, p)[1], jsd(batch[1], p))


def test_jsd_gradient_is_finite_with_exact_zeros():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0 + 1.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.2, 0.8]], dtype=torch.float64, requires_grad=True)
    out = jsd(p, q)
    assert not torch.isnan(out).any()
    out.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    # zeros in both at the same class: that class drops out
    z = torch.tensor([0.0, 0.4, 0.6], requires_grad=True)
    jsd(z, torch.tensor([0.0, 0.6, 0.4])).backward()
    assert torch.isfinite(z.grad).all()
    # saturated softmax in float32 (exact zeros after underflow) through to the logits
    logits = torch.tensor([[200.0, -200.0], [-300.0, 300.0]], requires_grad=True)
    probs = torch.softmax(logits, -1)
    assert (probs == 0).any()
    jsd(probs, torch.tensor([[0.3, 0.7], [0.9, 0.1]])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_jsd_gradcheck_interior():
    p, q = random_probs(6, 3, seed=4).requires_grad_(), random_probs(6, 3, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(jsd, (p, q))


def test_jsd_from_logits_matches_probability_version():
    g = torch.Generator().manual_seed(6)
    a, b = 4 * torch.randn(40, 3, generator=g, dtype=torch.float64), 4 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(jsd_from_logits(a, b), jsd(a.softmax(-1), b.softmax(-1)), atol=1e-12)
    assert torch.allclose(jsd_from_logits(a.T, b.T, dim=0), jsd_from_logits(a, b))
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: jsd_from_logits(x, b), (a,))
    # -inf logits (exact zero probabilities) and huge logits: finite values and gradients
    x = torch.tensor([[0.0, -math.inf, 1.0], [1e4, -1e4, 0.0]], requires_grad=True)
    y = torch.tensor([[0.0, 2.0, -math.inf], [0.0, 0.0, 0.0]])
    out = jsd_from_logits(x, y)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= LN2).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


# ==================================================================================================
# Equalised odds difference
# ==================================================================================================
def random_case(rng: np.random.Generator, n_models: int):
    n = int(rng.integers(4, 60))
    k = int(rng.integers(1, 5))
    ids = rng.choice([-3, 0, 1, 2, 5, 9], size=k, replace=False)  # arbitrary, non-contiguous group ids
    s = rng.choice(ids, size=n)
    # vary the base rate so that some groups have no positives or no negatives
    y = (rng.random(n) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])).astype(np.int64)
    if rng.random() < 0.5:  # make one group all-positive or all-negative
        y[s == s[0]] = int(rng.integers(0, 2))
    yp = (rng.random((n_models, n)) < rng.random((n_models, 1))).astype(np.int64)
    return yp, y, s


def test_eod_equals_fairlearn_on_random_hard_predictions():
    rng = np.random.default_rng(0)
    n_checked = n_undefined = n_multigroup = 0
    for _ in range(60):
        yp, y, s = random_case(rng, n_models=4)
        got = equalized_odds_difference(torch.from_numpy(yp), torch.from_numpy(y), torch.from_numpy(s))
        assert got.shape == (4,) and got.dtype == torch.float64
        for m in range(len(yp)):
            expected = fairlearn_eod(y, yp[m], s)
            assert abs(got[m].item() - expected) <= 1e-12, (y, yp[m], s, got[m].item(), expected)
            n_checked += 1
        groups = np.unique(s)
        n_multigroup += len(groups) > 2
        n_undefined += any(y[s == g].min() == y[s == g].max() for g in groups)
    assert n_checked == 240 and n_undefined > 10 and n_multigroup > 10  # the edge cases were exercised


def test_eod_fairlearn_edge_cases_by_hand():
    # group 0: positives and negatives; group 1: no positives; group 2: no negatives
    y = np.array([1, 1, 0, 0, 0, 0, 0, 1, 1])
    s = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    yp = np.array([1, 0, 1, 0, 1, 1, 0, 1, 1])
    # fairlearn: TPR = (0.5, 0 [undefined -> 0], 1) -> gap 1; FPR = (0.5, 2/3, 0 [undefined -> 0]) -> gap 2/3
    assert fairlearn_eod(y, yp, s) == 1.0
    assert equalized_odds_difference(yp, y, s).item() == 1.0
    # ignoring undefined rates: TPR over groups 0, 2 -> 0.5; FPR over groups 0, 1 -> 1/6
    assert equalized_odds_difference(yp, y, s, undefined="ignore").item() == pytest.approx(0.5)
    # all predictions 0, or all labels 0, or a single group: 0, as fairlearn
    assert equalized_odds_difference(np.zeros(9, int), y, s).item() == 0.0 == fairlearn_eod(y, np.zeros(9, int), s)
    assert equalized_odds_difference(yp, np.zeros(9, int), s).item() == fairlearn_eod(np.zeros(9, int), yp, s)
    assert equalized_odds_difference(yp, y, np.zeros(9, int)).item() == 0.0
    # no group has any positive: "ignore" gives 0 for the TPR part
    assert equalized_odds_difference(yp, np.zeros(9, int), s, undefined="ignore").item() == pytest.approx(
        fairlearn_eod(np.zeros(9, int), yp, s)
    )


def test_eod_soft_is_differentiable_and_equals_hard_on_01():
    rng = np.random.default_rng(1)
    yp, y, s = random_case(rng, n_models=5)
    hard = equalized_odds_difference(torch.from_numpy(yp), y, s)
    soft01 = equalized_odds_difference(torch.from_numpy(yp).double(), y, s)
    assert torch.equal(hard, soft01)
    assert torch.allclose(equalized_odds_difference(torch.from_numpy(yp).float(), y, s).double(), hard)
    # soft probabilities from logits, batched over models, gradients reach the logits
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1])
    s = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 2])
    logits = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    out = equalized_odds_difference(torch.sigmoid(logits), y, s)
    assert out.shape == (3,)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad != 0).any()
    assert torch.autograd.gradcheck(lambda z: equalized_odds_difference(torch.sigmoid(z), y, s), (logits.detach().requires_grad_(),))


def test_eod_any_leading_axes_no_model_loop():
    rng = np.random.default_rng(2)
    yp, y, s = random_case(rng, n_models=6)
    flat = equalized_odds_difference(torch.from_numpy(yp), y, s)
    nested = equalized_odds_difference(torch.from_numpy(yp).reshape(2, 3, -1), y, s)
    assert nested.shape == (2, 3) and torch.equal(nested.reshape(-1), flat)
    single = equalized_odds_difference(torch.from_numpy(yp[4]), y, s)
    assert single.shape == () and single.item() == flat[4].item()
    assert equalized_odds_difference([True, False, True], [1, 0, 0], [0, 1, 1]).item() == 1.0


def test_eod_rejects_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        equalized_odds_difference([1, 0], [2, 0], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        equalized_odds_difference([1, 0, 1], [1, 0], [0, 1])
    with pytest.raises(ValueError, match="undefined"):
        equalized_odds_difference([1, 0], [1, 0], [0, 1], undefined="nan")


def test_group_rates_match_fairlearn_metric_frame():
    rng = np.random.default_rng(3)
    yp, y, s = random_case(rng, n_models=1)
    yp = yp[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "selection_rate": selection_rate, "n": count},
            y_true=y, y_pred=yp, sensitive_features=s,
        )
    rates = group_rates(yp, y, s)
    assert list(rates) == sorted(np.unique(s).tolist())
    for g, row in rates.items():
        for key in ("tpr", "fpr", "selection_rate", "n"):
            assert row[key] == pytest.approx(mf.by_group.loc[g, key], abs=1e-12)
        assert row["n_pos"] + row["n_neg"] == row["n"] == int((s == g).sum())
        assert row["accuracy"] == pytest.approx(float((yp[s == g] == y[s == g]).mean()))
    named = group_rates([1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1], group_names=("male", "female"), undefined="nan")
    assert list(named) == ["male", "female"]
    assert named["female"]["tpr"] == 0.0 and math.isnan(named["female"]["fpr"])
    assert group_rates([1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1])[1]["fpr"] == 0.0
    with pytest.raises(ValueError, match="one model"):
        group_rates(np.zeros((2, 4)), [1, 1, 1, 1], [0, 0, 1, 1])


def test_accuracy_probs_logits_hard_and_mlp():
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, -1.0]])
    assert accuracy(logits, y).item() == 0.75
    assert accuracy(logits.softmax(-1), y).item() == 0.75
    assert accuracy(torch.tensor([0, 1, 0, 0]), y).item() == 0.75
    batch = torch.stack([logits, -logits])
    assert accuracy(batch, y).tolist() == [0.75, 0.25]
    model = MLP(MLPConfig(in_features=5, hidden=(8,)))
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(1))
    assert accuracy(model.predict_proba(x), labels).item() == model.accuracy(x, labels)
    with pytest.raises(ValueError, match="do not match"):
        accuracy(logits, torch.tensor([0, 1]))


# ==================================================================================================
# Pareto fronts and hypervolume
# ==================================================================================================
def brute_front(pts: np.ndarray) -> set[int]:
    keep = set()
    for j, b in enumerate(pts):
        if np.isnan(b).any():
            continue
        if not any((a <= b).all() and (a < b).any() for a in pts if not np.isnan(a).any()):
            keep.add(j)
    return keep


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(4)
    for trial in range(150):
        k = int(rng.integers(0, 25))
        pts = rng.integers(0, 6, size=(k, 2)).astype(float)  # small grid: many ties and duplicates
        if trial % 3 == 0:
            pts = rng.random((k, 2))
        if k and trial % 5 == 0:
            pts[rng.integers(0, k)] = np.nan
        idx = pareto_front(pts)
        assert set(idx.tolist()) == brute_front(pts) and len(idx) == len(set(idx.tolist()))
        assert np.all(np.diff(pts[idx, 0]) >= 0)  # sorted by x
        if len(idx):
            assert np.all(np.diff(pts[idx, 1]) <= 0)  # hence y non-increasing


def test_pareto_front_by_hand():
    pts = np.array([[0.5, 0.1], [0.1, 0.5], [0.3, 0.3], [0.3, 0.3], [0.4, 0.4], [0.1, 0.6], [np.nan, 0.0], [0.5, 0.1]])
    assert pareto_front(pts).tolist() == [1, 2, 3, 0, 7]  # duplicates both kept; (0.1, 0.6) dominated by (0.1, 0.5)
    assert pareto_front(np.zeros((0, 2))).tolist() == []
    with pytest.raises(ValueError, match="shape"):
        pareto_front(np.zeros((3, 3)))


def test_select_on_validation_reports_test_points_of_validation_front():
    val = np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 0.2], [0.5, 0.1]])  # run 1 is dominated on validation
    test = np.array([[0.12, 0.55], [0.0, 0.0], [0.33, 0.25], [0.52, 0.3]])
    chosen, idx = select_on_validation(val, test, return_indices=True)
    assert idx.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(chosen, test[[0, 2, 3]])  # run 1 is not chosen, however good on test
    np.testing.assert_array_equal(select_on_validation(val, test), chosen)
    with pytest.raises(ValueError, match="same runs"):
        select_on_validation(val, test[:2])


def brute_hypervolume(pts: np.ndarray, ref) -> float:
    """Exact area of the union of boxes [x, rx] x [y, ry] by coordinate compression."""
    pts = pts[(pts[:, 0] < ref[0]) & (pts[:, 1] < ref[1])]
    xs, ys = np.unique(np.append(pts[:, 0], ref[0])), np.unique(np.append(pts[:, 1], ref[1]))
    area = 0.0
    for (xa, xb), (ya, yb) in itertools.product(zip(xs[:-1], xs[1:]), zip(ys[:-1], ys[1:])):
        if ((pts[:, 0] <= xa) & (pts[:, 1] <= ya)).any():
            area += (xb - xa) * (yb - ya)
    return area


def test_hypervolume_by_hand():
    assert DEFAULT_REF == (1.0, LN2)
    assert hypervolume([[0.5, 0.3]]) == pytest.approx(0.5 * (LN2 - 0.3))
    assert hypervolume([[0.0, 0.0]]) == pytest.approx(LN2)
    assert hypervolume([[0.0, 0.0]], normalize=True) == pytest.approx(1.0)
    two = [[0.2, 0.4], [0.6, 0.1]]
    assert hypervolume(two, ref=(1.0, 0.5)) == pytest.approx(0.4 * 0.1 + 0.4 * 0.4)
    # beyond the reference point (on either axis, or on it): nothing
    assert hypervolume([[1.2, 0.1], [0.1, 0.8], [1.0, 0.1]]) == 0.0
    assert hypervolume(np.zeros((0, 2))) == 0.0
    assert hypervolume([[1.2, 0.1], [0.5, 0.3]]) == pytest.approx(hypervolume([[0.5, 0.3]]))
    # dominated points and NaN change nothing
    assert hypervolume([[0.5, 0.3], [0.6, 0.4], [np.nan, 0.0]]) == pytest.approx(0.5 * (LN2 - 0.3))
    # x_scale: 7 of 14 features is x = 0.5
    assert hypervolume([[7, 0.3]], x_scale=14) == pytest.approx(hypervolume([[0.5, 0.3]]))
    assert hypervolume([[20, 0.3]], x_scale=14) == 0.0
    with pytest.raises(ValueError, match="x_scale"):
        hypervolume([[0.5, 0.3]], x_scale=0)


def test_hypervolume_matches_brute_force_and_monte_carlo():
    rng = np.random.default_rng(5)
    for trial in range(60):
        k = int(rng.integers(1, 15))
        pts = rng.random((k, 2)) * [1.3, 0.9]  # some beyond the reference point
        if trial % 4 == 0:
            pts = np.round(pts, 1)  # ties
        assert hypervolume(pts) == pytest.approx(brute_hypervolume(pts, DEFAULT_REF), abs=1e-12)
    pts = rng.random((10, 2)) * [1.0, LN2]
    samples = rng.random((200_000, 2)) * [1.0, LN2]
    covered = ((pts[None, :, 0] <= samples[:, None, 0]) & (pts[None, :, 1] <= samples[:, None, 1])).any(1)
    mc = covered.mean() * LN2
    se = math.sqrt(covered.mean() * (1 - covered.mean()) / len(samples)) * LN2
    assert abs(hypervolume(pts) - mc) < 5 * se


def test_dominance_and_hypervolume_tables_and_markdown():
    fronts = {
        "GMN": np.array([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]]),
        "FS": np.array([[0.2, 0.35], [0.5, 0.05], [0.1, 0.3]]),  # one dominated, one not, one equal
        "none": np.zeros((0, 2)),
    }
    df = dominance_table(fronts)
    assert list(df.index) == list(df.columns) == ["GMN", "FS", "none"]
    assert df.loc["GMN", "FS"] == pytest.approx(1 / 3)  # (0.2, 0.35) only; equal points do not dominate
    assert df.loc["FS", "GMN"] == 0.0
    assert df.loc["none", "GMN"] == 0.0
    assert np.isnan(df.loc["GMN", "GMN"]) and df["none"].isna().all()
    hv = hypervolume_table(fronts, x_scale=1.0)
    assert list(hv.index) == ["GMN", "FS", "none"]
    assert hv.loc["GMN", "hypervolume"] == pytest.approx(hypervolume(fronts["GMN"]))
    assert hv.loc["none", "hypervolume"] == 0.0 and hv.loc["FS", "points"] == 3
    assert hv.loc["GMN", "normalized"] == pytest.approx(hv.loc["GMN", "hypervolume"] / LN2)
    md = to_markdown(df)
    lines = md.splitlines()
    assert lines[0].startswith("| dominating") and "GMN" in lines[0] and set(lines[1]) <= set("|-: ")
    assert "0.3333" in md and "–" in md and "nan" not in md
    assert "| GMN " in to_markdown(hv, floatfmt=".3f")


# ==================================================================================================
# Plots
# ==================================================================================================
FRONTS = {
    "GMN": np.array([[3, 0.05], [1, 0.2], [2, 0.1], [np.nan, 0.0]]),
    "FS": np.array([[1, 0.3], [2, 0.25], [3, 0.2]]),
}


def _png_size(path) -> tuple[int, int]:
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


def _gold_pixels(path) -> int:
    import matplotlib.image

    img = matplotlib.image.imread(str(path))[..., :3]
    return int((np.abs(img - np.array([1.0, 0.843, 0.0])) < 0.05).all(-1).sum())


def test_pareto_plot_writes_png(tmp_path):
    out = pareto_plot(FRONTS, tmp_path / "sub" / "plain.png", xlabel="features used", title="Adult")
    assert out == tmp_path / "sub" / "plain.png" and out.stat().st_size > 10_000
    assert _png_size(out) == (900, 675)  # 6 x 4.5 in at 150 dpi
    fig = pareto_figure(FRONTS, xlabel="features used")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GMN", "FS"]
    gmn = ax.get_lines()[0]
    assert gmn.get_xdata().tolist() == [1, 2, 3]  # sorted by x, NaN dropped
    assert ax.get_ylabel() == "mean JSD" and ax.get_xlabel() == "features used"


def test_pareto_plot_draws_highlight(tmp_path):
    plain = pareto_plot(FRONTS, tmp_path / "plain.png", xlabel="x")
    star = pareto_plot(FRONTS, tmp_path / "star.png", xlabel="x", highlight=(2, 0.15), highlight_label="my model")
    assert _gold_pixels(plain) == 0 and _gold_pixels(star) > 50
    ax = pareto_figure(FRONTS, xlabel="x", highlight=(2, 0.15), highlight_label="my model").axes[0]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata().tolist() == [2.0] and stars[0].get_ydata().tolist() == [0.15]
    assert "my model" in [t.get_text() for t in ax.get_legend().get_texts()]


def _red_pixels(path) -> int:
    import matplotlib.image

    img = matplotlib.image.imread(str(path))[..., :3]
    return int((np.abs(img - np.array([1.0, 0.0, 0.0])) < 0.05).all(-1).sum())


def test_pareto_plot_marks_degenerate_points_and_reference_lines(tmp_path):
    plain = pareto_plot(FRONTS, tmp_path / "plain.png", xlabel="x")
    marked = pareto_plot(FRONTS, tmp_path / "marked.png", xlabel="x", degenerate=[[1, 0.3], [np.nan, 0.1]],
                         degenerate_label="degenerate (accuracy <= 0.76)", hline=(0.24, "majority class"))
    assert _red_pixels(plain) == 0 and _red_pixels(marked) > 50
    ax = pareto_figure(FRONTS, xlabel="x", degenerate=[[1, 0.3], [np.nan, 0.1]], degenerate_label="deg",
                       hline=(0.24, "majority class"), vline=(2.5, "v")).axes[0]
    rings = [ln for ln in ax.get_lines() if ln.get_label() == "deg"]
    assert len(rings) == 1 and rings[0].get_xdata().tolist() == [1.0] and rings[0].get_ydata().tolist() == [0.3]
    assert rings[0].get_markerfacecolor() == "none" and rings[0].get_markeredgecolor() == "red"
    (h,) = [ln for ln in ax.get_lines() if ln.get_label() == "majority class"]
    assert list(h.get_ydata()) == [0.24, 0.24]
    (v,) = [ln for ln in ax.get_lines() if ln.get_label() == "v"]
    assert list(v.get_xdata()) == [2.5, 2.5]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GMN", "FS", "deg", "majority class", "v"]
    # nothing to mark: no ring series, no legend entry
    ax = pareto_figure(FRONTS, xlabel="x", degenerate=np.zeros((0, 2))).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GMN", "FS"]


def test_plotting_leaves_pyplot_and_backend_alone(tmp_path):
    # a user who chose another backend keeps it; pyplot (global figure state) is never imported
    code = (
        "import sys, matplotlib; "
        "from hubedit.metrics import pareto_plot; "
        f"pareto_plot({{'a': [[0, 0.1], [1, 0.0]]}}, {str(tmp_path / 'p.png')!r}, xlabel='x'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    assert (tmp_path / "p.png").is_file()


# ==================================================================================================
# Timing
# ==================================================================================================
def test_time_per_model_with_a_fake_clock(monkeypatch):
    clock = [0.0]
    calls: list = []
    syncs: list = []
    monkeypatch.setattr(timing_mod.time, "perf_counter", lambda: clock[0])

    def fn(item):
        calls.append(item)
        clock[0] += item

    res = time_per_model(fn, [1.0, 2.0, 3.0, 10.0], warmup=2, repeats=2, sync=lambda: syncs.append(1))
    assert calls[:2] == [1.0, 2.0] and len(calls) == 2 + 8  # warm-up calls are not timed
    assert len(syncs) == 16
    assert res == TimingResult(median_s=2.5, mean_s=4.0, p90_s=pytest.approx(10.0), n=8)
    batched = time_per_model(fn, [8.0], warmup=0, models_per_item=4, sync=None)
    assert batched.median_s == 2.0 and batched.n == 1
    with pytest.raises(ValueError):
        time_per_model(fn, [])


def test_time_per_model_real_clock_and_table():
    res = time_per_model(lambda n: sum(range(n)), [1000] * 5, repeats=2)
    assert res.n == 10 and 0 < res.median_s <= res.p90_s and res.mean_s > 0
    slow = TimingResult(median_s=2.0, mean_s=2.1, p90_s=2.5, n=10)
    table = timing_table({"GMN": TimingResult(0.004, 0.005, 0.006, 100), "FS & Retrain": slow})
    lines = table.splitlines()
    assert lines[0].startswith("| method") and "median s/model" in lines[0]
    assert "| GMN" in table and "1.0x" in table and "500.0x" in table and "2.00" in table
    assert slow.to_dict() == {"median_s": 2.0, "mean_s": 2.1, "p90_s": 2.5, "n": 10}
