"""The requirement contract: a differentiable relaxation for training and a hard metric for reporting.

A requirement turns the metanetwork's raw output (:class:`~hubedit.metanet.EditOutput`) into an
:class:`Edit` — edited parameters plus optional masks — and scores it. Adding a requirement means one new
module with a :class:`Requirement` subclass registered with :func:`register`; the trainer, the editor and
the CLI find it by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch_geometric.data import Data

from ..errors import ConfigError
from ..graph.encoding import INPUT
from ..graph.groups import rank_within_groups
from ..metanet.model import EditOutput


@dataclass
class Edit:
    """Edited parameters of a batch of ``M`` graphs, ready for :func:`hubedit.graph.functional_forward`.

    ``edge_mask`` (``E``) and ``input_mask`` (``M x F``) are multiplicative masks: straight-through
    estimates while training (hard 0/1 forward, soft gradient), exact 0/1 at edit time.
    """

    edge_values: torch.Tensor
    node_values: torch.Tensor
    edge_mask: torch.Tensor | None = None
    input_mask: torch.Tensor | None = None

    def masked_edge_values(self) -> torch.Tensor:
        return self.edge_values if self.edge_mask is None else self.edge_values * self.edge_mask


@dataclass
class Outcome:
    """What a requirement may look at: the edit, the edited models' outputs and the data they saw."""

    data: Data
    edit: Edit
    logits: torch.Tensor  # (M, B, C) edited models on x
    y: torch.Tensor  # (B,)
    sensitive: torch.Tensor  # (B,)


def graph_index(data: Data) -> torch.Tensor:
    """Graph id of every node (zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    return torch.zeros(data.num_nodes, dtype=torch.long, device=data.x.device) if batch is None else batch


def num_graphs(data: Data) -> int:
    return int(getattr(data, "num_graphs", 1) or 1)


def straight_through(logits: torch.Tensor, temperature: float, hard: bool) -> torch.Tensor:
    """Keep-mask from two-class (drop, keep) logits: softmax with temperature, hard forward with a soft
    backward (straight-through estimator) while training; exact 0/1 when ``hard``."""
    p_keep = torch.softmax(logits / temperature, dim=-1)[..., 1]
    hard_mask = (p_keep > 0.5).to(p_keep.dtype)
    return hard_mask if hard else hard_mask + p_keep - p_keep.detach()


def topk_mask(
    logits: torch.Tensor, group: torch.Tensor, k: torch.Tensor, temperature: float, hard: bool
) -> torch.Tensor:
    """Keep-mask that keeps exactly ``k[g]`` elements of each group ``g``: those with the highest keep score
    ``logit_keep - logit_drop``. Hard 0/1 forward; while training (``hard=False``) a straight-through soft
    gradient ``sigmoid((score - threshold_g) / temperature)``, the threshold half-way between the last kept and
    the first dropped score of the group. ``group`` (per element) must be sorted (elements of one graph are
    contiguous, as in a torch_geometric batch); ``k`` is per group, clamped to ``[0, group size]``."""
    score = logits[..., 1] - logits[..., 0]
    rank, order, starts, sizes = rank_within_groups(score.detach(), group, k.shape[0])
    k = torch.minimum(k.to(sizes.dtype).clamp(min=0), sizes)
    keep = rank < k.index_select(0, group)
    hard_mask = keep.to(score.dtype)
    if hard:
        return hard_mask
    sorted_scores = score.detach().index_select(0, order)
    last_kept = sorted_scores[(starts + k - 1).clamp(min=0, max=score.shape[0] - 1)]
    first_dropped = sorted_scores[(starts + k).clamp(max=score.shape[0] - 1)]
    last_kept = torch.where(k > 0, last_kept, first_dropped + 1.0)
    first_dropped = torch.where(k < sizes, first_dropped, last_kept - 1.0)
    threshold = ((last_kept + first_dropped) / 2).index_select(0, group)
    soft = torch.sigmoid((score - threshold) / temperature)
    return hard_mask + soft - soft.detach()


class Requirement(ABC):
    """One requirement (data minimisation, fairness, pruning ...)."""

    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    metric_name: ClassVar[str]  # e.g. "kept_features"
    metric_label: ClassVar[str]  # axis label of Pareto plots
    needs_labels: ClassVar[bool] = False  # the relaxation uses y and the sensitive attribute
    uses_mask_heads: ClassVar[bool] = True  # needs the metanetwork's edge / input-node classification heads

    def __init__(self, variant: str | None = None, temperature: float = 1.0):
        variant = variant or self.variants[0]
        if variant not in self.variants:
            raise ConfigError(f"requirement {self.name!r} has variants {list(self.variants)}, got {variant!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.variant = variant
        self.temperature = float(temperature)

    #: what a target-conditioned editor is asked for per model (e.g. "fraction of weights kept"); None: the
    #: requirement has no target form and is traded off with lambda only
    target_name: ClassVar[str | None] = None

    @abstractmethod
    def apply(self, data: Data, out: EditOutput, *, hard: bool, target: torch.Tensor | None = None) -> Edit:
        """Edited values and masks of the requirement's variant; with ``target`` (one value per model) the
        masks meet it exactly (see :meth:`check_target_range`)."""

    def check_target_range(self, target_range, n_features: int) -> tuple[float, float]:
        """Validate a target range ``(low, high)`` of a target-conditioned editor; returns it as floats."""
        raise ConfigError(f"requirement {self.name!r} has no target form: train it with lam or lam_range")

    def target_condition(self, target: torch.Tensor, target_range: tuple[float, float]) -> torch.Tensor:
        """The metanetwork's conditioning input for ``target``: its position in the range, mapped to [-1, 1]."""
        lo, hi = (float(v) for v in target_range)
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-12)
        return ((target.double() - mid) / half).float().unsqueeze(1)

    def sample_targets(self, n: int, target_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Targets drawn for ``n`` models while training (uniform over the range)."""
        lo, hi = (float(v) for v in target_range)
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    def target_grid(self, target_range: tuple[float, float], n: int = 5) -> tuple[float, ...]:
        """Targets of validation and of the evaluation grid."""
        lo, hi = (float(v) for v in target_range)
        return tuple(lo + (hi - lo) * i / max(1, n - 1) for i in range(n))

    @abstractmethod
    def penalty(self, outcome: Outcome) -> torch.Tensor:
        """Differentiable requirement term ``R(theta')`` per model, shape ``(M,)``."""

    @abstractmethod
    def metric(self, outcome: Outcome) -> torch.Tensor:
        """Hard requirement metric per model, shape ``(M,)`` (what reports and Pareto fronts show)."""

    def metric_scale(self, n_features: int) -> float:
        """Divisor that maps the metric to [0, 1] (hypervolume normalisation)."""
        return 1.0

    # helpers shared by mask-based requirements
    @staticmethod
    def input_nodes(data: Data) -> torch.Tensor:
        return (data.node_kind == INPUT).nonzero().squeeze(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(variant={self.variant!r}, temperature={self.temperature})"


REGISTRY: dict[str, type[Requirement]] = {}


def register(cls: type[Requirement]) -> type[Requirement]:
    REGISTRY[cls.name] = cls
    return cls


def get_requirement(name: str, variant: str | None = None, **kwargs) -> Requirement:
    if name not in REGISTRY:
        raise ConfigError(f"unknown requirement {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](variant, **kwargs)
