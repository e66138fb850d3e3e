"""Data minimisation: switch off input features (paper 3.2.1). Metric: number of kept input features."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Edit, Outcome, Requirement, num_graphs, register, straight_through, topk_mask
from .pruning import _pair


@register
class DataMinimisation(Requirement):
    """Variants: ``gmn`` (mask and edit the remaining weights), ``fs-gmn`` (mask only: feature selection
    predicted per model by the metanetwork, unmasked parameters untouched)."""

    name = "minimise"
    variants = ("gmn", "fs-gmn")
    metric_name = "kept_features"
    metric_label = "kept input features"
    target_name = "number of kept input features"

    def apply(self, data, out, *, hard: bool, target: torch.Tensor | None = None) -> Edit:
        if out.input_node_logits is None:
            raise ValueError("data minimisation needs the input-node head: call the metanetwork with_logits=True")
        m = num_graphs(data)
        if target is None:
            mask = straight_through(out.input_node_logits, self.temperature, hard).reshape(m, -1)
        else:  # keep exactly round(target) features of each model
            n_in = out.input_node_logits.shape[0] // m
            group = torch.arange(m, device=out.input_node_logits.device).repeat_interleave(n_in)
            k = torch.round(target.double()).long().to(group.device)
            mask = topk_mask(out.input_node_logits, group, k, self.temperature, hard).reshape(m, -1)
        if self.variant == "gmn":
            return Edit(out.edge_values, out.node_values, input_mask=mask)
        return Edit(data.edge_attr.reshape(-1), data.x, input_mask=mask)

    def check_target_range(self, target_range, n_features: int) -> tuple[float, float]:
        lo, hi = _pair(target_range)
        if not (1 <= lo < hi <= n_features and lo == int(lo) and hi == int(hi)):
            raise ConfigError(
                f"a data-minimisation target range is kept-feature counts, 1 <= low < high <= {n_features} (integers); "
                f"got {list(target_range)}"
            )
        return lo, hi

    def sample_targets(self, n: int, target_range, generator: torch.Generator) -> torch.Tensor:
        lo, hi = (int(v) for v in target_range)
        return torch.randint(lo, hi + 1, (n,), generator=generator).double()

    def target_grid(self, target_range, n: int = 5) -> tuple[float, ...]:
        lo, hi = (int(v) for v in target_range)
        return tuple(float(v) for v in range(lo, hi + 1))

    def penalty(self, outcome: Outcome) -> torch.Tensor:
        return outcome.edit.input_mask.mean(dim=1)  # fraction of kept features

    def metric(self, outcome: Outcome) -> torch.Tensor:
        return (outcome.edit.input_mask > 0.5).sum(dim=1).to(torch.float64)

    def metric_scale(self, n_features: int) -> float:
        return float(n_features)
