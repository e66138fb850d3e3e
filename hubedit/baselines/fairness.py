"""Fairness post-processing baselines (paper section 5, "Bias Mitigation"; A.4.2).

All four post-process the score ``s(x) = P(y = 1 | x)`` of a trained binary classifier (an
:class:`~hubedit.MLP`'s softmax, or scores passed directly), with the binary sensitive attribute
(``0``/``1``) given at prediction time, as in the paper's post-processing setting. Each is fitted on the
task's *editing* split and exposes one interface:

``fit(X, y, sensitive, *, scores=None) -> self``
``predict_proba(X, sensitive, *, scores=None) -> Tensor (N, 2)``
    the probability of each class of the post-processed (possibly randomised) decision: column 1 is the
    probability of predicting ``1`` (``0``/``1`` for deterministic rules).
``predict(X, sensitive, *, scores=None, seed=0, generator=None) -> LongTensor (N,)``
    hard labels, ``1`` where ``u < predict_proba[:, 1]`` for ``u ~ U[0, 1)`` drawn from ``generator``
    (default: a generator seeded with ``seed``), so randomised rules are reproducible.

When ``scores`` is given, ``X`` is not used (it may be ``None``) and no model is needed; otherwise the
scores are ``model.predict_proba(X)[:, 1]`` of the model passed at construction.

=================  ====================================================================================
``ThresholdOpt``   fairlearn's ``ThresholdOptimizer`` (Hardt et al. 2016), ``prefit=True``
``CalEqOdds``      port of aif360's ``CalibratedEqOddsPostprocessing`` (Pleiss et al. 2017)
``RejectOption``   port of aif360's ``RejectOptionClassification`` (Kamiran et al. 2012)
``FairCls``        Xian et al.'s LP post-processing ("Fair and Optimal Classification via
                   Post-Processing", ICML 2023; its 2024 extension to equalised odds), binary,
                   attribute-aware
=================  ====================================================================================
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from ..mlp import MLP

__all__ = [
    "MLPScoreEstimator",
    "ThresholdOpt",
    "CalEqOdds",
    "RejectOption",
    "FairCls",
]


# --- shared machinery ----------------------------------------------------------------------------------------------
def _np(t: Any, dtype=None) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=dtype)


def _groups(sensitive: Any, n: int) -> np.ndarray:
    g = _np(sensitive).reshape(-1)
    if g.shape[0] != n:
        raise ValueError(f"expected {n} sensitive values, got {g.shape[0]}")
    if not np.isin(g, (0, 1)).all():
        raise ValueError("the sensitive attribute must be binary (0/1)")
    return g.astype(np.int64)


class _PostProcessor:
    """Base: scores from the model or given, randomised prediction from ``predict_proba``."""

    def __init__(self, model: MLP | None = None):
        self.model = model

    def _scores(self, X: Any, scores: Any) -> np.ndarray:
        if scores is not None:
            s = _np(scores, np.float64)
            if s.ndim == 2:  # a (N, 2) probability matrix
                s = s[:, 1]
            return s.reshape(-1)
        if self.model is None:
            raise ValueError(f"{type(self).__name__} has no model: pass scores=")
        X = torch.as_tensor(X, dtype=torch.float32) if not isinstance(X, torch.Tensor) else X
        return self.model.predict_proba(X)[:, 1].double().numpy()

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit first")

    def fit(self, X: Any, y: Any, sensitive: Any, *, scores: Any = None):
        s = self._scores(X, scores)
        y = _np(y).reshape(-1).astype(np.int64)
        if len(y) != len(s):
            raise ValueError(f"expected {len(s)} labels, got {len(y)}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be binary (0/1)")
        self._fit(s, y, _groups(sensitive, len(s)), X)
        self.fitted_ = True
        return self

    def _fit(self, s: np.ndarray, y: np.ndarray, g: np.ndarray, X: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def _p1(self, s: np.ndarray, g: np.ndarray, X: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def positive_probability(self, X: Any, sensitive: Any, *, scores: Any = None) -> np.ndarray:
        """``P(yhat = 1)`` per point, float64 numpy."""
        self._check_fitted()
        s = self._scores(X, scores)
        return np.clip(self._p1(s, _groups(sensitive, len(s)), X), 0.0, 1.0)

    def predict_proba(self, X: Any, sensitive: Any, *, scores: Any = None) -> torch.Tensor:
        p1 = torch.from_numpy(self.positive_probability(X, sensitive, scores=scores))
        return torch.stack([1.0 - p1, p1], dim=1).to(torch.float32)

    def predict(self, X: Any, sensitive: Any, *, scores: Any = None, seed: int | None = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        p1 = torch.from_numpy(self.positive_probability(X, sensitive, scores=scores))
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        u = torch.rand(p1.shape, generator=generator, dtype=torch.float64)
        return (u < p1).long()


# --- ThresholdOpt --------------------------------------------------------------------------------------------------
class MLPScoreEstimator(ClassifierMixin, BaseEstimator):
    """A prefit scikit-learn classifier around an :class:`~hubedit.MLP` (``predict_proba`` = softmax),
    or, with ``model=None``, around precomputed scores passed as the single column of ``X``."""

    def __init__(self, model: MLP | None = None):
        self.model = model

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X, y=None, **kwargs):  # prefit: nothing to learn
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = _np(X, np.float32)
        if self.model is None:
            s = X.reshape(len(X), -1)[:, 0].astype(np.float64)
            return np.stack([1.0 - s, s], axis=1)
        return self.model.predict_proba(torch.from_numpy(np.ascontiguousarray(X))).double().numpy()

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


class ThresholdOpt(_PostProcessor):
    """fairlearn's ``ThresholdOptimizer`` (Hardt et al. 2016) on the model's scores, ``prefit=True``,
    ``predict_method="predict_proba"``; ``predict_proba`` from its ``_pmf_predict``.

    ``constraints="equalized_odds"`` (default) equalises TPR and FPR exactly on the fit data (in
    expectation over the randomisation): one Pareto point, as the paper notes. ``tol`` is passed through
    to fairlearn (>= 0.13) for relaxed constraints; fairlearn 0.15 supports it only for the single-rate
    constraints (e.g. ``"true_positive_rate_parity"``, ``"false_positive_rate_parity"``) and raises for
    ``"equalized_odds"``.
    """

    def __init__(self, model: MLP | None = None, *, constraints: str = "equalized_odds",
                 objective: str = "accuracy_score", grid_size: int = 1000, flip: bool = False,
                 tol: float | None = None):
        super().__init__(model)
        self.constraints, self.objective, self.grid_size, self.flip, self.tol = (
            constraints, objective, grid_size, flip, tol)

    def _features(self, X: Any, s: np.ndarray, scores: Any) -> np.ndarray:
        if scores is not None or self.model is None:
            return s.reshape(-1, 1)
        return _np(X, np.float32)

    def fit(self, X: Any, y: Any, sensitive: Any, *, scores: Any = None):
        from fairlearn.postprocessing import ThresholdOptimizer

        s = self._scores(X, scores)
        y = _np(y).reshape(-1).astype(np.int64)
        g = _groups(sensitive, len(s))
        use_scores = scores is not None or self.model is None
        kwargs = dict(
            estimator=MLPScoreEstimator(None if use_scores else self.model),
            constraints=self.constraints, objective=self.objective, grid_size=self.grid_size,
            flip=self.flip, prefit=True, predict_method="predict_proba",
        )
        if self.tol is not None:
            kwargs["tol"] = self.tol
        self.optimizer_ = ThresholdOptimizer(**kwargs)
        self._fit_on_scores = use_scores
        self.optimizer_.fit(self._features(X, s, scores if use_scores else None), y, sensitive_features=g)
        self.fitted_ = True
        return self

    def positive_probability(self, X: Any, sensitive: Any, *, scores: Any = None) -> np.ndarray:
        self._check_fitted()
        if self._fit_on_scores:
            s = self._scores(X, scores)
            feats = s.reshape(-1, 1)
        else:
            if scores is not None:
                raise ValueError("this ThresholdOpt was fitted on the model: predict from X, not scores=")
            feats = _np(X, np.float32)
        g = _groups(sensitive, len(feats))
        pmf = self.optimizer_._pmf_predict(feats, sensitive_features=g)
        return np.clip(np.asarray(pmf, dtype=np.float64)[:, 1], 0.0, 1.0)

    def predict_fairlearn(self, X: Any, sensitive: Any, *, scores: Any = None, random_state: int = 0) -> np.ndarray:
        """fairlearn's own randomised ``predict`` (its ``random_state``), for cross-checking."""
        self._check_fitted()
        feats = self._scores(X, scores).reshape(-1, 1) if self._fit_on_scores else _np(X, np.float32)
        return self.optimizer_.predict(feats, sensitive_features=_groups(sensitive, len(feats)),
                                       random_state=random_state)


