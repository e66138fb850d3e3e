"""The bidirectional, permutation-equivariant message-passing layer of the graph metanetwork.

One layer (paper A.2; ScaleGMN's bidirectional layer restricted to permutation symmetries):

* forward messages  ``m_ij = MLP_f([e_ij, h_i])``, summed at the destination ``j``;
* backward messages ``m_ji = MLP_b([e_ij, h_j])`` over the reversed edges, summed at the source ``i``;
* edge update       ``e_ij <- e_ij + MLP_e([e_ij, h_i, h_j])``;
* node update       ``h_j  <- h_j + MLP_n([h_j, fwd_j, bwd_j])``;
* LayerNorm after the residual node update (and optionally the edge update).

The MLPs are computed *exactly* as written, but factorised for speed: the first linear map of an MLP
over a concatenation is a sum of linear maps of its parts, so the node parts are computed once per node
and gathered to the edges; the second linear map of a message MLP commutes with the sum over
neighbours, so it runs on the (far fewer) nodes: ``sum_i (W z_i + b) = W (sum_i z_i) + deg * b``.
Per-edge tensors are kept contiguous and activations work in place where autograd allows, because the
per-edge work (``E`` is 20-30 times ``N`` for MLPs) dominates the cost; without autograd,
:meth:`BidirectionalLayer.forward_fused` streams the edges in cache-sized chunks (or runs the C++ kernel of
:mod:`.edge_kernel`, where it is built). Only sums, gathers and
per-row maps are used, so the layer is equivariant to any permutation of nodes that preserves the
encodings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import edge_kernel
from .edge_pass import SUPPORTED_ACTIVATIONS, edge_pass

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    """The metanetwork activation ``name`` as a module."""
    if name not in ACTIVATIONS:
        raise ValueError(f"metanetwork activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def activation_(name: str, z: torch.Tensor) -> torch.Tensor:
    """Apply activation ``name`` to a temporary ``z``, in place whenever autograd allows."""
    if name == "relu":
        return torch.relu_(z)
    if name == "leaky_relu":
        return F.leaky_relu_(z)
    if name == "tanh":
        return torch.tanh_(z)  # backward needs only the output
    if name == "silu" and not (torch.is_grad_enabled() and z.requires_grad):
        return F.silu(z, inplace=True)
    return {"silu": F.silu, "gelu": F.gelu}[name](z)


class BidirectionalLayer(nn.Module):
    """Bidirectional edge/node message passing (message -> aggregate -> update).

    Args:
        hidden: node representation width.
        edge_hidden: edge representation width, also the hidden width of the three per-edge MLPs (the
            per-edge work, which dominates the cost, scales with it).
        activation: nonlinearity of the internal MLPs.
        node_norm: LayerNorm on nodes after the residual node update.
        edge_norm: LayerNorm on edges after the residual edge update (costs about 15% more time).
    """

    def __init__(
        self, hidden: int, edge_hidden: int, activation: str = "relu", node_norm: bool = True, edge_norm: bool = False
    ):
        super().__init__()
        d, k = hidden, edge_hidden
        make_activation(activation)  # validates the name
        self.activation = activation
        # MLP_f([e, h_i]): first linear map split into its e part (with the bias) and its h_i part
        self.fwd_e, self.fwd_src, self.fwd_out = nn.Linear(k, k), nn.Linear(d, k, bias=False), nn.Linear(k, d)
        # MLP_e([e, h_i, h_j]); the output bias is left out: every use of e is affine, which absorbs it
        self.edge_e = nn.Linear(k, k)
        self.edge_src, self.edge_dst = nn.Linear(d, k, bias=False), nn.Linear(d, k, bias=False)
        self.edge_out = nn.Linear(k, k, bias=False)
        # MLP_b([e, h_j]) over reversed edges
        self.bwd_e, self.bwd_dst, self.bwd_out = nn.Linear(k, k), nn.Linear(d, k, bias=False), nn.Linear(k, d)
        # MLP_n([h, fwd, bwd])
        self.node_mlp = nn.Sequential(nn.Linear(3 * d, d), make_activation(activation), nn.Linear(d, d))
        self.node_norm = nn.LayerNorm(d) if node_norm else nn.Identity()
        self.edge_norm = nn.LayerNorm(k) if edge_norm else nn.Identity()
        # with gradients: the per-edge work as one chunked autograd function (relu / leaky_relu, no edge
        # norm); False runs plain autograd (the same maths, for comparison: scripts/bench_train.py)
        self.chunked_backward = True
        # the per-edge work (inference, and the chunked training pass) in the C++ kernel where it is built
        # (:mod:`.edge_kernel`); False runs the torch loops (the same maths, for comparison: scripts/bench_*.py)
        self.edge_kernel = True
        self._kernel_cache = None  # (key, weights) of _kernel_weights

    # message passing in three steps, in the spirit of torch_geometric's MessagePassing
    def message(
        self, h: torch.Tensor, e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden activations (``E x k`` each) of the forward-message, edge and backward-message MLPs.

        Each is ``act(W_e e + W_src h_i (+ W_dst h_j) + b)``: node terms (with the bias) are computed per
        node, gathered to the edges, and the edge term is accumulated into the gathered tensor in place.
        """
        act = self.activation
        zf = F.linear(h, self.fwd_src.weight, self.fwd_e.bias).index_select(0, src).addmm_(e, self.fwd_e.weight.t())
        ze = F.linear(h, self.edge_src.weight, self.edge_e.bias).index_select(0, src).addmm_(e, self.edge_e.weight.t())
        ze = ze.add_(F.linear(h, self.edge_dst.weight).index_select(0, dst))
        zb = F.linear(h, self.bwd_dst.weight, self.bwd_e.bias).index_select(0, dst).addmm_(e, self.bwd_e.weight.t())
        return activation_(act, zf), activation_(act, ze), activation_(act, zb)

    def aggregate(
        self,
        zf: torch.Tensor,
        zb: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_nodes: int,
        deg_in: torch.Tensor,
        deg_out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed forward messages at destinations and backward messages at sources (``N x d`` each)."""
        fwd = zf.new_zeros(num_nodes, zf.shape[1]).index_add_(0, dst, zf)
        bwd = zb.new_zeros(num_nodes, zb.shape[1]).index_add_(0, src, zb)
        # second linear map after the sum: sum_i (W z_i + b) = W sum_i z_i + deg * b
        fwd = torch.addmm(deg_in.unsqueeze(1) * self.fwd_out.bias, fwd, self.fwd_out.weight.t())
        bwd = torch.addmm(deg_out.unsqueeze(1) * self.bwd_out.bias, bwd, self.bwd_out.weight.t())
        return fwd, bwd

    def update(
        self, h: torch.Tensor, e: torch.Tensor, ze: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual node and edge updates."""
        h = self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=1)))
        e = self.edge_norm(torch.addmm(e, ze, self.edge_out.weight.t()))
        return h, e

    def forward(
        self,
        h: torch.Tensor,
        e: torch.Tensor,
        edge_index: torch.Tensor,
        deg_in: torch.Tensor,
        deg_out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer: returns updated ``(h, e)``. ``deg_in``/``deg_out`` are float in/out-degrees per node."""
        src, dst = edge_index[0], edge_index[1]
        if self.chunked_backward and self.activation in SUPPORTED_ACTIVATIONS and isinstance(self.edge_norm, nn.Identity):
            return self._forward_chunked(h, e, src, dst, deg_in, deg_out)
        zf, ze, zb = self.message(h, e, src, dst)
        fwd, bwd = self.aggregate(zf, zb, src, dst, h.shape[0], deg_in, deg_out)
        return self.update(h, e, ze, fwd, bwd)

    def _forward_chunked(self, h, e, src, dst, deg_in, deg_out) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the per-edge work in one chunked autograd function (:mod:`.edge_pass`)."""
        p_f = F.linear(h, self.fwd_src.weight, self.fwd_e.bias)
        p_s = F.linear(h, self.edge_src.weight, self.edge_e.bias)
        p_d = F.linear(h, self.edge_dst.weight)
        p_b = F.linear(h, self.bwd_dst.weight, self.bwd_e.bias)
        e_new, fwd, bwd = edge_pass(
            e, p_f, p_s, p_d, p_b, self.fwd_e.weight.t(), self.edge_e.weight.t(), self.bwd_e.weight.t(),
            self.edge_out.weight.t(), src, dst, self.activation, self.edge_kernel,
        )
        return self._node_update(h, fwd, bwd, deg_in, deg_out), e_new

    @torch.no_grad()
    def forward_fused(
        self,
        h: torch.Tensor,
        e: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        deg_in: torch.Tensor,
        deg_out: torch.Tensor,
        work: "EdgeWorkspace",
        head: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Inference version of :meth:`forward` (same maths, no autograd): returns the new ``h``.

        Edges are processed in cache-sized chunks through preallocated buffers, and ``e`` is updated *in
        place*: on CPUs most of the eager time goes to allocating and streaming large per-edge
        temporaries, which this avoids. ``head = (vec, acc)`` adds ``e_new @ vec`` to ``acc`` per edge
        (the residual edit head) while the chunk is in cache.
        """
        n_nodes, k, act = h.shape[0], e.shape[1], self.activation
        if self.edge_kernel and isinstance(self.edge_norm, nn.Identity) and edge_kernel.supports(e, act):
            w_nodes, b_nodes, w_cat, w_o = self._kernel_weights()
            p_f, p_s, p_d, p_b = torch.addmm(b_nodes, h, w_nodes).split(k, dim=1)  # the four node terms at once
            fwd, bwd = edge_kernel.edge_layer_forward(e, p_f, p_s, p_d, p_b, None, None, None, w_o, src, dst, act, head,
                                                      w_cat=w_cat)
            return self._node_update(h, fwd, bwd, deg_in, deg_out)
        w_f, w_e, w_b, w_o = (m.weight.t() for m in (self.fwd_e, self.edge_e, self.bwd_e, self.edge_out))
        p_f = F.linear(h, self.fwd_src.weight, self.fwd_e.bias)
        p_s = F.linear(h, self.edge_src.weight, self.edge_e.bias)
        p_d = F.linear(h, self.edge_dst.weight)
        p_b = F.linear(h, self.bwd_dst.weight, self.bwd_e.bias)
        fwd = h.new_zeros(n_nodes, k)
        bwd = h.new_zeros(n_nodes, k)
        for s, t in work.chunks(e.shape[0]):
            n, sc, dc, ec = t - s, src[s:t], dst[s:t], e[s:t]
            zf, ze, zb, tmp = (buf[:n] for buf in work.buffers)
            torch.index_select(p_f, 0, sc, out=zf).addmm_(ec, w_f)
            fwd.index_add_(0, dc, activation_(act, zf))
            torch.index_select(p_b, 0, dc, out=zb).addmm_(ec, w_b)
            bwd.index_add_(0, sc, activation_(act, zb))
            torch.index_select(p_s, 0, sc, out=ze).add_(torch.index_select(p_d, 0, dc, out=tmp)).addmm_(ec, w_e)
            ec.addmm_(activation_(act, ze), w_o)
            if not isinstance(self.edge_norm, nn.Identity):
                ec.copy_(self.edge_norm(ec))
            if head is not None:
                head[1][s:t].addmv_(ec, head[0])
        return self._node_update(h, fwd, bwd, deg_in, deg_out)

    def _kernel_weights(self) -> tuple[torch.Tensor, ...]:
        """The inference kernel's weights, made once and kept while the parameters stay the same (same storage
        and version): the four node maps as one ``d x 4k`` matrix with its bias, ``[w_f | w_b | w_e]`` and
        ``w_o``, contiguous. Saves a dozen small tensor operations per layer and call."""
        params = (self.fwd_src.weight, self.edge_src.weight, self.edge_dst.weight, self.bwd_dst.weight,
                  self.fwd_e.bias, self.edge_e.bias, self.bwd_e.bias, self.fwd_e.weight, self.edge_e.weight,
                  self.bwd_e.weight, self.edge_out.weight)
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            w_nodes = torch.cat([self.fwd_src.weight, self.edge_src.weight, self.edge_dst.weight, self.bwd_dst.weight])
            bias = torch.cat([self.fwd_e.bias, self.edge_e.bias, torch.zeros_like(self.edge_e.bias), self.bwd_e.bias])
            w_cat = torch.cat([self.fwd_e.weight.t(), self.bwd_e.weight.t(), self.edge_e.weight.t()], dim=1)
            weights = (w_nodes.t().contiguous(), bias, w_cat.contiguous(), self.edge_out.weight.t().contiguous())
            self._kernel_cache = (key, tuple(w.detach() for w in weights))
        return self._kernel_cache[1]

    def _node_update(self, h, fwd, bwd, deg_in, deg_out) -> torch.Tensor:
        """The messages' output maps on the summed hidden activations, then the residual node update."""
        fwd = torch.addmm(deg_in.unsqueeze(1) * self.fwd_out.bias, fwd, self.fwd_out.weight.t())
        bwd = torch.addmm(deg_out.unsqueeze(1) * self.bwd_out.bias, bwd, self.bwd_out.weight.t())
        return self.node_norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=1)))


