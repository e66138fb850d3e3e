"""Fused per-model bias, normalisation, activation and dropout for the batched zoo trainer.

:class:`~hubedit.zoo.trainer.ModelGroup` holds ``G`` models as padded ``(G, B, W)`` tensors. After a
layer's batched matrix product each model applies its own bias, norm, activation and dropout; in torch ops
a group that mixes kinds evaluates every kind for every element, in many passes over memory. The C++
kernels in ``kernels/group_layer.cpp`` process each model's ``(B, W)`` block with its own kinds, in cache:
the forward pass reads ``z`` for the statistics and once more to write the output (and the activation's
derivative where that is cheaper to keep than to recompute); the backward pass draws the dropout mask
again (see that file for the exact conventions).

``kernels/group_step.cpp`` goes further: :func:`group_step` runs a whole training step of a group
(forward pass, loss, backward pass, AdamW) model after model, each at its real, unpadded size, reusing the
same per-model layer code (``kernels/layer_kernels.h``) with small register-blocked matrix products. The
trainer uses it wherever it is built; the custom op is what the torch formulation uses otherwise.

The sources are compiled once per machine with the system C++ compiler (the one ``torch.compile`` needs
anyway; GCC or Clang with C++20, x86-64 Linux with glibc's libmvec) into ``$HUBEDIT_KERNEL_CACHE``
(default ``~/.cache/hubedit/kernels``; :mod:`hubedit.native`), loaded with ``ctypes`` and exposed as the torch custom op
``hubedit::group_layer`` with its autograd formula, so it runs eagerly and inside compiled graphs alike.
:func:`available` is False where no compiler is found or the build fails (with a warning saying why); the
trainer then uses its torch formulation (the reference the kernels are tested against).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from .. import native
from ..native import ACT_CODES, NORM_CODES  # noqa: F401  (the codes of layer_kernels.h, used by the trainer)
from ..native import compiler as _compiler  # a module global, so that tests can replace it

_KERNELS = Path(__file__).with_name("kernels")
#: compiled and linked into one library; the header is part of the cache key
SOURCES = (_KERNELS / "group_layer.cpp", _KERNELS / "group_step.cpp")
HEADERS = (_KERNELS / "layer_kernels.h", _KERNELS / "gemm.h")
#: limits of the whole-step kernel (group_step.cpp's kMaxLayers / kMaxBlocks): deeper models train with
#: the torch formulation. Hidden layer l has at most l input blocks (the previous layer and skips from
#: earlier ones), so MAX_BLOCKS = MAX_LAYERS is never the binding limit.
MAX_LAYERS = 8
MAX_BLOCKS = 8
_LINK = ["-lmvec", "-lm"]


def stores_slope(activations) -> bool:
    """Whether :func:`group_layer` must keep derivatives for these activations: every activation but relu
    and leaky relu (codes >= 2; ``stores_slope`` in the kernel source), whose derivatives the backward pass
    recomputes."""
    return any(ACT_CODES[a] >= 2 for a in activations)


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load_or_warn("fused trainer kernels", "group_layer", _compiler() if native.enabled() else None,
                              SOURCES, HEADERS, _LINK)
    if lib is None:
        return None
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.hubedit_group_layer_forward.argtypes = [p] * 10 + [i64] * 3 + [f32] + [p] * 6
    lib.hubedit_group_layer_forward.restype = None
    lib.hubedit_group_layer_backward.argtypes = [p, i64, i64] + [p] * 15 + [i64] * 3 + [f32] + [p] * 4
    lib.hubedit_group_layer_backward.restype = None
    lib.hubedit_group_layer_max_width.restype = ctypes.c_int
    lib.hubedit_group_step.argtypes = [p, p, p, p, i64, i64, f32, f32, p]
    lib.hubedit_group_step.restype = None
    return lib


def available() -> bool:
    """Whether the fused kernels are built and loaded here (``HUBEDIT_FUSED_KERNELS=0`` turns them off)."""
    return _library() is not None


def max_width() -> int:
    lib = _library()
    return int(lib.hubedit_group_layer_max_width()) if lib is not None else 0


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@torch.library.custom_op("hubedit::group_layer", mutates_args=())
def group_layer(
    z: torch.Tensor,
    bias: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    drop_key: torch.Tensor | None,
    drop_thr: torch.Tensor,
    drop_scale: torch.Tensor,
    norm: torch.Tensor,
    act: torch.Tensor,
    width: torch.Tensor,
    eps: float,
    store_slope: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, d, bn_mean, bn_var, ln_mean, ln_rstd)`` of a group's hidden layer ``z + bias`` (``z``
    ``(G, B, W)``, the batched product without its bias; ``bias`` ``(G, W)``, added in the kernel): per
    model ``g`` with norm ``norm[g]``, activation ``act[g]`` and real width ``width[g]`` (codes
    :data:`NORM_CODES`, :data:`ACT_CODES`; int32), ``gamma``, ``beta`` ``(G, W)`` (None without norms),
    and dropout drawn in the kernel from ``drop_key`` (int64 per model; None: no dropout), ``drop_thr``
    (int64, 0 for no dropout) and ``drop_scale`` (float32) -- see ``ModelGroup._dropout_keep``.
    ``d`` holds the derivatives of the models whose activation is not relu / leaky relu (shape ``(0,)``
    unless ``store_slope``); the backward pass recomputes relu's and leaky relu's from ``z``."""
    z = z.contiguous()
    G, B, W = z.shape
    h, d, bn_mean, bn_var, ln_mean, ln_rstd = _forward_outputs(z, store_slope)
    bias = bias.contiguous()
    gamma = None if gamma is None else gamma.contiguous()
    beta = None if beta is None else beta.contiguous()
    _library().hubedit_group_layer_forward(
        _ptr(z), _ptr(bias), _ptr(gamma), _ptr(beta), _ptr(drop_key), _ptr(drop_thr), _ptr(drop_scale), _ptr(norm), _ptr(act),
        _ptr(width), G, B, W, eps, _ptr(h), _ptr(d) if store_slope else None, _ptr(bn_mean), _ptr(bn_var), _ptr(ln_mean), _ptr(ln_rstd),
    )
    return h, d, bn_mean, bn_var, ln_mean, ln_rstd


