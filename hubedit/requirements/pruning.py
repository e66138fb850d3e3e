"""Weight pruning (paper 3.2.3). Metric: fraction of weights kept (linear and skip weights; biases excluded)."""

from __future__ import annotations

import torch

import math

from ..errors import ConfigError
from ..graph.groups import edge_graph_index
from .base import Edit, Outcome, Requirement, num_graphs, register, straight_through, topk_mask


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
    target_name = "fraction of weights kept"

    def apply(self, data, out, *, hard: bool, target: torch.Tensor | None = None) -> Edit:
        if out.edge_logits is None:
            raise ValueError("pruning needs the edge head: call the metanetwork with_logits=True")
        if target is None:
            mask = straight_through(out.edge_logits, self.temperature, hard)
        else:  # keep round(target * n_weights) weights of each model (the baselines' count, at least one)
            edge_graph = self._edge_graph(data)
            sizes = torch.bincount(edge_graph, minlength=num_graphs(data))
            k = torch.round(target.double().to(sizes.device) * sizes).long().clamp(min=1)
            mask = topk_mask(out.edge_logits, edge_graph, k, self.temperature, hard)
        if self.variant == "prune-edit":
            return Edit(out.edge_values, out.node_values, edge_mask=mask)
        return Edit(data.edge_attr.reshape(-1), data.x, edge_mask=mask)

    def check_target_range(self, target_range, n_features: int) -> tuple[float, float]:
        lo, hi = _pair(target_range)
        if not 0 < lo < hi <= 1:
            raise ConfigError(f"a pruning target range is fractions of weights kept, 0 < low < high <= 1; got {list(target_range)}")
        return lo, hi

    def target_condition(self, target: torch.Tensor, target_range) -> torch.Tensor:
        # on a log scale: 0.05 vs 0.1 kept matters as much as 0.4 vs 0.8
        lo, hi = (math.log(float(v)) for v in target_range)
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-12)
        return ((torch.log(target.double()) - mid) / half).float().unsqueeze(1)

    def sample_targets(self, n: int, target_range, generator: torch.Generator) -> torch.Tensor:
        lo, hi = (math.log(float(v)) for v in target_range)
        return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))

    def target_grid(self, target_range, n: int = 5) -> tuple[float, ...]:
        lo, hi = (math.log(float(v)) for v in target_range)
        return tuple(float(f"{math.exp(lo + (hi - lo) * i / max(1, n - 1)):.4g}") for i in range(n))

    def _edge_graph(self, data) -> torch.Tensor:
        return edge_graph_index(data)

    def penalty(self, outcome: Outcome) -> torch.Tensor:
        d = outcome.data
        return per_model_mean(outcome.edit.edge_mask, self._edge_graph(d), num_graphs(d))

    def metric(self, outcome: Outcome) -> torch.Tensor:
        d = outcome.data
        kept = (outcome.edit.edge_mask > 0.5).to(torch.float64)
        return per_model_mean(kept, self._edge_graph(d), num_graphs(d))


def _pair(values) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"a target range is [low, high], got {values!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"a target range must be finite, got {values!r}")
    return lo, hi
