"""Differentiable evaluation of many (edited) MLPs straight from graph values.

Training an editor needs ``f_theta'(x)`` with gradients flowing into the edited values ``theta'``, for a
batch of models of different architectures. :func:`functional_forward` does that without building
modules: models with the same config are evaluated together with batched matrix products (``bmm``),
their weight matrices gathered from the flat edge values with one index per weight block.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from ..errors import FeatureMismatchError
from ..mlp.config import MLPConfig
from ..mlp.module import activation_fn
from .build import graph_offsets
from .encoding import COL_BIAS, COL_NORM_BIAS, COL_NORM_WEIGHT, COL_RUNNING_MEAN, COL_RUNNING_VAR, NODE_FEATURES
from .layout import graph_layout


def group_by_config(configs: list[MLPConfig]) -> dict[MLPConfig, list[int]]:
    """Positions of the models of each config, in order of first appearance (models of one config are
    evaluated together)."""
    groups: dict[MLPConfig, list[int]] = defaultdict(list)
    for g, c in enumerate(configs):
        groups[c].append(g)
    return groups


def norm_and_activation(z: torch.Tensor, nodes: torch.Tensor, cfg: MLPConfig, act=None) -> torch.Tensor:
    """A hidden layer's norm (eval semantics: BatchNorm's running statistics) and activation, applied to its
    pre-activations ``z`` (k, B, rows) with the layer's node values ``nodes`` (k, 1, rows, NODE_FEATURES)."""
    if cfg.norm == "batchnorm":
        inv = torch.rsqrt(nodes[..., COL_RUNNING_VAR] + cfg.norm_eps)
        z = (z - nodes[..., COL_RUNNING_MEAN]) * (inv * nodes[..., COL_NORM_WEIGHT]) + nodes[..., COL_NORM_BIAS]
    elif cfg.norm == "layernorm":
        z = F.layer_norm(z, (z.shape[-1],), eps=cfg.norm_eps)
        z = z * nodes[..., COL_NORM_WEIGHT] + nodes[..., COL_NORM_BIAS]
    return (act or activation_fn(cfg.activation))(z)


def functional_forward(
    data: Data,
    x: torch.Tensor,
    edge_values: torch.Tensor | None = None,
    node_values: torch.Tensor | None = None,
    *,
    edge_mask: torch.Tensor | None = None,
    input_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of every model in ``data`` on ``x``, differentiable in the values and masks.

    Args:
        data: a parameter graph or ``Batch`` of ``M`` graphs (all with the same input and output sizes).
        x: inputs, ``(B, F)`` shared by all models or ``(M, B, F)`` one batch per model.
        edge_values: weights (``E`` or ``E x 1``); default ``data.edge_attr``.
        node_values: node features (``N x 5``); default ``data.x``.
        edge_mask: optional multiplicative mask per edge (``E`` or ``E x 1``), e.g. a pruning mask.
        input_mask: optional multiplicative mask per input feature, ``(M, F)`` or flat ``(M * F,)`` in
            input-node order (e.g. a data-minimisation mask); applied to ``x`` before the first layer.

    Returns:
        ``(M, B, C)`` logits in eval-mode semantics (BatchNorm uses its running statistics, no dropout).
        Models sharing a config are evaluated together; agrees with ``MLP.forward`` to float rounding.
    """
    configs, node_off, edge_off = graph_offsets(data)
    m = len(configs)
    n_in = {c.in_features for c in configs}
    n_out = {c.out_features for c in configs}
    if len(n_in) != 1 or len(n_out) != 1:
        raise FeatureMismatchError(
            f"functional_forward needs models of one task: got input sizes {sorted(n_in)} and output sizes {sorted(n_out)}"
        )
    (f_in,) = n_in
    per_model = x.dim() == 3
    if x.dim() not in (2, 3) or x.shape[-1] != f_in or (per_model and x.shape[0] != m):
        raise FeatureMismatchError(f"expected x of shape (B, {f_in}) or ({m}, B, {f_in}), got {tuple(x.shape)}")

    ev = (data.edge_attr if edge_values is None else edge_values).reshape(-1)
    if edge_mask is not None:
        ev = ev * edge_mask.reshape(-1).to(ev.dtype)
    nv = data.x if node_values is None else node_values
    if ev.numel() != edge_off[-1] or nv.shape != (node_off[-1], NODE_FEATURES):
        raise ValueError(
            f"expected {edge_off[-1]} edge values and ({node_off[-1]}, {NODE_FEATURES}) node values, "
            f"got {ev.numel()} and {tuple(nv.shape)}"
        )
    im = None
    if input_mask is not None:
        im = input_mask.reshape(m, f_in).to(ev.dtype)

    dev = ev.device
    x = x.to(device=dev, dtype=ev.dtype)
    eo_all = torch.tensor(edge_off[:-1], device=dev)
    no_all = torch.tensor(node_off[:-1], device=dev)
    outs, order = [], []
    for cfg, gs in group_by_config(configs).items():
        lay = graph_layout(cfg)
        gi = torch.tensor(gs, device=dev)
        k = len(gs)
        eo, no = eo_all[gi].unsqueeze(1), no_all[gi].unsqueeze(1)
        h0 = x.index_select(0, gi) if per_model else x.unsqueeze(0).expand(k, -1, -1)
        if im is not None:
            h0 = h0 * im.index_select(0, gi).unsqueeze(1)
        act = activation_fn(cfg.activation)
        acts = [h0]
        offs = lay.layer_offsets
        for block in lay.blocks:
            widx = (eo + block.start + torch.arange(block.size, device=dev)).reshape(-1)
            w = ev.index_select(0, widx).view(k, block.rows, block.cols)
            nidx = (no + offs[block.dst] + torch.arange(block.rows, device=dev)).reshape(-1)
            nodes = nv.index_select(0, nidx).view(k, 1, block.rows, NODE_FEATURES)
            srcs = block.srcs
            inp = acts[srcs[0]] if len(srcs) == 1 else torch.cat([acts[s] for s in srcs], dim=-1)
            z = torch.baddbmm(nodes[..., COL_BIAS], inp, w.transpose(1, 2))
            if block.dst <= cfg.depth:
                z = norm_and_activation(z, nodes, cfg, act)
            acts.append(z)
        outs.append(acts[-1])
        order.append(gi)
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    perm = torch.cat(order)
    if len(outs) == 1 and bool((perm == torch.arange(m, device=dev)).all()):
        return out
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(m, device=dev)
    return out.index_select(0, inverse)