# --- CalEqOdds -------------------------------------------------------------------------------------------------------
#: ``CalEqOdds(weighted_cost=)``: "aif360" and "pleiss" are one formula (aif360 >= 0.3.0); "aif360<0.3" the old one
_WEIGHTED_COSTS = ("aif360", "pleiss", "aif360<0.3")


class CalEqOdds(_PostProcessor):
    """Port of aif360's ``CalibratedEqOddsPostprocessing`` (Pleiss et al. 2017).

    Fit: per group ``a``, base rate ``mu_a = P(y=1 | a)``, generalised FPR ``E[s | y=0, a]`` and
    generalised FNR ``E[1 - s | y=1, a]``; the cost is one of them (``cost_constraint`` ``"fpr"`` /
    ``"fnr"``) or their weighted sum (``"weighted"``). The group with the lower cost gets a mix rate
    ``m = (cost_other - cost) / (cost_trivial - cost)``: its score is replaced, with probability ``m``, by
    its base rate (the "trivial" calibrated classifier), which raises its cost to the other group's (in
    expectation); the other group's mix rate is 0. Predict: the (randomised) score is thresholded,
    ``yhat = 1`` iff score ``>= threshold``. So ``P(yhat = 1) = (1 - m_a) [s >= t] + m_a [mu_a >= t]``.

    ``weighted_cost`` (``cost_constraint="weighted"`` only): ``"aif360"`` (default) is aif360's
    ``weighted_cost`` since aif360 0.3.0 (up to 0.6.1, checked in ``tests/test_crosscheck.py``), the
    same as Pleiss et al.'s code: ``(fpr_w * GFPR * (1 - mu) + fnr_w * GFNR * mu) / (fpr_w + fnr_w)``;
    ``"pleiss"`` is a synonym. ``"aif360<0.3"`` is aif360 0.1-0.2.3's formula, which weighted *both*
    terms by ``1 - mu``: ``(fpr_w * GFPR + fnr_w * GFNR) * (1 - mu) / (fpr_w + fnr_w)`` (what hubedit
    used as ``"aif360"`` before; kept to reproduce those results).
    Departures from aif360: mix rates are clipped to ``[0, 1]`` (aif360 draws ``U <= m``, the same for
    ``m > 1``); a zero denominator gives mix rate 0; the randomisation uses one generator for all points
    instead of numpy's global seed per group (same distribution).

    ``output="decision"`` (default): ``predict_proba`` is the probability of the thresholded decision.
    ``output="score"``: ``predict_proba`` is the expected post-processed score
    ``(1 - m_a) s + m_a mu_a`` (the calibrated probability the method outputs before thresholding).
    """

    def __init__(self, model: MLP | None = None, *, cost_constraint: str = "weighted",
                 weighted_cost: str = "aif360", threshold: float = 0.5, output: str = "decision"):
        super().__init__(model)
        if cost_constraint not in ("fpr", "fnr", "weighted"):
            raise ValueError(f"cost_constraint must be 'fpr', 'fnr' or 'weighted', got {cost_constraint!r}")
        if weighted_cost not in _WEIGHTED_COSTS:
            raise ValueError(f"weighted_cost must be one of {_WEIGHTED_COSTS}, got {weighted_cost!r}")
        if output not in ("decision", "score"):
            raise ValueError(f"output must be 'decision' or 'score', got {output!r}")
        self.cost_constraint, self.weighted_cost, self.threshold, self.output = (
            cost_constraint, weighted_cost, float(threshold), output)
        self.fn_rate, self.fp_rate = {"fnr": (1, 0), "fpr": (0, 1), "weighted": (1, 1)}[cost_constraint]

    def group_cost(self, s: np.ndarray, y: np.ndarray, base_rate: float) -> float:
        """The targeted generalised cost of scores ``s`` with labels ``y`` in a group of base rate ``mu``."""
        gfpr = float(s[y == 0].mean()) if (y == 0).any() else 0.0
        gfnr = float((1.0 - s[y == 1]).mean()) if (y == 1).any() else 0.0
        if self.fn_rate == 0:
            return gfpr
        if self.fp_rate == 0:
            return gfnr
        norm = float(self.fp_rate + self.fn_rate)
        fn_weight = (1.0 - base_rate) if self.weighted_cost == "aif360<0.3" else base_rate
        return self.fp_rate / norm * gfpr * (1.0 - base_rate) + self.fn_rate / norm * gfnr * fn_weight

    def _fit(self, s, y, g, X) -> None:
        self.base_rate_ = np.zeros(2)
        cost, trivial = np.zeros(2), np.zeros(2)
        for a in (0, 1):
            m = g == a
            if not m.any():
                raise ValueError(f"group {a} has no points in the fit data")
            mu = float(y[m].mean())
            self.base_rate_[a] = mu
            cost[a] = self.group_cost(s[m], y[m], mu)
            trivial[a] = self.group_cost(np.full(int(m.sum()), mu), y[m], mu)
        self.cost_, self.trivial_cost_ = cost, trivial
        # aif360: privileged = group 1 here, unprivileged = group 0 (the rule is symmetric)
        self.mix_rate_ = np.zeros(2)
        lo, hi = (1, 0) if cost[0] > cost[1] else (0, 1)  # lo: the cheaper group, gets mixed
        denom = trivial[lo] - cost[lo]
        if cost[hi] != cost[lo] and denom != 0:
            self.mix_rate_[lo] = float(np.clip((cost[hi] - cost[lo]) / denom, 0.0, 1.0))

    def expected_score(self, X: Any, sensitive: Any, *, scores: Any = None) -> torch.Tensor:
        """Expected post-processed score ``(1 - m_a) s + m_a mu_a``, shape ``(N,)``, float64."""
        self._check_fitted()
        s = self._scores(X, scores)
        g = _groups(sensitive, len(s))
        m = self.mix_rate_[g]
        return torch.from_numpy((1.0 - m) * s + m * self.base_rate_[g])

    def _p1(self, s, g, X) -> np.ndarray:
        m = self.mix_rate_[g]
        if self.output == "score":
            return (1.0 - m) * s + m * self.base_rate_[g]
        t = self.threshold
        return (1.0 - m) * (s >= t) + m * (self.base_rate_[g] >= t)