def _forward_outputs(z: torch.Tensor, store_slope: bool) -> tuple[torch.Tensor, ...]:
    G, B, W = z.shape
    d = torch.empty_like(z) if store_slope else z.new_empty(0)
    return torch.empty_like(z), d, z.new_empty(G, W), z.new_empty(G, W), z.new_empty(G, B), z.new_empty(G, B)


def _backward_outputs(z: torch.Tensor, has_norm: bool) -> tuple[torch.Tensor, ...]:
    G, B, W = z.shape
    n = (G, W) if has_norm else (0,)
    return torch.empty_like(z), z.new_empty(G, W), z.new_empty(n), z.new_empty(n)


@group_layer.register_fake
def _(z, bias, gamma, beta, drop_key, drop_thr, drop_scale, norm, act, width, eps, store_slope):
    return _forward_outputs(z, store_slope)


@torch.library.custom_op("hubedit::group_layer_backward", mutates_args=())
def group_layer_backward(
    grad_h: torch.Tensor,
    z: torch.Tensor,
    d: torch.Tensor,
    bias: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    bn_mean: torch.Tensor,
    bn_var: torch.Tensor,
    ln_mean: torch.Tensor,
    ln_rstd: torch.Tensor,
    drop_key: torch.Tensor | None,
    drop_thr: torch.Tensor,
    drop_scale: torch.Tensor,
    norm: torch.Tensor,
    act: torch.Tensor,
    width: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_z, grad_bias, grad_gamma, grad_beta)`` of :func:`group_layer` (the last two zero-size without
    norms), from its inputs and outputs (relu's and leaky relu's derivatives and the dropout draw are
    recomputed from ``z``). The parameter list repeats :func:`group_layer`'s: custom ops take their schema
    from the annotations."""
    if grad_h.stride(-1) != 1:
        grad_h = grad_h.contiguous()
    G, B, W = z.shape
    has_norm = gamma is not None
    gz, gbias, gg, gb = _backward_outputs(z, has_norm)
    _library().hubedit_group_layer_backward(
        _ptr(grad_h), grad_h.stride(0), grad_h.stride(1), _ptr(z), _ptr(d) if d.numel() else None, _ptr(bias), _ptr(gamma),
        _ptr(beta), _ptr(bn_mean), _ptr(bn_var), _ptr(ln_mean), _ptr(ln_rstd), _ptr(drop_key), _ptr(drop_thr),
        _ptr(drop_scale), _ptr(norm), _ptr(act), _ptr(width), G, B, W, eps, _ptr(gz), _ptr(gbias),
        _ptr(gg) if has_norm else None, _ptr(gb) if has_norm else None,
    )
    return gz, gbias, gg, gb


@group_layer_backward.register_fake
def _(grad_h, z, d, bias, gamma, beta, bn_mean, bn_var, ln_mean, ln_rstd, drop_key, drop_thr, drop_scale, norm, act, width, eps):
    return _backward_outputs(z, gamma is not None)


def _setup_context(ctx, inputs, output):
    z, bias, gamma, beta, drop_key, drop_thr, drop_scale, norm, act, width, eps, store_slope = inputs
    h, d, bn_mean, bn_var, ln_mean, ln_rstd = output
    ctx.save_for_backward(z, d, bias, gamma, beta, bn_mean, bn_var, ln_mean, ln_rstd, drop_key, drop_thr, drop_scale, norm, act, width)
    ctx.eps = eps
    ctx.has_norm = gamma is not None


def _backward(ctx, grad_h, *_):
    gz, gbias, gg, gb = group_layer_backward(grad_h, *ctx.saved_tensors, ctx.eps)
    if not ctx.has_norm:
        gg = gb = None
    return gz, gbias, gg, gb, None, None, None, None, None, None, None, None


group_layer.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# the whole-step kernel (kernels/group_step.cpp)
# --------------------------------------------------------------------------------------------------
_L = MAX_LAYERS + 1
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


class GroupPlan(ctypes.Structure):
    """A group's layout and per-model plan for :func:`group_step` (``GroupPlan`` in group_step.cpp)."""

    _fields_ = [
        ("G", _I64), ("F", _I64), ("O", _I64), ("D", _I64), ("eps", ctypes.c_float),
        ("W", _I64 * _L), ("K", _I64 * _L),
        ("off_w", _I64 * _L), ("off_b", _I64 * _L), ("off_g", _I64 * _L), ("off_n", _I64 * _L),
        ("off_wout", _I64), ("off_bout", _I64),
        ("nblk", _I64 * _L), ("blk_src", (_I64 * MAX_BLOCKS) * _L), ("blk_row", (_I64 * MAX_BLOCKS) * _L),
        ("depth", _PTR), ("rw", _PTR), ("blk_used", _PTR), ("norm", _PTR), ("act", _PTR),
        ("drop_base", _PTR), ("drop_thr", _PTR), ("drop_scale", _PTR), ("seg", _PTR), ("seg_ptr", _PTR),
        ("running_mean", _PTR * _L), ("running_var", _PTR * _L),
    ]


