"""Weight pruning (paper 3.2.3). Metric: fraction of weights kept (linear and skip weights; biases excluded)."""

from __future__ import annotations

import torch

from .base import Edit, Outcome, Requirement, graph_index, num_graphs, register, straight_through


def per_model_mean(values: torch.Tensor, edge_graph: torch.Tensor, m: int) -> torch.Tensor:
    """Mean of per-edge ``values`` within each model."""
    total = values.new_zeros(m).index_add_(0, edge_graph, values)
    count = values.new_zeros(m).index_add_(0, edge_graph, torch.ones_like(values))
    return total / count


@register
class Pruning(Requirement):
    """Variants: ``prune`` (edge mask only), ``prune-edit`` (mask and residual edit of the kept weights)."""

    name = "prune"
    variants = ("prune-edit", "prune")
    metric_name = "weights_kept"
    metric_label = "fraction of weights kept"

    def apply(self, data, out, *, hard: bool) -> Edit:
        if out.edge_logits is None:
            raise ValueError("pruning needs the edge head: call the metanetwork with_logits=True")
        mask = straight_through(out.edge_logits, self.temperature, hard)
        if self.variant == "prune-edit":
            return Edit(out.edge_values, out.node_values, edge_mask=mask)
        return Edit(data.edge_attr.reshape(-1), data.x, edge_mask=mask)

    def _edge_graph(self, data) -> torch.Tensor:
        return graph_index(data).index_select(0, data.edge_index[0])

    def penalty(self, outcome: Outcome) -> torch.Tensor:
        d = outcome.data
        return per_model_mean(outcome.edit.edge_mask, self._edge_graph(d), num_graphs(d))

    def metric(self, outcome: Outcome) -> torch.Tensor:
        d = outcome.data
        kept = (outcome.edit.edge_mask > 0.5).to(torch.float64)
        return per_model_mean(kept, self._edge_graph(d), num_graphs(d))
