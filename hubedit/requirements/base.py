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

    @abstractmethod
    def apply(self, data: Data, out: EditOutput, *, hard: bool) -> Edit:
        """Edited values and masks of the requirement's variant."""

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
