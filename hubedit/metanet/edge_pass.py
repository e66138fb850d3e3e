"""The per-edge half of a :class:`~hubedit.metanet.layers.BidirectionalLayer` as one autograd function.

Training is bound by memory traffic, not arithmetic: plain autograd keeps every ``E x k`` temporary of the
three edge MLPs (gathers, pre-activations, activations) and streams each several times through memory in
the backward pass. :class:`EdgePass` instead walks the edges in cache-sized chunks in both directions: the
forward keeps only its inputs, and the backward recomputes a chunk's activations while the chunk is in
cache, then forms every gradient of that chunk at once. Same maths as the autograd path (equal to float
rounding, see ``tests/test_metanet.py``); ``scripts/bench_train.py`` measures the speed-up. Where the C++ edge
kernel is built (float32 on CPU, edge widths 16 / 32 / 64: :mod:`.edge_kernel`) both directions run there, a tile
of edges at a time in registers, with the same recomputation.

Inputs: edge representations ``e`` (``E x k``), node terms of the three MLPs' first linear maps (``N x k``
each, biases included: ``p_f``, ``p_s`` gathered at sources, ``p_d``, ``p_b`` at destinations), and the
edge-part weights as ``k x k`` matrices applied on the right (``w_f, w_e, w_b``: first maps; ``w_o``: the
edge MLP's output map). Outputs: the new edge representations ``e + act(z_e) w_o`` and the summed hidden
activations of the forward and backward messages (``N x k`` each; the messages' output maps run on nodes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import edge_kernel

#: activations the function differentiates itself (their derivative is a function of the output's sign)
SUPPORTED_ACTIVATIONS = ("relu", "leaky_relu")
#: elements of one ``chunk x k`` buffer: 2**18 floats (1 MiB) per buffer, measured best among 2**14..2**20 on a 2-core Xeon
CHUNK_ELEMENTS = 2**18
_LEAKY_SLOPE = 0.01  # torch's default, as nn.LeakyReLU() in the layers


def _act_(name: str, z: torch.Tensor) -> torch.Tensor:
    return torch.relu_(z) if name == "relu" else F.leaky_relu_(z, _LEAKY_SLOPE)


def _act_grad(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad * act'(z)`` from the activation's output ``out`` (one fused pass)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, out, 0)
    return torch.ops.aten.leaky_relu_backward(grad, out, _LEAKY_SLOPE, True)


def _chunks(n: int, width: int):
    size = max(64, CHUNK_ELEMENTS // max(1, width))
    return ((s, min(n, s + size)) for s in range(0, n, size))


class EdgePass(torch.autograd.Function):
    """``(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, activation, kernel) -> (e_new, fwd_hidden, bwd_hidden)``."""

    @staticmethod
    def forward(ctx, e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, activation: str, kernel: bool = True):
        ctx.save_for_backward(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst)
        ctx.activation = activation
        ctx.kernel = kernel and edge_kernel.supports(e, activation) and all(
            t.dtype == e.dtype for t in (p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o))
        if ctx.kernel:  # the same maths in C++ (hubedit.metanet.edge_kernel), tile by tile
            e_new = e.clone()
            fwd, bwd = edge_kernel.edge_layer_forward(e_new, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, activation)
            return e_new, fwd, bwd
        n_nodes, k = p_f.shape
        e_new = torch.empty_like(e)
        fwd = e.new_zeros(n_nodes, k)
        bwd = e.new_zeros(n_nodes, k)
        for s, t in _chunks(e.shape[0], k):
            ec, sc, dc = e[s:t], src[s:t], dst[s:t]
            fwd.index_add_(0, dc, _act_(activation, p_f.index_select(0, sc).addmm_(ec, w_f)))
            bwd.index_add_(0, sc, _act_(activation, p_b.index_select(0, dc).addmm_(ec, w_b)))
            ze = _act_(activation, p_s.index_select(0, sc).add_(p_d.index_select(0, dc)).addmm_(ec, w_e))
            torch.addmm(ec, ze, w_o, out=e_new[s:t])
        return e_new, fwd, bwd

    @staticmethod
    def backward(ctx, g_new, g_fwd, g_bwd):
        e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst = ctx.saved_tensors
        act = ctx.activation
        if getattr(ctx, "kernel", False):
            grads = edge_kernel.edge_layer_backward(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, act,
                                                    g_new, g_fwd, g_bwd)
            return (*grads, None, None, None, None)
        n_nodes, k = p_f.shape
        g_e = torch.empty_like(e)
        g_pf, g_ps, g_pd, g_pb = (torch.zeros_like(p) for p in (p_f, p_s, p_d, p_b))
        g_wf, g_we, g_wb, g_wo = (torch.zeros_like(w) for w in (w_f, w_e, w_b, w_o))
        if g_new is None:
            g_new = torch.zeros_like(e)
        w_et, w_ot = w_e.t(), w_o.t()
        # the two messages: forward z_f = act(p_f[src] + e w_f) summed at dst, backward z_b = act(p_b[dst] + e w_b)
        # summed at src; (node terms, weight, their gradients, output gradient, gathered at, summed at)
        messages = [(p, w, g_p, g_w, g_out, gather_src)
                    for p, w, g_p, g_w, g_out, gather_src in ((p_f, w_f, g_pf, g_wf, g_fwd, True),
                                                              (p_b, w_b, g_pb, g_wb, g_bwd, False))
                    if g_out is not None]
        for s, t in _chunks(e.shape[0], k):
            ec, sc, dc, gc, gi = e[s:t], src[s:t], dst[s:t], g_new[s:t], g_e[s:t]
            # edge update: e_new = e + act(p_s[src] + p_d[dst] + e w_e) w_o
            ze = _act_(act, p_s.index_select(0, sc).add_(p_d.index_select(0, dc)).addmm_(ec, w_e))
            g_wo.addmm_(ze.t(), gc)
            dze = _act_grad(act, torch.mm(gc, w_ot), ze)
            torch.addmm(gc, dze, w_et, out=gi)
            g_we.addmm_(ec.t(), dze)
            g_ps.index_add_(0, sc, dze)
            g_pd.index_add_(0, dc, dze)
            for p, w, g_p, g_w, g_out, gather_src in messages:
                at, summed_at = (sc, dc) if gather_src else (dc, sc)
                z = _act_(act, p.index_select(0, at).addmm_(ec, w))
                dz = _act_grad(act, g_out.index_select(0, summed_at), z)
                gi.addmm_(dz, w.t())
                g_w.addmm_(ec.t(), dz)
                g_p.index_add_(0, at, dz)
        return g_e, g_pf, g_ps, g_pd, g_pb, g_wf, g_we, g_wb, g_wo, None, None, None, None


def edge_pass(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, activation: str, kernel: bool = True):
    """Apply :class:`EdgePass` (see the module docstring for the arguments); ``kernel=False`` keeps to the
    chunked torch loop even where the C++ kernel is built."""
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"edge_pass supports activations {SUPPORTED_ACTIVATIONS}, got {activation!r}")
    return EdgePass.apply(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o, src, dst, activation, kernel)