# --- RejectOption ----------------------------------------------------------------------------------------------------
_ROC_METRICS = ("equalized_odds", "average_odds", "equal_opportunity", "statistical_parity")


class RejectOption(_PostProcessor):
    """Port of aif360's ``RejectOptionClassification`` (Kamiran et al. 2012).

    Rule for classification threshold ``t`` and ROC margin ``m``: ``yhat = 1`` iff ``s > t``, except in
    the critical region ``t - m < s <= t + m`` where the unprivileged group gets ``1`` and the privileged
    group ``0`` (so privileged: ``s > t + m``; unprivileged: ``s > t - m``). Fit: grid search over
    ``num_class_thresh`` thresholds in ``[low_class_thresh, high_class_thresh]`` and, per threshold,
    ``num_ROC_margin`` margins in ``[0, min(t, 1 - t)]`` (aif360's grids and order); among the settings
    whose fairness metric on the fit data lies within the bound, the one with the highest balanced
    accuracy (first in grid order on ties). The grid is evaluated vectorised (sorted scores, counts by
    binary search), with the same result as aif360's loop (rates computed as aif360 does, ``TP / P`` and
    ``TN / N``, so that ties in balanced accuracy break the same way; checked against aif360 0.6.1 in
    ``tests/test_crosscheck.py``).

    ``metric`` (difference = unprivileged minus privileged, as in aif360):
    ``"equalized_odds"`` (default; an addition, what hubedit reports: ``max(|dTPR|, |dFPR|) <= bound``),
    ``"average_odds"`` (aif360 "Average odds difference": ``(dFPR + dTPR) / 2``),
    ``"equal_opportunity"`` (``dTPR``), ``"statistical_parity"`` (difference of selection rates); the
    signed metrics must lie in ``[-bound, bound]`` (aif360's ``metric_lb``/``metric_ub``; set them
    separately with ``metric_lb=``/``metric_ub=``). ``bound`` is the sweep parameter.
    If no setting satisfies the bound, both warn (``feasible_`` is False) and, by ``infeasible``:
    ``"min_abs"`` (default) takes the setting with the smallest ``|metric|``; ``"aif360"`` takes, as
    aif360 does, the one with the smallest *signed* metric (e.g. the most negative average odds
    difference, possibly the farthest from the bound); first in grid order on ties.
    ``privileged_group``: ``0``, ``1`` or ``"auto"`` (default: the group with the higher rate of
    ``s > 0.5`` on the fit data; Adult: male, group 0).
    """

    def __init__(self, model: MLP | None = None, *, bound: float = 0.05, metric: str = "equalized_odds",
                 metric_lb: float | None = None, metric_ub: float | None = None,
                 privileged_group: int | str = "auto", low_class_thresh: float = 0.01,
                 high_class_thresh: float = 0.99, num_class_thresh: int = 100, num_ROC_margin: int = 50,
                 infeasible: str = "min_abs"):
        super().__init__(model)
        if infeasible not in ("min_abs", "aif360"):
            raise ValueError(f"infeasible must be 'min_abs' or 'aif360', got {infeasible!r}")
        self.infeasible = infeasible
        if metric not in _ROC_METRICS:
            raise ValueError(f"metric must be one of {_ROC_METRICS}, got {metric!r}")
        if not (0.0 <= low_class_thresh < high_class_thresh <= 1.0) or num_class_thresh < 1 or num_ROC_margin < 1:
            raise ValueError("Input parameter values out of bounds")
        if privileged_group not in (0, 1, "auto"):
            raise ValueError(f"privileged_group must be 0, 1 or 'auto', got {privileged_group!r}")
        self.bound, self.metric = float(bound), metric
        self.metric_lb = -self.bound if metric_lb is None else float(metric_lb)
        self.metric_ub = self.bound if metric_ub is None else float(metric_ub)
        self.privileged_group = privileged_group
        self.low_class_thresh, self.high_class_thresh = float(low_class_thresh), float(high_class_thresh)
        self.num_class_thresh, self.num_ROC_margin = int(num_class_thresh), int(num_ROC_margin)

    def _fit(self, s, y, g, X) -> None:
        if self.privileged_group == "auto":
            sel = [float((s[g == a] > 0.5).mean()) if (g == a).any() else 0.0 for a in (0, 1)]
            self.privileged_ = 1 if sel[1] > sel[0] else 0
        else:
            self.privileged_ = int(self.privileged_group)
        priv = self.privileged_
        thr = np.linspace(self.low_class_thresh, self.high_class_thresh, self.num_class_thresh)
        hi = np.where(thr <= 0.5, thr, 1.0 - thr)
        # (T, M): per threshold, linspace(0, min(t, 1 - t), M) as aif360 computes it
        margins = np.stack([np.linspace(0.0, h, self.num_ROC_margin) for h in hi])
        T = thr[:, None]

        def count_above(values: np.ndarray, cut: np.ndarray) -> np.ndarray:
            srt = np.sort(values)
            return len(srt) - np.searchsorted(srt, cut, side="right")

        pos = {}  # (group, label) -> number predicted 1 on the grid
        for a in (0, 1):
            cut = T + margins if a == priv else T - margins
            for lab in (0, 1):
                pos[a, lab] = count_above(s[(g == a) & (y == lab)], cut)
        n = {(a, lab): int(((g == a) & (y == lab)).sum()) for a in (0, 1) for lab in (0, 1)}

        def rate(num, den):
            return num / den if den > 0 else np.full(num.shape, np.nan)

        P, N = n[0, 1] + n[1, 1], n[0, 0] + n[1, 0]
        tpr_all = rate(pos[0, 1] + pos[1, 1], P)
        tnr_all = rate(N - (pos[0, 0] + pos[1, 0]), N)  # TN / N as aif360 (1 - FP / N can differ by an ulp)
        bal_acc = 0.5 * (tpr_all + tnr_all)
        un = 1 - priv
        d_tpr = rate(pos[un, 1], n[un, 1]) - rate(pos[priv, 1], n[priv, 1])
        d_fpr = rate(pos[un, 0], n[un, 0]) - rate(pos[priv, 0], n[priv, 0])
        d_sel = (rate(pos[un, 0] + pos[un, 1], n[un, 0] + n[un, 1])
                 - rate(pos[priv, 0] + pos[priv, 1], n[priv, 0] + n[priv, 1]))
        fair = {
            "equalized_odds": np.maximum(np.abs(d_tpr), np.abs(d_fpr)),
            "average_odds": 0.5 * (d_fpr + d_tpr),
            "equal_opportunity": d_tpr,
            "statistical_parity": d_sel,
        }[self.metric]
        with np.errstate(invalid="ignore"):
            ok = (fair >= self.metric_lb) & (fair <= self.metric_ub)
        ok &= ~np.isnan(bal_acc)
        if ok.any():
            flat = np.where(ok, bal_acc, -np.inf).reshape(-1)
            best = int(np.argmax(flat))
            self.feasible_ = True
        else:
            rule = "smallest |metric|" if self.infeasible == "min_abs" else "smallest signed metric (aif360)"
            warnings.warn(f"RejectOption: unable to satisfy the fairness constraint; taking the {rule}",
                          stacklevel=3)
            best = int(np.nanargmin((np.abs(fair) if self.infeasible == "min_abs" else fair).reshape(-1)))
            self.feasible_ = False
        i, j = divmod(best, self.num_ROC_margin)
        self.classification_threshold_ = float(thr[i])
        self.ROC_margin_ = float(margins[i, j])
        self.balanced_accuracy_ = float(bal_acc[i, j])
        self.fairness_metric_ = float(fair[i, j])

    def _p1(self, s, g, X) -> np.ndarray:
        t, m = self.classification_threshold_, self.ROC_margin_
        fav = s > t
        crit = (s <= t + m) & (s > t - m)
        out = fav.copy()
        out[crit & (g == self.privileged_)] = False
        out[crit & (g != self.privileged_)] = True
        return out.astype(np.float64)