class GroupState(ctypes.Structure):
    """Pointers to a group's parameter, gradient and AdamW buffers and per-model hyper-parameters."""

    _fields_ = [("flat", _PTR), ("grad", _PTR), ("exp_avg", _PTR), ("exp_avg_sq", _PTR), ("lr", _PTR),
                ("decay", _PTR), ("alive", _PTR)]


def group_step(plan: GroupPlan, state: GroupState, x: torch.Tensor, y: torch.Tensor, step: int, scale: float,
               eps_term: float) -> torch.Tensor:
    """One training step of every live model of a group (forward, loss, backward, AdamW), model by model
    at its real size; ``x`` ``(G, B, F)`` float32 and ``y`` ``(G, B)`` int64, contiguous. Returns each
    model's mean loss ``(G,)``; a model whose loss is not finite was left as it was."""
    want = (plan.G, y.shape[1] if y.dim() == 2 else -1, plan.F)
    if x.dtype != torch.float32 or tuple(x.shape) != want or not x.is_contiguous():
        raise ValueError(f"group_step expects x as a contiguous float32 (G, B, F) = {want} tensor, got {x.dtype} {tuple(x.shape)}")
    if y.dtype != torch.int64 or tuple(y.shape) != want[:2] or not y.is_contiguous() or want[1] < 2:
        raise ValueError(f"group_step expects y as a contiguous int64 (G, B) tensor with B >= 2, got {y.dtype} {tuple(y.shape)}")
    if plan.O > 2 and bool(((y < 0) | (y >= plan.O)).any()):  # the kernel indexes the logits by label
        raise ValueError(f"group_step expects labels in [0, {plan.O}), got {int(y.min())}..{int(y.max())}")
    loss = torch.empty(plan.G)
    _library().hubedit_group_step(
        ctypes.addressof(plan), ctypes.addressof(state), x.data_ptr(), y.data_ptr(), y.shape[1], step, scale, eps_term,
        loss.data_ptr(),
    )
    return loss
