"""The paper's baselines (section 5, A.4): each edits ONE model with data from the task's editing split.

* pruning (:mod:`.pruning`): ``random_prune``, ``magnitude_prune``, ``grad_prune``, ``snip_prune``,
  ``lottery_ticket_prune`` -> an edited :class:`~hubedit.MLP` with exactly ``round(keep * n_weights)``
  non-zero weights; ``masks_of`` gives the kept-weight masks.
* data minimisation (:mod:`.minimisation`): ``permutation_importance``, ``feature_selection`` (FS),
  ``fs_retrain`` (FS & Retrain) -> ``(edited MLP, kept feature indices)``.
* fairness post-processing (:mod:`.fairness`): ``ThresholdOpt``, ``CalEqOdds``, ``RejectOption``,
  ``FairCls`` -> fitted post-processors with ``predict_proba(X, sensitive)`` and
  ``predict(X, sensitive, seed=...)``.

Sweep parameters (what the evaluation pipeline varies per method): pruning ``keep``; FS / FS & Retrain
``n_keep``; ``RejectOption(bound=)``; ``FairCls(alpha=)``; ``ThresholdOpt`` and ``CalEqOdds`` are single
points (``cost_constraint`` / ``constraints`` variants aside).
"""

from .fairness import CalEqOdds, FairCls, MLPScoreEstimator, RejectOption, ThresholdOpt
from .feature_selection import (
    feature_selection,
    fs_retrain,
    input_weight_names,
    mask_input_features,
    permutation_importance,
    select_features,
)
from .weight_pruning import (
    global_topk_masks,
    grad_prune,
    grad_scores,
    lottery_ticket_prune,
    magnitude_prune,
    masks_of,
    n_kept,
    prunable_names,
    random_prune,
    snip_prune,
    snip_scores,
    sparsity,
)

__all__ = [
    "random_prune",
    "magnitude_prune",
    "grad_prune",
    "grad_scores",
    "snip_prune",
    "snip_scores",
    "lottery_ticket_prune",
    "masks_of",
    "sparsity",
    "n_kept",
    "prunable_names",
    "global_topk_masks",
    "permutation_importance",
    "select_features",
    "feature_selection",
    "fs_retrain",
    "mask_input_features",
    "input_weight_names",
    "ThresholdOpt",
    "CalEqOdds",
    "RejectOption",
    "FairCls",
    "MLPScoreEstimator",
]
