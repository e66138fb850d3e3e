"""Permutation symmetries of MLPs: permute hidden neurons of a model, and the matching graph permutation.

Used to test equivariance, and useful for data augmentation when training editors.
"""

from __future__ import annotations

import copy

import torch

from ..mlp.config import MLPConfig
from ..mlp.module import MLP
from .layout import graph_layout


def random_hidden_permutations(config: MLPConfig, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One random permutation per hidden layer of ``config`` (``perms[l-1]`` is for hidden layer ``l``)."""
    return [torch.randperm(w, generator=generator) for w in config.hidden]


@torch.no_grad()
def permute_hidden(model: MLP, perms: list[torch.Tensor]) -> MLP:
    """A copy of ``model`` whose hidden neurons are reordered: new neuron ``k`` of layer ``l`` is old ``perms[l-1][k]``.

    Rows of the maps into layer ``l`` (linear, skips, bias, norm parameters and running statistics) and
    columns of the maps out of it (next linear layer and skips from it) move together, so the function
    is unchanged.
    """
    cfg = model.config
    if len(perms) != cfg.depth or any(len(p) != w for p, w in zip(perms, cfg.hidden)):
        raise ValueError(f"expected one permutation per hidden layer of sizes {list(cfg.hidden)}")
    out = copy.deepcopy(model)
    full = [None, *perms, None]  # per layer 0..depth+1 (input/output are not permuted)

    def rows(t: torch.Tensor, p) -> None:
        if p is not None:
            t.copy_(t[p])

    def cols(t: torch.Tensor, p) -> None:
        if p is not None:
            t.copy_(t[:, p])

    for dst in range(1, cfg.depth + 2):
        lin = out.layers[dst - 1]
        rows(lin.weight, full[dst])
        rows(lin.bias, full[dst])
        cols(lin.weight, full[dst - 1])
        if dst <= cfg.depth:
            if len(out.norms):
                norm = out.norms[dst - 1]
                for t in (norm.weight, norm.bias, getattr(norm, "running_mean", None), getattr(norm, "running_var", None)):
                    if t is not None:
                        rows(t, full[dst])
    for s, d in cfg.skips:
        w = out.skips[f"{s}_{d}"].weight
        rows(w, full[d])
        cols(w, full[s])
    return out


def graph_permutation(config: MLPConfig, perms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Node and edge permutations induced by :func:`permute_hidden` on the graph of ``config``.

    With ``g = mlp_to_graph(model)`` and ``gp = mlp_to_graph(permute_hidden(model, perms))``:
    ``gp.x == g.x[node_perm]`` and ``gp.edge_attr == g.edge_attr[edge_perm]``; likewise any per-node or
    per-edge output of an equivariant network.
    """
    lay = graph_layout(config)
    offs = lay.layer_offsets
    parts = [torch.arange(config.in_features)]
    parts += [offs[layer] + p for layer, p in enumerate(perms, start=1)]
    parts.append(offs[config.depth + 1] + torch.arange(config.out_features))
    node_perm = torch.cat(parts)
    n = lay.n_nodes
    src, dst = lay.edge_index
    old_keys = src * n + dst  # the graph has no parallel edges
    sorted_keys, order = torch.sort(old_keys)
    new_keys = node_perm[src] * n + node_perm[dst]
    pos = torch.searchsorted(sorted_keys, new_keys)
    edge_perm = order[pos]
    return node_perm, edge_perm
