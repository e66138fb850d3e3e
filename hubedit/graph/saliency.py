"""Weight saliency ``|w * dL/dw|`` of a batch of parameter graphs, with the backward pass written out.

The calibration features of :mod:`hubedit.graph.calibration` take the saliency of the same models several times
in a row (once dense, then once per round of iterative pruning, each with another mask). Through autograd and
:func:`~hubedit.graph.functional.functional_forward` each pass of a small model is ~120 tensor operations, almost
all of them bookkeeping (index building, gathers, the autograd graph), so one pass of a median zoo model costs
~0.7 ms though its arithmetic is a few microseconds. :class:`SaliencyPass` does the bookkeeping once -- models
grouped by config, every weight block gathered -- and each call then runs the forward pass and its hand-written
backward (linear maps, then the aten backward kernels autograd itself runs for BatchNorm in eval mode, LayerNorm
and the six MLP activations): the same values as autograd, to float rounding (tested against it).

:func:`saliency_rounds` (the dense pass and the rounds of iterative pruning) runs all of it in one C++ call where
the graph kernels are built (``kernels/saliency.cpp``, :mod:`.native_kernels`), and :class:`SaliencyPass` elsewhere.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from ..mlp.config import LEAKY_RELU_SLOPE
from ..mlp.module import activation_fn
from .build import graph_offsets
from .encoding import COL_BIAS, COL_NORM_BIAS, COL_NORM_WEIGHT, COL_RUNNING_MEAN, COL_RUNNING_VAR, NODE_FEATURES
from .functional import group_by_config
from .groups import edge_graph_index, top_k_per_group
from .layout import graph_layout
from .native_kernels import check_rc, library, model_plans

aten = torch.ops.aten


def _activation_backward(name: str, grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad * act'(pre)`` for a config's activation (``out = act(pre)``): the aten backward kernels autograd
    itself runs."""
    if name == "relu":
        return aten.threshold_backward(grad, out, 0)
    if name == "leaky_relu":
        return aten.leaky_relu_backward(grad, pre, LEAKY_RELU_SLOPE, False)
    if name == "tanh":
        return aten.tanh_backward(grad, out)
    if name == "sigmoid":
        return aten.sigmoid_backward(grad, out)
    if name == "silu":
        return aten.silu_backward(grad, pre)
    if name == "gelu":  # exact (erf) GELU, as F.gelu
        return aten.gelu_backward(grad, pre, approximate="none")
    raise ValueError(f"no saliency backward for activation {name!r}")


