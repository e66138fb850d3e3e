"""Data minimisation: switch off input features (paper 3.2.1). Metric: number of kept input features."""

from __future__ import annotations

import torch

from .base import Edit, Outcome, Requirement, num_graphs, register, straight_through


@register
class DataMinimisation(Requirement):
    """Variants: ``gmn`` (mask and edit the remaining weights), ``fs-gmn`` (mask only: feature selection
    predicted per model by the metanetwork, unmasked parameters untouched)."""

    name = "minimise"
    variants = ("gmn", "fs-gmn")
    metric_name = "kept_features"
    metric_label = "kept input features"

    def apply(self, data, out, *, hard: bool) -> Edit:
        if out.input_node_logits is None:
            raise ValueError("data minimisation needs the input-node head: call the metanetwork with_logits=True")
        m = num_graphs(data)
        mask = straight_through(out.input_node_logits, self.temperature, hard).reshape(m, -1)
        if self.variant == "gmn":
            return Edit(out.edge_values, out.node_values, input_mask=mask)
        return Edit(data.edge_attr.reshape(-1), data.x, input_mask=mask)

    def penalty(self, outcome: Outcome) -> torch.Tensor:
        return outcome.edit.input_mask.mean(dim=1)  # fraction of kept features

    def metric(self, outcome: Outcome) -> torch.Tensor:
        return (outcome.edit.input_mask > 0.5).sum(dim=1).to(torch.float64)

    def metric_scale(self, n_features: int) -> float:
        return float(n_features)
