"""Per-graph bookkeeping of a batch of parameter graphs: which graph an edge belongs to, and ranks within graphs."""

from __future__ import annotations

import torch
from torch_geometric.data import Data


def edge_graph_index(data: Data) -> torch.Tensor:
    """Graph id of every edge (zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.edge_index.shape[1], dtype=torch.long, device=data.edge_index.device)
    return batch.index_select(0, data.edge_index[0])


def rank_within_groups(score: torch.Tensor, group: torch.Tensor, n_groups: int):
    """``(rank, order, starts, sizes)``: each element's rank by descending ``score`` within its group (ties broken
    by position), the permutation that sorts by (group, descending score), and each group's start and size.
    ``group`` must be sorted (a graph's elements are contiguous, as in a torch_geometric batch)."""
    sizes = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    by_score = torch.argsort(score, descending=True, stable=True)
    if n_groups == 1:  # one graph: the score order is the order
        order = by_score
    else:
        order = by_score.index_select(0, torch.argsort(group.index_select(0, by_score), stable=True))
    rank = torch.empty_like(order).index_copy_(0, order, torch.arange(order.shape[0], device=order.device))
    return (rank if n_groups == 1 else rank - starts.index_select(0, group)), order, starts, sizes


def top_k_per_group(score: torch.Tensor, group: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """0/1 mask of the ``k[g]`` highest scores of each group ``g`` (ties broken by position)."""
    rank = rank_within_groups(score, group, k.shape[0])[0]
    return (rank < k.index_select(0, group)).to(score.dtype)
