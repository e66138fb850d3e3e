"""The C++ kernels of parameter graphs (``kernels/saliency.cpp``: the calibration features' saliency passes;
``kernels/refit.cpp``: the layer-wise refit), built into one library by :mod:`hubedit.native`, and the per-model
plans they read (``kernels/mlp_plan.h`` describes the layout). Each caller runs its torch formulation where
:func:`library` is None (``HUBEDIT_FUSED_KERNELS=0``, no C++ compiler, a failed build)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from .. import native
from ..mlp.config import MLPConfig
from ..native import compiler as _compiler  # a module global, so that tests can replace it
from .layout import graph_layout

_KERNELS = Path(__file__).with_name("kernels")
SOURCES = (_KERNELS / "saliency.cpp", _KERNELS / "refit.cpp")
#: the headers they include (part of the build's cache key)
HEADERS = (_KERNELS / "mlp_plan.h", *(Path(__file__).parents[1] / "zoo" / "kernels" / h for h in ("layer_kernels.h", "gemm.h")))


#: False runs the torch formulations even where the kernels are built (for comparisons: scripts/bench_edit.py)
USE = True


def library() -> ctypes.CDLL | None:
    """The loaded library, or None (see the module docstring, and :data:`USE`)."""
    return _load() if USE else None


@functools.cache
def _load() -> ctypes.CDLL | None:
    lib = native.load_or_warn("graph kernels (saliency, refit)", "graph_kernels", _compiler() if native.enabled() else None,
                              SOURCES, HEADERS, ["-pthread", "-lmvec", "-lm"])
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.hubedit_saliency_features.argtypes = [i64, p, p, p, p, i64, i64, p, p, i64, p, p, p, p, p, i64]
    lib.hubedit_saliency_features.restype = ctypes.c_int
    lib.hubedit_refit_variants.argtypes = [i64, p, p, p, p, i64, i64, p, p, p, p, p, ctypes.c_double, i64, p,
                                           i64, i64, i64, p, p, p, p, p, p, i64]
    lib.hubedit_refit_variants.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernels are built and loaded here (``HUBEDIT_FUSED_KERNELS=0`` turns them off)."""
    return library() is not None


@functools.lru_cache(maxsize=4096)
def _config_plan(cfg: MLPConfig) -> tuple[int, ...]:
    """The plan of one config, without the model's two offsets (``kernels/mlp_plan.h``)."""
    lay = graph_layout(cfg)
    plan = [cfg.depth, native.ACT_CODES[cfg.activation], native.NORM_CODES[cfg.norm], len(lay.blocks)]
    for block in lay.blocks:
        plan += [block.start, block.rows, block.cols, lay.layer_offsets[block.dst], len(block.parts)]
        for part in block.parts:
            plan += [part.src, part.col_start, part.col_stop]
    return tuple(plan)


def model_plans(configs: list[MLPConfig], node_off: list[int], edge_off: list[int],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(plans, where each model's plan starts, norm epsilon per model)`` of a batch (``graph_offsets``)."""
    plan, starts = [], []
    for cfg, eo, no in zip(configs, edge_off, node_off):
        starts.append(len(plan))
        plan += [eo, no, *_config_plan(cfg)]
    return (torch.tensor(plan, dtype=torch.int64), torch.tensor(starts, dtype=torch.int64),
            torch.tensor([c.norm_eps for c in configs], dtype=torch.float32))


def check_rc(rc: int, what: str) -> None:
    """Raise MemoryError for a kernel's -2 (buffers or threads)."""
    if rc == -2:
        raise MemoryError(f"{what}: could not allocate its buffers or start {torch.get_num_threads()} threads; "
                          "set fewer torch threads or use smaller batches")
