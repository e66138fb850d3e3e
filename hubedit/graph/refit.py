"""The layer-wise refit of :mod:`hubedit.mlp.refit`, for a batch of parameter graphs and differentiable.

:func:`refit_values` takes edited graph values and a keep mask per weight and returns values whose kept
weights and biases are re-solved, layer by layer, so that every layer of every model reproduces its original's
pre-activations on ``x`` (the original being the graph's own values, ``data.edge_attr`` / ``data.x``).
Models of one architecture are solved together (as in :func:`hubedit.graph.functional_forward`), and gradients
flow into the edited values and into the keep mask, so an editor can be trained through its refit: training,
validation and :meth:`hubedit.Editor.edit` use this one function. With ``reselect`` it also re-chooses which
weights each layer keeps (as many as the given mask keeps there), for the refit. The per-model
:func:`hubedit.mlp.refit.refit` on ``MLP`` modules is the same computation (tested equal), used by the
baselines.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from ..mlp.refit import solve_masked_ridge
from .build import graph_offsets
from .encoding import COL_BIAS, NODE_FEATURES
from .functional import _group, norm_and_activation
from .layout import graph_layout


def refit_values(
    data: Data,
    x: torch.Tensor,
    edge_values: torch.Tensor,
    node_values: torch.Tensor,
    keep: torch.Tensor,
    *,
    ridge: float,
    reselect: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refit edited values of every model in ``data`` to its original on ``x`` ``(B, F)``.

    Args:
        edge_values: edited weights (``E``); the ridge pulls the refit towards ``edge_values * keep``.
        node_values: edited node values (``N x 5``): biases are refit, norm parameters kept.
        keep: per-weight keep mask (``E``), 0/1 forward (a straight-through mask while training); weights with
            ``keep = 0`` come out exactly 0.
        reselect: before each layer's solve, re-choose *which* of its weights are kept -- the same number per
            model and layer as ``keep`` has -- by ``|original weight| * |input activation|_2`` over ``x`` (the
            Wanda score, Sun et al. 2023, on the edited model's own activations), so the mask suits the refit.
            Not differentiable in the mask.

    Returns:
        ``(edge_values, node_values, keep)`` of the refit models (edge values with the mask folded in; ``keep``
        is the mask they meet, the given one unless ``reselect``).
    """
    if not ridge > 0:
        raise ValueError(f"expected ridge > 0, got {ridge}")
    configs, node_off, edge_off = graph_offsets(data)
    ev = edge_values.reshape(-1)
    keep = keep.reshape(-1).to(ev.dtype)
    dev, dtype = ev.device, ev.dtype
    orig_ev, orig_nv = data.edge_attr.reshape(-1).to(dtype), data.x.to(dtype)
    x = x.to(device=dev, dtype=dtype)
    eo_all = torch.tensor(edge_off[:-1], device=dev)
    no_all = torch.tensor(node_off[:-1], device=dev)
    edge_idx, edge_new, mask_new, node_idx, bias_new = [], [], [], [], []
    for cfg, gs in _group(configs).items():
        lay = graph_layout(cfg)
        gi = torch.tensor(gs, device=dev)
        k = len(gs)
        eo, no = eo_all[gi].unsqueeze(1), no_all[gi].unsqueeze(1)
        h0 = x.unsqueeze(0).expand(k, -1, -1)
        ones = torch.ones(k, x.shape[0], 1, device=dev, dtype=dtype)
        acts, orig_acts = [h0], [h0]
        offs = lay.layer_offsets
        for block in lay.blocks:
            widx = (eo + block.start + torch.arange(block.size, device=dev)).reshape(-1)
            nidx = (no + offs[block.dst] + torch.arange(block.rows, device=dev)).reshape(-1)
            w = ev.index_select(0, widx).view(k, block.rows, block.cols)
            m = keep.index_select(0, widx).view(k, block.rows, block.cols)
            nodes = node_values.index_select(0, nidx).view(k, 1, block.rows, NODE_FEATURES)
            orig_w = orig_ev.index_select(0, widx).view(k, block.rows, block.cols)
            orig_nodes = orig_nv.index_select(0, nidx).view(k, 1, block.rows, NODE_FEATURES)
            srcs = block.srcs
            inp = acts[srcs[0]] if len(srcs) == 1 else torch.cat([acts[s] for s in srcs], dim=-1)
            orig_inp = orig_acts[srcs[0]] if len(srcs) == 1 else torch.cat([orig_acts[s] for s in srcs], dim=-1)
            if reselect:
                m = _wanda_mask(orig_w, inp, m)
                mask_new.append(m.reshape(-1))
            target = torch.baddbmm(orig_nodes[..., COL_BIAS], orig_inp, orig_w.transpose(1, 2))
            weights = torch.cat([w, nodes[:, 0, :, COL_BIAS].unsqueeze(-1)], dim=-1)  # the solve masks the anchor
            mask = torch.cat([m, torch.ones(k, block.rows, 1, device=dev, dtype=dtype)], dim=-1)
            solved = solve_masked_ridge(torch.cat([inp, ones], dim=-1), target, weights, mask, ridge).to(dtype)
            new_w, new_b = solved[..., :-1], solved[..., -1]
            edge_idx.append(widx)
            edge_new.append(new_w.reshape(-1))
            node_idx.append(nidx)
            bias_new.append(new_b.reshape(-1))
            if block.dst <= cfg.depth:
                z = torch.baddbmm(new_b.unsqueeze(1), inp, new_w.transpose(1, 2))
                acts.append(norm_and_activation(z, nodes, cfg))
                orig_acts.append(norm_and_activation(target, orig_nodes, cfg))
    all_edges = torch.cat(edge_idx)
    out_ev = (ev * keep).index_copy(0, all_edges, torch.cat(edge_new))
    out_keep = keep.index_copy(0, all_edges, torch.cat(mask_new)) if reselect else keep
    bias = node_values[:, COL_BIAS].index_copy(0, torch.cat(node_idx), torch.cat(bias_new))
    out_nv = torch.cat([node_values[:, :COL_BIAS], bias.unsqueeze(1), node_values[:, COL_BIAS + 1:]], dim=1)
    return out_ev.view_as(edge_values), out_nv, out_keep


def _wanda_mask(weights: torch.Tensor, inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """0/1 mask ``(k, rows, cols)`` of each model's ``keep.sum()`` highest ``|w_ij| * |x_j|_2`` in this block."""
    k = weights.shape[0]
    score = (weights.abs() * inputs.square().sum(1).sqrt().unsqueeze(1)).reshape(k, -1)
    count = keep.detach().reshape(k, -1).sum(1).round().long()
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < count.unsqueeze(1)).to(keep.dtype).view_as(keep)
