"""The layer-wise refit of :mod:`hubedit.mlp.refit`, for a batch of parameter graphs and differentiable.

:func:`refit_values` takes edited graph values and a keep mask per weight and returns values whose kept
weights and biases are re-solved, layer by layer, so that every layer of every model reproduces its original's
pre-activations on ``x`` (the original being the graph's own values, ``data.edge_attr`` / ``data.x``).
Models of one architecture are solved together (as in :func:`hubedit.graph.functional_forward`), and gradients
flow into the edited values and into the keep mask, so an editor can be trained through its refit: training,
validation and :meth:`hubedit.Editor.edit` use this one function. With ``reselect`` it also re-chooses which
weights each layer keeps (as many as the given mask keeps there), for the refit. The per-model
:func:`hubedit.mlp.refit.refit` on ``MLP`` modules is the same computation (tested equal), used by the
baselines. Where no gradient is wanted (editing, evaluation), float32 CPU calls run the C++ refit of
``kernels/refit.cpp`` (float64 normal equations on the kept entries, Cholesky; tested against this module's torch
formulation in float64).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch_geometric.data import Data

from ..metrics.scores import jsd_from_logits
from ..mlp.refit import solve_masked_ridge
from .build import graph_offsets
from .encoding import COL_BIAS, NODE_FEATURES
from .functional import group_by_config, norm_and_activation
from .layout import graph_layout
from .native_kernels import check_rc, library, model_plans


class Refit(NamedTuple):
    """One refit of every model: edge values (the mask folded in), node values, the keep mask they meet, the
    refit models' logits on the refit inputs ``(M, B, C)``, and, where the C++ refit ran, each refit model's mean JSD
    to its original on those inputs ``(M,)`` (None otherwise: :func:`refit_jsd` computes it)."""

    edge_values: torch.Tensor
    node_values: torch.Tensor
    keep: torch.Tensor
    logits: torch.Tensor
    jsd: torch.Tensor | None = None


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
    (out,), _ = refit_variants(data, x, edge_values, node_values, keep, ridge=ridge, reselect=(reselect,))
    return out.edge_values, out.node_values, out.keep


def refit_variants(
    data: Data,
    x: torch.Tensor,
    edge_values: torch.Tensor,
    node_values: torch.Tensor,
    keep: torch.Tensor,
    *,
    ridge: float,
    reselect: tuple[bool, ...] = (False,),
) -> tuple[list[Refit], torch.Tensor]:
    """:func:`refit_values` once per entry of ``reselect`` (e.g. ``(False, True)``: the given mask and the
    re-chosen one), all variants of a model solved in the same batched calls, and the logits on ``x`` that come
    with the layer-by-layer pass for free. Returns one :class:`Refit` per variant and the original models'
    logits on ``x`` ``(M, B, C)``."""
    if not ridge > 0:
        raise ValueError(f"expected ridge > 0, got {ridge}")
    if not reselect:
        raise ValueError("expected at least one variant")
    configs, node_off, edge_off = graph_offsets(data)
    ev = edge_values.reshape(-1)
    keep = keep.reshape(-1).to(ev.dtype)
    if _kernel_applies(data, x, ev, node_values, keep):
        out = _kernel_variants(configs, node_off, edge_off, data, x, ev, node_values, keep, ridge, reselect,
                               edge_values.shape)
        if out is not None:
            return out
    dev, dtype = ev.device, ev.dtype
    orig_ev, orig_nv = data.edge_attr.reshape(-1).to(dtype), data.x.to(dtype)
    x = x.to(device=dev, dtype=dtype)
    eo_all = torch.tensor(edge_off[:-1], device=dev)
    no_all = torch.tensor(node_off[:-1], device=dev)
    v = len(reselect)
    edge_idx, node_idx = [], []
    edge_new, mask_new, bias_new = ([[] for _ in range(v)] for _ in range(3))
    logit_idx, logits_new, orig_logits = [], [[] for _ in range(v)], []

    def per_variant(t: torch.Tensor) -> torch.Tensor:  # (k, ...) -> (v * k, ...): variant-major
        return t if v == 1 else t.repeat(v, *([1] * (t.dim() - 1)))

    for cfg, gs in group_by_config(configs).items():
        lay = graph_layout(cfg)
        gi = torch.tensor(gs, device=dev)
        k = len(gs)
        eo, no = eo_all[gi].unsqueeze(1), no_all[gi].unsqueeze(1)
        ones = torch.ones(v * k, x.shape[0], 1, device=dev, dtype=dtype)
        acts, orig_acts = [x.unsqueeze(0).expand(v * k, -1, -1)], [x.unsqueeze(0).expand(k, -1, -1)]
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
            masks = [_wanda_mask(orig_w, inp[i * k:(i + 1) * k], m) if r else m for i, r in enumerate(reselect)]
            m = masks[0] if v == 1 else torch.cat(masks)
            target = torch.baddbmm(orig_nodes[..., COL_BIAS], orig_inp, orig_w.transpose(1, 2))
            weights = torch.cat([w, nodes[:, 0, :, COL_BIAS].unsqueeze(-1)], dim=-1)  # the solve masks the anchor
            mask = torch.cat([m, torch.ones(v * k, block.rows, 1, device=dev, dtype=dtype)], dim=-1)
            solved = solve_masked_ridge(torch.cat([inp, ones], dim=-1), per_variant(target), per_variant(weights),
                                        mask, ridge).to(dtype)
            new_w, new_b = solved[..., :-1], solved[..., -1]
            edge_idx.append(widx)
            node_idx.append(nidx)
            for i in range(v):
                edge_new[i].append(new_w[i * k:(i + 1) * k].reshape(-1))
                bias_new[i].append(new_b[i * k:(i + 1) * k].reshape(-1))
                if reselect[i]:
                    mask_new[i].append(masks[i].reshape(-1))
            z = torch.baddbmm(new_b.unsqueeze(1), inp, new_w.transpose(1, 2))
            if block.dst <= cfg.depth:
                acts.append(norm_and_activation(z, per_variant(nodes), cfg))
                orig_acts.append(norm_and_activation(target, orig_nodes, cfg))
            else:  # the output layer: logits
                logit_idx.append(gi)
                orig_logits.append(target)
                for i in range(v):
                    logits_new[i].append(z[i * k:(i + 1) * k])
    all_edges, all_nodes, order = torch.cat(edge_idx), torch.cat(node_idx), torch.cat(logit_idx)

    def in_model_order(parts: list[torch.Tensor]) -> torch.Tensor:
        cat = torch.cat(parts)
        return torch.empty_like(cat).index_copy(0, order, cat)

    out = []
    for i in range(v):
        out_ev = (ev * keep).index_copy(0, all_edges, torch.cat(edge_new[i]))
        out_keep = keep.index_copy(0, all_edges, torch.cat(mask_new[i])) if reselect[i] else keep
        bias = node_values[:, COL_BIAS].index_copy(0, all_nodes, torch.cat(bias_new[i]))
        out_nv = torch.cat([node_values[:, :COL_BIAS], bias.unsqueeze(1), node_values[:, COL_BIAS + 1:]], dim=1)
        out.append(Refit(out_ev.view_as(edge_values), out_nv, out_keep, in_model_order(logits_new[i])))
    return out, in_model_order(orig_logits)


def _wanda_mask(weights: torch.Tensor, inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """0/1 mask ``(k, rows, cols)`` of each model's ``keep.sum()`` highest ``|w_ij| * |x_j|_2`` in this block."""
    k = weights.shape[0]
    score = (weights.abs() * inputs.square().sum(1).sqrt().unsqueeze(1)).reshape(k, -1)
    count = keep.detach().reshape(k, -1).sum(1).round().long()
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < count.unsqueeze(1)).to(keep.dtype).view_as(keep)


