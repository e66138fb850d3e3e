"""The per-edge work of :meth:`BidirectionalLayer.forward_fused` as one C++ kernel (``kernels/edge_layer.cpp``).

At inference the chunked torch loop of ``forward_fused`` makes about ten kernel calls per chunk of edges
(gathers, three products, activations, scatter-adds, the output map, the edit head), each streaming an
``E x k`` temporary through memory. The kernel does a tile of edges at a time in registers: the three first
maps as one product into accumulators that start at the gathered node terms, then the activation, both
scatter-adds, the output map and the edit head, and splits the edges over ``torch.get_num_threads()``
threads. Training uses it too: :class:`~hubedit.metanet.edge_pass.EdgePass` runs :func:`edge_layer_forward`
and, backwards, :func:`edge_layer_backward`, which recomputes a tile's pre-activations and forms every gradient
of the tile. Same maths (equal to float rounding, ``tests/test_edge_kernel.py``); ``scripts/bench_edit.py
--torch-loop`` and ``scripts/bench_train_processes.py --torch-loop`` time the torch loops beside it. Used for
float32 CPU tensors, edge widths 16 / 32 / 64 and relu or leaky relu; anything else (``layer.edge_kernel =
False``, ``HUBEDIT_FUSED_KERNELS=0``, no C++ compiler) runs the torch loops. The matrix products are the kernel's
own register-tiled ones (FMA-bound: about 53 GFLOP/s per core of a 2-vCPU AVX-512 EPYC).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from .. import native
from ..native import compiler as _compiler  # a module global, so that tests can replace it

SOURCES = (Path(__file__).with_name("kernels") / "edge_layer.cpp",)
#: edge widths the kernel is compiled for
WIDTHS = (16, 32, 64)
ACT_CODES = {"relu": 0, "leaky_relu": 1}


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load_or_warn("fused metanetwork edge kernel", "edge_layer", _compiler() if native.enabled() else None,
                              SOURCES, link=["-pthread"])
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.hubedit_edge_layer_forward.argtypes = [i64] * 4 + [p] * 13 + [i64, i64]
    lib.hubedit_edge_layer_forward.restype = ctypes.c_int
    lib.hubedit_edge_layer_backward.argtypes = [i64] * 4 + [p] * 20 + [i64]
    lib.hubedit_edge_layer_backward.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernel is built and loaded here (``HUBEDIT_FUSED_KERNELS=0`` turns it off)."""
    return _library() is not None


def supports(e: torch.Tensor, activation: str) -> bool:
    """Whether :func:`edge_layer_forward` handles edge representations ``e`` with this activation."""
    return (e.device.type == "cpu" and e.dtype == torch.float32 and e.dim() == 2 and e.shape[1] in WIDTHS
            and e.is_contiguous() and activation in ACT_CODES and available())


def _check(rc: int, width: int, n_nodes: int) -> None:
    if rc == -1:
        raise RuntimeError(f"edge kernel: width {width} is not one of {WIDTHS}")
    if rc == -2:
        raise MemoryError(f"edge kernel: could not allocate the per-thread sums ({n_nodes} nodes x {width}) or "
                          f"start {torch.get_num_threads()} threads; set fewer torch threads or edit smaller batches")
    if rc != 0:
        raise RuntimeError(f"edge kernel failed with code {rc}")


def _checked(e, nodes, weights, src, dst, activation, strided: bool = False, w_cat: torch.Tensor | None = None):
    """Validate the shared arguments of both directions; returns ``(n_nodes, nodes, w_cat, src, dst, stride)`` ready
    for the kernel (contiguous; ``w_cat = [w_f | w_b | w_e]``, ``weights = (w_f, w_e, w_b)``). With ``strided``,
    node terms that share a row stride (column blocks of one matrix) are passed as they are, with that stride; a
    given contiguous ``w_cat`` is used as it is."""
    if not supports(e, activation):
        raise ValueError(f"edge kernel: expected contiguous float32 CPU edges of width {WIDTHS} and an activation "
                         f"in {sorted(ACT_CODES)}, got {tuple(e.shape)} {e.dtype} on {e.device}, {activation!r}")
    n_edges, width = e.shape
    n_nodes = nodes[0].shape[0]
    if src.shape != (n_edges,) or dst.shape != (n_edges,):
        raise ValueError(f"edge kernel: expected src and dst of shape ({n_edges},), got {tuple(src.shape)} and {tuple(dst.shape)}")
    if any(t.shape != (n_nodes, width) or t.dtype != e.dtype for t in nodes):
        raise ValueError(f"edge kernel: expected node terms of shape ({n_nodes}, {width}) and dtype {e.dtype}")
    stride = nodes[0].stride(0)
    if not (strided and all(t.stride() == (stride, 1) for t in nodes) and stride >= width):
        nodes, stride = [t.contiguous() for t in nodes], width
    if w_cat is None or not w_cat.is_contiguous() or w_cat.shape != (width, 3 * width) or w_cat.dtype != e.dtype:
        w_f, w_e, w_b = weights
        w_cat = torch.cat([w_f, w_b, w_e], dim=1).contiguous()
    return n_nodes, nodes, w_cat, src.contiguous().long(), dst.contiguous().long(), stride