# --- FairCls ---------------------------------------------------------------------------------------------------------
class FairCls(_PostProcessor):
    """Xian et al.'s fair and optimal post-processing, binary, attribute-aware, as one linear program.

    The method (Xian, Yin & Zhao, ICML 2023, for demographic parity; Xian & Zhao 2024 for equalised
    odds) finds the randomised assignment ``pi(x) = P(yhat = 1 | x)`` of the fit points that minimises the
    plug-in risk ``mean_x [pi(x) (1 - p1(x)) + (1 - pi(x)) p1(x)]`` (``p1`` = the model's score) subject to
    every group's rates lying within ``alpha / 2`` of common targets ``q``:

    * ``criterion="eo"`` (default): plug-in TPR and FPR, ``R_{a,y} = E[pi p_y | a] / E[p_y | a]`` for
      ``y = 1, 0`` (the rates the model's own probabilities predict; labels are not used, as in the
      official code's ``pred_ay_fn`` with a known attribute),
    * ``criterion="sp"``: selection rates ``E[pi | a]`` (the ICML 2023 demographic-parity problem; in
      the binary attribute-aware case its Wasserstein-barycenter LP has the same solution).

    ``alpha`` (the fairness tolerance, the sweep parameter) bounds the gap between groups' rates; ``alpha = 0``
    is exact (plug-in) parity. Solved with ``scipy.optimize.linprog`` (HiGHS) instead of cvxpy/Gurobi.

    Realisation (differs from the official code): the official predictor is the dual rule
    ``argmin_k risk_k(x) - fairness cost`` plus random noise; in the binary attribute-aware EO case the
    group whose rates must be pulled into the interior of its ROC region gets an all-tied (degenerate)
    dual rule there, decided by the noise. Since the plug-in risk depends on the assignment only through
    the group rates, this port keeps the LP's optimal rates and realises them per group with the
    canonical randomised rule of Hardt et al.: a threshold on the score (randomised on the boundary score)
    reaching the target FPR on the group's plug-in ROC curve, mixed with probability ``p_ignore`` with
    the constant predictor ``P(yhat=1) = FPR``. The LP optimum (risk and rates on the fit data) is
    reproduced exactly, and the rule applies to unseen points.
    """

    def __init__(self, model: MLP | None = None, *, alpha: float = 0.0, criterion: str = "eo"):
        super().__init__(model)
        if criterion not in ("eo", "sp"):
            raise ValueError(f"criterion must be 'eo' or 'sp', got {criterion!r}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.criterion = float(alpha), criterion

    def _fit(self, s, y, g, X) -> None:
        from scipy.optimize import linprog
        from scipy.sparse import csr_matrix, hstack, vstack

        n = len(s)
        p = np.stack([1.0 - s, s], axis=1)  # p_y(x)
        groups = [a for a in (0, 1) if (g == a).any()]
        # constraint families: one target q per family; a weight vector gamma per (family, group)
        if self.criterion == "eo":
            families = [(lab, lambda a, lab=lab: (g == a) * p[:, lab]) for lab in (0, 1)]
        else:
            families = [("sel", lambda a: (g == a).astype(np.float64))]
        rows, q_cols, names = [], [], []
        for fi, (name, weight) in enumerate(families):
            for a in groups:
                w = weight(a)
                tot = w.sum()
                if tot <= 0:
                    continue
                rows.append(w / tot)  # rate = rows @ pi
                q_cols.append(fi)
                names.append((name, a))
        G = csr_matrix(np.stack(rows))
        Q = csr_matrix((np.ones(len(rows)), (np.arange(len(rows)), q_cols)), shape=(len(rows), len(families)))
        A = vstack([hstack([G, -Q]), hstack([-G, Q])]).tocsr()
        b = np.full(2 * len(rows), self.alpha / 2.0)
        c = np.concatenate([(1.0 - 2.0 * s) / n, np.zeros(len(families))])  # risk(pi) - risk(0)
        bounds = [(0.0, 1.0)] * n + [(0.0, 1.0)] * len(families)
        res = linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"FairCls: the linear program failed: {res.message}")
        pi = np.clip(res.x[:n], 0.0, 1.0)
        self.lp_assignment_ = pi
        self.lp_risk_ = float(np.mean(pi * (1.0 - s) + (1.0 - pi) * s))
        self.targets_ = res.x[n:]
        self.lp_rates_ = {nm: float(r) for nm, r in zip(names, G @ pi)}
        self.rules_ = {}
        for a in groups:
            m = g == a
            if self.criterion == "eo":
                w_neg, w_pos = p[m, 0], p[m, 1]
                fpr, tpr = self.lp_rates_[0, a], self.lp_rates_[1, a]
            else:
                w_neg = w_pos = np.ones(int(m.sum()))
                fpr = tpr = self.lp_rates_["sel", a]
            self.rules_[a] = _realise_rates(s[m], w_neg, w_pos, fpr, tpr)
        self.default_rule_ = self.rules_[groups[0]]

    def _p1(self, s, g, X) -> np.ndarray:
        out = np.zeros(len(s))
        for a in (0, 1):
            m = g == a
            if m.any():
                out[m] = self.rules_.get(a, self.default_rule_).apply(s[m])
        return out


