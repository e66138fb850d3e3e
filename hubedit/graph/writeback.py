"""Parameter graph -> MLP modules: exact write-back of (edited) node and edge values."""

from __future__ import annotations

import functools
import gc

import torch
from torch import nn
from torch_geometric.data import Data

from ..mlp.config import MLPConfig
from ..mlp.module import MLP
from .build import graph_offsets
from .encoding import COL_BIAS, COL_NORM_BIAS, COL_NORM_WEIGHT, COL_RUNNING_MEAN, COL_RUNNING_VAR, NODE_FEATURES
from .layout import graph_layout


def _values(data: Data, edge_values: torch.Tensor | None, node_values: torch.Tensor | None):
    ev = data.edge_attr if edge_values is None else edge_values
    nv = data.x if node_values is None else node_values
    ev = ev.reshape(-1)
    if ev.numel() != data.edge_index.shape[1]:
        raise ValueError(f"expected {data.edge_index.shape[1]} edge values, got {ev.numel()}")
    if nv.shape != (data.num_nodes, NODE_FEATURES):
        raise ValueError(f"expected node values of shape {(data.num_nodes, NODE_FEATURES)}, got {tuple(nv.shape)}")
    return ev.detach(), nv.detach()


@functools.lru_cache(maxsize=1024)
def _template(config: MLPConfig) -> MLP:
    return MLP(config).eval()


def _clone_module(module: nn.Module, values: dict[str, torch.Tensor], prefix: str = "") -> nn.Module:
    """A new module with ``module``'s structure and attributes, its tensors taken from ``values``.

    Rebuilding a module by its constructor runs the default initialisation and much ``nn.Module``
    machinery per submodule; cloning a constructed template is about three times faster. Containers in
    the instance dict (hooks, parameter/buffer/module dicts) are copied, so nothing is shared.
    """
    new = object.__new__(type(module))
    state = {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in module.__dict__.items()}
    state["_parameters"] = {
        name: None if p is None else nn.Parameter(values[prefix + name], requires_grad=p.requires_grad)
        for name, p in module._parameters.items()
    }
    state["_buffers"] = {name: None if b is None else values[prefix + name] for name, b in module._buffers.items()}
    state["_modules"] = {
        name: None if child is None else _clone_module(child, values, f"{prefix}{name}.")
        for name, child in module._modules.items()
    }
    new.__dict__.update(state)
    return new


def _contiguous_copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


@torch.no_grad()
def _write_one(config: MLPConfig, ev: torch.Tensor, nv: torch.Tensor, steps: torch.Tensor | None) -> MLP:
    lay = graph_layout(config)
    values: dict[str, torch.Tensor] = {}
    for block in lay.blocks:
        mat = ev[block.start : block.start + block.size].view(block.rows, block.cols)
        for part in block.parts:
            values[part.name] = _contiguous_copy(mat[:, part.col_start : part.col_stop])
    cols = nv.t().contiguous()  # one row per feature: every per-layer slice below is contiguous
    offs = lay.layer_offsets
    for i in range(config.depth + 1):
        values[f"layers.{i}.bias"] = cols[COL_BIAS, offs[i + 1] : offs[i + 2]].clone()
    if config.norm != "none":
        for i in range(config.depth):
            rows = slice(offs[i + 1], offs[i + 2])
            values[f"norms.{i}.weight"] = cols[COL_NORM_WEIGHT, rows].clone()
            values[f"norms.{i}.bias"] = cols[COL_NORM_BIAS, rows].clone()
            if config.norm == "batchnorm":
                values[f"norms.{i}.running_mean"] = cols[COL_RUNNING_MEAN, rows].clone()
                values[f"norms.{i}.running_var"] = cols[COL_RUNNING_VAR, rows].clone()
                count = steps[offs[i + 1]] if steps is not None else torch.zeros((), dtype=torch.long)
                values[f"norms.{i}.num_batches_tracked"] = count.to(device=ev.device, dtype=torch.long, copy=True)
    return _clone_module(_template(config), values)


def batch_to_mlps(
    data: Data, edge_values: torch.Tensor | None = None, node_values: torch.Tensor | None = None
) -> list[MLP]:
    """Write the graphs of ``data`` (a ``Batch`` or a single ``Data``) back into :class:`MLP` modules.

    ``edge_values`` (``E`` or ``E x 1``) and ``node_values`` (``N x 5``) replace ``data.edge_attr`` /
    ``data.x`` when given (e.g. an editor's output); they are detached and copied. Each model is rebuilt
    from the config stored in the graph and returned in eval mode; weights are sliced from the flat
    values tensor per weight *tensor* (no loop over weights). An unedited round trip is bit-exact.
    """
    configs, node_off, edge_off = graph_offsets(data)
    ev, nv = _values(data, edge_values, node_values)
    steps = getattr(data, "node_bn_steps", None)
    models = []
    # thousands of small containers are created here: keep the cyclic garbage collector from running
    # (a full collection can take longer than the whole write-back); only fresh, acyclic objects are made
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for g, cfg in enumerate(configs):
            models.append(
                _write_one(
                    cfg,
                    ev[edge_off[g] : edge_off[g + 1]],
                    nv[node_off[g] : node_off[g + 1]],
                    None if steps is None else steps[node_off[g] : node_off[g + 1]],
                )
            )
    finally:
        if gc_was_enabled:
            gc.enable()
    return models


def graph_to_mlp(data: Data, edge_values: torch.Tensor | None = None, node_values: torch.Tensor | None = None) -> MLP:
    """Write a single graph back into an :class:`MLP` (see :func:`batch_to_mlps`)."""
    models = batch_to_mlps(data, edge_values, node_values)
    if len(models) != 1:
        raise ValueError(f"expected a graph of one model, got a batch of {len(models)}; use batch_to_mlps")
    return models[0]