class EdgeWorkspace:
    """Buffers of the fused inference path, kept between calls: four ``chunk x width`` scratch tensors
    and the edge representations (``E x width``, grown on demand)."""

    #: elements per chunk buffer: 2**19 floats = 2 MiB, about a core's L2 cache; measured best on a 2-core
    #: Xeon among 2**16..2**21 (smaller chunks mean more, shorter kernel calls)
    CHUNK_ELEMENTS = 2**19

    def __init__(self, width: int, dtype: torch.dtype, device: torch.device, chunk: int | None = None):
        self.width, self.dtype, self.device = width, dtype, torch.device(device)
        self.chunk = chunk or max(256, self.CHUNK_ELEMENTS // width)
        self.buffers = [torch.empty(self.chunk, width, dtype=dtype, device=device) for _ in range(4)]
        self._edges = torch.empty(0, width, dtype=dtype, device=device)

    def edges(self, n: int) -> torch.Tensor:
        """An uninitialised ``n x width`` view for the edge representations (reused across calls)."""
        if self._edges.shape[0] < n:
            self._edges = torch.empty(n + n // 4, self.width, dtype=self.dtype, device=self.device)
        return self._edges[:n]

    def fits(self, width: int, dtype: torch.dtype, device: torch.device) -> bool:
        return self.width == width and self.dtype == dtype and self.device == torch.device(device)

    def chunks(self, n: int):
        """``(start, stop)`` ranges covering ``0..n`` in chunks."""
        return ((s, min(n, s + self.chunk)) for s in range(0, n, self.chunk))