class _RateRule:
    """``P(yhat=1 | s) = (1 - p_ignore) * step(s) + p_ignore * constant`` with
    ``step = 1 if s beyond cut, rho if s == cut, else 0`` ("beyond": above, or below when ``reverse``)."""

    def __init__(self, cut: float, rho: float, reverse: bool, p_ignore: float, constant: float):
        self.cut, self.rho, self.reverse, self.p_ignore, self.constant = cut, rho, reverse, p_ignore, constant

    def apply(self, s: np.ndarray) -> np.ndarray:
        beyond = s < self.cut if self.reverse else s > self.cut
        step = np.where(beyond, 1.0, np.where(s == self.cut, self.rho, 0.0))
        return (1.0 - self.p_ignore) * step + self.p_ignore * self.constant

    def __repr__(self) -> str:
        return (f"_RateRule(cut={self.cut:.6g}, rho={self.rho:.4g}, reverse={self.reverse}, "
                f"p_ignore={self.p_ignore:.4g}, constant={self.constant:.4g})")


def _curve_point(s: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray, fpr: float, reverse: bool):
    """The threshold rule (ordering scores descending, or ascending when ``reverse``) whose weighted
    negative rate is ``fpr``: returns (cut, rho, its weighted positive rate)."""
    key = -s if reverse else s
    uniq, inv = np.unique(-key, return_inverse=True)  # ascending in -key = descending in key
    neg = np.bincount(inv, weights=w_neg, minlength=len(uniq))
    pos = np.bincount(inv, weights=w_pos, minlength=len(uniq))
    neg_tot, pos_tot = neg.sum(), pos.sum()
    F = np.concatenate([[0.0], np.cumsum(neg)]) / (neg_tot if neg_tot > 0 else 1.0)
    T = np.concatenate([[0.0], np.cumsum(pos)]) / (pos_tot if pos_tot > 0 else 1.0)
    cuts = -uniq if not reverse else uniq  # score value of each unique block
    j = int(np.searchsorted(F, fpr, side="right"))  # F[j-1] <= fpr < F[j]
    if j > len(uniq):  # fpr >= 1: everything predicted 1 (beyond the last block, inclusive)
        return float(cuts[-1]), 1.0, float(T[-1])
    span = F[j] - F[j - 1]
    rho = float((fpr - F[j - 1]) / span) if span > 0 else 0.0
    return float(cuts[j - 1]), rho, float(T[j - 1] + rho * (T[j] - T[j - 1]))


def _realise_rates(s: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray, fpr: float, tpr: float) -> _RateRule:
    """A randomised score rule with weighted negative rate ``fpr`` and positive rate ``tpr`` in one group."""
    fpr = float(np.clip(fpr, 0.0, 1.0))
    reverse = tpr < fpr - 1e-12  # below the diagonal: use the lower (reversed) curve
    cut, rho, t_curve = _curve_point(s, w_neg, w_pos, fpr, reverse)
    gap = t_curve - fpr
    p_ignore = float(np.clip((t_curve - tpr) / gap, 0.0, 1.0)) if abs(gap) > 1e-12 else 0.0
    return _RateRule(cut, rho, reverse, p_ignore, fpr)
