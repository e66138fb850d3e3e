"""Fairness as equalised odds (paper 3.2.2). Metric: equalised-odds difference of hard predictions
(fairlearn's ``equalized_odds_difference``); relaxation: the same on softmax-with-temperature predictions."""

from __future__ import annotations

import torch

from ..metrics.scores import equalized_odds_difference
from .base import Edit, Outcome, Requirement, register


@register
class Fairness(Requirement):
    name = "fairness"
    variants = ("gmn",)
    metric_name = "eod"
    metric_label = "equalised-odds difference"
    needs_labels = True
    uses_mask_heads = False

    def apply(self, data, out, *, hard: bool, target: torch.Tensor | None = None) -> Edit:
        return Edit(out.edge_values, out.node_values)

    def penalty(self, outcome: Outcome) -> torch.Tensor:
        p1 = torch.softmax(outcome.logits / self.temperature, dim=-1)[..., 1]
        return equalized_odds_difference(p1, outcome.y, outcome.sensitive)

    def metric(self, outcome: Outcome) -> torch.Tensor:
        hard = outcome.logits.argmax(-1).to(torch.float64)
        return equalized_odds_difference(hard, outcome.y, outcome.sensitive)