def _kernel_applies(data: Data, x: torch.Tensor, ev: torch.Tensor, node_values: torch.Tensor, keep: torch.Tensor) -> bool:
    """Whether the C++ refit (``kernels/refit.cpp``) computes this call: float32 CPU values, no gradient wanted,
    a 0/1 mask, and the kernels built."""
    tensors = (ev, node_values, keep, x, data.edge_attr, data.x)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return library() is not None and bool(((keep == 0) | (keep == 1)).all())


def _kernel_variants(configs, node_off, edge_off, data, x, ev, node_values, keep, ridge, reselect, shape):
    """:func:`refit_variants` by the C++ refit; None where a system was not positive definite (the torch
    formulation then reports it its own way)."""
    plan, starts, eps = model_plans(configs, node_off, edge_off)
    n_models, v, n_edges, n_nodes = len(configs), len(reselect), ev.shape[0], node_values.shape[0]
    classes, batch = configs[0].out_features, x.shape[0]
    x = x.detach().contiguous()
    orig_ev, orig_nv = data.edge_attr.detach().reshape(-1).contiguous(), data.x.detach().contiguous()
    ev, nv, keep = ev.detach().contiguous(), node_values.detach().contiguous(), keep.detach().contiguous()
    out_ev, out_keep = torch.empty(v, n_edges), torch.empty(v, n_edges)
    out_bias = nv[:, COL_BIAS].repeat(v, 1)  # input nodes keep theirs; the kernel writes every other node's
    logits, orig_logits = torch.empty(v, n_models, batch, classes), torch.empty(n_models, batch, classes)
    jsd = torch.empty(v, n_models)
    flags = torch.tensor([bool(r) for r in reselect], dtype=torch.uint8)
    rc = library().hubedit_refit_variants(
        n_models, plan.data_ptr(), starts.data_ptr(), eps.data_ptr(), x.data_ptr(), batch, x.shape[1],
        orig_ev.data_ptr(), orig_nv.data_ptr(), ev.data_ptr(), nv.data_ptr(), keep.data_ptr(), float(ridge), v,
        flags.data_ptr(), n_edges, n_nodes, classes, out_ev.data_ptr(), out_bias.data_ptr(), out_keep.data_ptr(),
        logits.data_ptr(), orig_logits.data_ptr(), jsd.data_ptr(), torch.get_num_threads())
    check_rc(rc, "refit kernel")
    if rc != 0:
        return None
    out = []
    for i in range(v):
        out_nv = torch.cat([nv[:, :COL_BIAS], out_bias[i].unsqueeze(1), nv[:, COL_BIAS + 1:]], dim=1)
        out.append(Refit(out_ev[i].view(shape), out_nv, out_keep[i] if reselect[i] else keep, logits[i], jsd[i]))
    return out, orig_logits


def refit_jsd(refit: Refit, reference: torch.Tensor) -> torch.Tensor:
    """Each refit model's mean JSD to its original (``reference`` logits, ``(M, B, C)``) on the refit inputs: the
    C++ refit's own figure where it ran, else from the logits."""
    if refit.jsd is not None:
        return refit.jsd
    return jsd_from_logits(reference, refit.logits).mean(dim=-1)