@torch.no_grad()
def edge_layer_forward(
    e: torch.Tensor,
    p_f: torch.Tensor,
    p_s: torch.Tensor,
    p_d: torch.Tensor,
    p_b: torch.Tensor,
    w_f: torch.Tensor | None,
    w_e: torch.Tensor | None,
    w_b: torch.Tensor | None,
    w_o: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    activation: str,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
    w_cat: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update ``e`` (``E x k``) in place and return the summed hidden activations ``(fwd, bwd)`` (``N x k``).

    Arguments as :class:`~hubedit.metanet.edge_pass.EdgePass` (node terms ``N x k`` with their biases,
    weights ``k x k`` applied on the right); ``head = (vec, acc)`` adds ``e_new @ vec`` to ``acc`` per edge.
    Node terms may be column blocks of one ``N x 4k`` matrix (read in place); ``w_cat`` may hand over
    ``[w_f | w_b | w_e]`` already made (a caller's cache; ``w_f, w_e, w_b`` may then be None). Only where
    :func:`supports` holds.
    """
    n_nodes, nodes, w_cat, src, dst, stride = _checked(e, (p_f, p_s, p_d, p_b), (w_f, w_e, w_b), src, dst, activation,
                                                       strided=True, w_cat=w_cat)
    n_edges, width = e.shape
    w_o = w_o.contiguous()
    fwd = e.new_zeros(n_nodes, width)
    bwd = e.new_zeros(n_nodes, width)
    vec = acc = None
    if head is not None:
        vec, acc = head[0].contiguous(), head[1]
        if vec.shape != (width,) or acc.shape != (n_edges,) or not acc.is_contiguous():
            raise ValueError(f"edge kernel: expected a head vector of {width} and a contiguous accumulator of {n_edges}")
    rc = _library().hubedit_edge_layer_forward(
        n_edges, n_nodes, width, ACT_CODES[activation], src.data_ptr(), dst.data_ptr(), e.data_ptr(),
        *(t.data_ptr() for t in nodes), w_cat.data_ptr(), w_o.data_ptr(), fwd.data_ptr(), bwd.data_ptr(),
        None if vec is None else vec.data_ptr(), None if acc is None else acc.data_ptr(), stride, torch.get_num_threads(),
    )
    _check(rc, width, n_nodes)
    return fwd, bwd


@torch.no_grad()
def edge_layer_backward(
    e: torch.Tensor,
    p_f: torch.Tensor,
    p_s: torch.Tensor,
    p_d: torch.Tensor,
    p_b: torch.Tensor,
    w_f: torch.Tensor,
    w_e: torch.Tensor,
    w_b: torch.Tensor,
    w_o: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    activation: str,
    g_new: torch.Tensor | None,
    g_fwd: torch.Tensor | None,
    g_bwd: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`edge_layer_forward` (without the head) with respect to
    ``(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o)``, given those of ``(e_new, fwd, bwd)`` (None: zero); the
    pre-activations are recomputed tile by tile, as :class:`~hubedit.metanet.edge_pass.EdgePass` does in chunks."""
    n_nodes, nodes, w_cat, src, dst, _ = _checked(e, (p_f, p_s, p_d, p_b), (w_f, w_e, w_b), src, dst, activation)
    n_edges, width = e.shape
    grads = [None if g is None else g.contiguous() for g in (g_new, g_fwd, g_bwd)]
    if (grads[0] is not None and grads[0].shape != e.shape) \
            or any(g is not None and g.shape != (n_nodes, width) for g in grads[1:]):
        raise ValueError(f"edge kernel: expected output gradients of shape {tuple(e.shape)} and ({n_nodes}, {width})")
    w_cat_t, w_o_t = w_cat.t().contiguous(), w_o.t().contiguous()
    g_e = torch.empty_like(e)
    g_nodes = [e.new_zeros(n_nodes, width) for _ in range(4)]
    g_wcat, g_wo = e.new_zeros(width, 3 * width), e.new_zeros(width, width)
    rc = _library().hubedit_edge_layer_backward(
        n_edges, n_nodes, width, ACT_CODES[activation], src.data_ptr(), dst.data_ptr(), e.contiguous().data_ptr(),
        *(t.data_ptr() for t in nodes), w_cat.data_ptr(), w_cat_t.data_ptr(), w_o_t.data_ptr(),
        *(None if g is None else g.data_ptr() for g in grads), g_e.data_ptr(), *(t.data_ptr() for t in g_nodes),
        g_wcat.data_ptr(), g_wo.data_ptr(), torch.get_num_threads(),
    )
    _check(rc, width, n_nodes)
    g_wf, g_wb, g_we = g_wcat.split(width, dim=1)
    return (g_e, *g_nodes, g_wf, g_we, g_wb, g_wo)