class _Group:
    """The models of one config: their weight blocks, node values and where the blocks sit in the edge order."""

    def __init__(self, cfg, positions: list[int], edge_start: torch.Tensor, node_start: torch.Tensor,
                 weights: torch.Tensor, nodes: torch.Tensor):
        lay = graph_layout(cfg)
        dev = weights.device
        self.config, self.layout, self.models = cfg, lay, torch.tensor(positions, device=dev)
        k = len(positions)
        eo, no = edge_start.index_select(0, self.models).unsqueeze(1), node_start.index_select(0, self.models).unsqueeze(1)
        self.edge_index, self.weights, self.nodes = [], [], []
        # one model: its blocks are slices of the edge order (no gathers)
        self.slices = [] if k == 1 else None
        offs = lay.layer_offsets
        for block in lay.blocks:
            widx = (eo + block.start + torch.arange(block.size, device=dev)).reshape(-1)
            nidx = (no + offs[block.dst] + torch.arange(block.rows, device=dev)).reshape(-1)
            self.edge_index.append(widx)
            if self.slices is not None:
                self.slices.append(slice(int(widx[0]), int(widx[0]) + block.size))
            self.weights.append(weights.index_select(0, widx).view(k, block.rows, block.cols))
            self.nodes.append(nodes.index_select(0, nidx).view(k, 1, block.rows, NODE_FEATURES))

    def saliency(self, x: torch.Tensor, masks: list[torch.Tensor] | None,
                            labels: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``|w * dL/dw|`` per block ``(k, rows, cols)`` and the labels used ``(k, B)`` (the models' own
        predictions when ``labels`` is None); ``L`` is the summed cross-entropy over ``B`` inputs, divided by ``B``."""
        cfg, blocks = self.config, self.layout.blocks
        k, n = len(self.weights[0]), x.shape[0]
        act = activation_fn(cfg.activation)
        acts = [x.unsqueeze(0).expand(k, -1, -1)]
        used = self.weights if masks is None else [w * m for w, m in zip(self.weights, masks)]
        saved = []  # per hidden block: (what the norm's backward needs, pre-activation, output)
        for bi, block in enumerate(blocks):
            nodes = self.nodes[bi]
            srcs = block.srcs
            inp = acts[srcs[0]] if len(srcs) == 1 else torch.cat([acts[s] for s in srcs], dim=-1)
            z = torch.baddbmm(nodes[..., COL_BIAS], inp, used[bi].transpose(1, 2))
            if block.dst > cfg.depth:
                acts.append(z)
                break
            norm_saved = None
            if cfg.norm == "batchnorm":
                norm_saved = torch.rsqrt(nodes[..., COL_RUNNING_VAR] + cfg.norm_eps) * nodes[..., COL_NORM_WEIGHT]
                pre = (z - nodes[..., COL_RUNNING_MEAN]) * norm_saved + nodes[..., COL_NORM_BIAS]
            elif cfg.norm == "layernorm":
                xhat, mean, rstd = aten.native_layer_norm(z, [z.shape[-1]], None, None, cfg.norm_eps)
                norm_saved = (z, mean, rstd)
                pre = torch.addcmul(nodes[..., COL_NORM_BIAS], xhat, nodes[..., COL_NORM_WEIGHT])
            else:
                pre = z
            out = act(pre)
            saved.append((norm_saved, pre, out))
            acts.append(out)
        logits = acts[-1]
        if labels is None:
            labels = logits.argmax(-1)
        grad_z = torch.softmax(logits, dim=-1)
        grad_z.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(grad_z[..., :1], -1.0)).div_(n)
        grads = [None] * len(acts)
        sal: list[torch.Tensor] = [None] * len(blocks)  # type: ignore[list-item]
        for bi in range(len(blocks) - 1, -1, -1):
            block = blocks[bi]
            if block.dst <= cfg.depth:
                norm_saved, pre, out = saved[bi]
                g = _activation_backward(cfg.activation, grads[block.dst], pre, out)
                if cfg.norm == "batchnorm":
                    g = g * norm_saved
                elif cfg.norm == "layernorm":
                    z, mean, rstd = norm_saved
                    g = aten.native_layer_norm_backward(g * self.nodes[bi][..., COL_NORM_WEIGHT], z, [z.shape[-1]],
                                                        mean, rstd, None, None, [True, False, False])[0]
                grad_z = g
            srcs = block.srcs
            inp = acts[srcs[0]] if len(srcs) == 1 else torch.cat([acts[s] for s in srcs], dim=-1)
            grad_w = torch.bmm(grad_z.transpose(1, 2), inp)  # dL/d(masked weight)
            if masks is not None:
                grad_w = grad_w * masks[bi]
            sal[bi] = (self.weights[bi] * grad_w).abs_()
            if bi == 0:
                break
            grad_in = torch.bmm(grad_z, used[bi])
            for part in block.parts:
                if part.src == 0:
                    continue
                piece = grad_in[..., part.col_start:part.col_stop]
                grads[part.src] = piece if grads[part.src] is None else grads[part.src] + piece
        return sal, labels


class SaliencyPass:
    """``|w * dL/dw|`` of every weight of the models in ``data`` on the shared inputs ``x`` ``(B, F)``, where ``L``
    is the mean cross-entropy against given labels (or the models' own predictions), any number of times with
    other masks: ``SaliencyPass(data, x)(mask, labels)``. The same values as autograd through
    :func:`~hubedit.graph.functional.functional_forward` with ``edge_mask=mask`` (float rounding aside)."""

    def __init__(self, data: Data, x: torch.Tensor, weights: torch.Tensor | None = None):
        configs, node_off, edge_off = graph_offsets(data)
        self.weights = (data.edge_attr if weights is None else weights).reshape(-1)
        dtype, dev = self.weights.dtype, self.weights.device
        if x.dim() != 2 or x.shape[1] != configs[0].in_features:
            raise ValueError(f"expected x of shape (B, {configs[0].in_features}), got {tuple(x.shape)}")
        self.x = x.to(device=dev, dtype=dtype)
        nodes = data.x.to(dtype)
        edge_start, node_start = torch.tensor(edge_off[:-1], device=dev), torch.tensor(node_off[:-1], device=dev)
        self.groups = [_Group(cfg, gs, edge_start, node_start, self.weights, nodes)
                       for cfg, gs in group_by_config(configs).items()]
        self.n_models = len(configs)
        order = torch.cat([i for g in self.groups for i in g.edge_index])
        self._order = None if bool((order == torch.arange(order.shape[0], device=dev)).all()) else order

    def __call__(self, mask: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Saliency per weight (``E``, edge order) and the labels used, ``(M, B)``."""
        if mask is not None:
            mask = mask.reshape(-1).to(self.weights.dtype)
        parts, all_labels = [], []
        for g in self.groups:
            masks = None
            if mask is not None:
                masks = ([mask[i].view_as(w) for i, w in zip(g.slices, g.weights)] if g.slices is not None else
                         [mask.index_select(0, i).view_as(w) for i, w in zip(g.edge_index, g.weights)])
            sal, lab = g.saliency(self.x, masks, None if labels is None else labels.index_select(0, g.models))
            parts += [s.reshape(-1) for s in sal]
            all_labels.append((g.models, lab))
        flat = torch.cat(parts)
        if self._order is not None:
            flat = torch.empty_like(flat).index_copy_(0, self._order, flat)
        if len(all_labels) == 1 and labels is None and self.n_models == 1:
            return flat, all_labels[0][1]
        out = torch.empty(self.n_models, self.x.shape[0], dtype=torch.long, device=flat.device)
        for models, lab in all_labels:
            out.index_copy_(0, models, lab)
        return flat, out


def saliency_rounds(data: Data, x: torch.Tensor, weights: torch.Tensor, keep_counts: torch.Tensor | None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The dense saliency of every weight (``E``) against the models' own labels on ``x`` ``(B, F)``, and with
    ``keep_counts`` ``(M, R)`` (weights model ``m`` keeps after round ``r``) the outcome of ``R`` rounds of
    iterative saliency pruning: each round keeps, among the weights still kept, those with the highest saliency
    (ties by position), then takes the saliency again on the masked model against the same labels. Returns
    ``(dense saliency, last mask, last saliency, features)`` (mask and saliency None without rounds). Runs the C++
    kernel where it is built (float32 on CPU), which also returns the calibration features of
    :func:`~hubedit.graph.calibration.calibration_features` (``E x 2``, ``E x 4`` with rounds); the torch
    formulation (:class:`SaliencyPass`) otherwise, or where a saliency is not finite, with features None."""
    weights = weights.reshape(-1)
    rounds = 0 if keep_counts is None else keep_counts.shape[1]
    lib = library() if (weights.dtype == torch.float32 and weights.device.type == "cpu") else None
    if lib is not None:
        out = _kernel_rounds(lib, data, x, weights, keep_counts, rounds)
        if out is not None:
            return out
    saliency_of = SaliencyPass(data, x, weights)
    dense, labels = saliency_of()
    if not rounds:
        return dense, None, None, None
    group = edge_graph_index(data)
    mask, score = torch.ones_like(dense), dense
    for r in range(rounds):
        ranked = torch.where(mask > 0, score, torch.full_like(score, -1.0))  # pruned weights stay pruned
        mask = top_k_per_group(ranked, group, keep_counts[:, r])
        score, _ = saliency_of(mask, labels)
    return dense, mask, score, None


def _kernel_rounds(lib, data, x, weights, keep_counts, rounds):
    configs, node_off, edge_off = graph_offsets(data)
    if x.dim() != 2 or x.shape[1] != configs[0].in_features:
        raise ValueError(f"expected x of shape (B, {configs[0].in_features}), got {tuple(x.shape)}")
    plan, starts, eps = model_plans(configs, node_off, edge_off)
    x = x.detach().to(torch.float32).contiguous()
    ev = weights.detach().contiguous()
    nv = data.x.detach().to(torch.float32).contiguous()
    n_edges = ev.shape[0]
    dense = torch.empty(n_edges)
    mask = torch.empty(n_edges) if rounds else dense
    score = torch.empty(n_edges) if rounds else dense
    features = torch.empty(n_edges, 4 if rounds else 2)
    k = (keep_counts.to(torch.int64).contiguous() if rounds else torch.zeros(1, dtype=torch.int64))
    rc = lib.hubedit_saliency_features(len(configs), plan.data_ptr(), starts.data_ptr(), eps.data_ptr(),
                                       x.data_ptr(), x.shape[0], x.shape[1], ev.data_ptr(), nv.data_ptr(), rounds,
                                       k.data_ptr(), dense.data_ptr(), mask.data_ptr(), score.data_ptr(),
                                       features.data_ptr(), torch.get_num_threads())
    check_rc(rc, "saliency kernel")
    if rc != 0:
        return None  # a saliency is not finite: the torch formulation says so its own way
    return (dense, mask, score, features) if rounds else (dense, None, None, features)
