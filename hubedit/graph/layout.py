"""Structure of the parameter graph of one :class:`MLPConfig`, computed once per config and cached.

Everything that depends only on the architecture (edge index, kinds, layer ids, presence masks, where
each weight tensor sits in the edge order) lives here, so that building a graph from a model is a few
concatenations of its tensors and writing back is slicing: no Python loop ever runs over weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..mlp.config import MLPConfig
from ..mlp.module import skip_key
from .encoding import (
    COL_BIAS,
    COL_NORM_BIAS,
    COL_NORM_WEIGHT,
    COL_RUNNING_MEAN,
    COL_RUNNING_VAR,
    HIDDEN,
    INPUT,
    LINEAR,
    NODE_FEATURES,
    OUTPUT,
    SKIP,
    act_id,
    norm_id,
)


@dataclass(frozen=True)
class Part:
    """One weight tensor inside a destination block: parameter name, source layer, column range."""

    name: str
    src: int
    col_start: int
    col_stop: int


@dataclass(frozen=True)
class Block:
    """All weights into hidden/output layer ``dst``: a ``(rows, cols)`` matrix at edge offset ``start``."""

    dst: int
    start: int
    rows: int
    cols: int
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def srcs(self) -> tuple[int, ...]:
        return tuple(p.src for p in self.parts)


@dataclass(frozen=True, eq=False)
class GraphLayout:
    """The cached structure of the graph of one config (tensors are shared: never modify them in place)."""

    config: MLPConfig
    config_json: str
    n_nodes: int
    n_edges: int
    layer_offsets: tuple[int, ...]  # node offset of layer 0..depth+1, then n_nodes
    blocks: tuple[Block, ...]  # one per destination layer 1..depth+1
    edge_index: torch.Tensor
    edge_kind: torch.Tensor
    node_kind: torch.Tensor
    node_layer: torch.Tensor
    node_pos: torch.Tensor
    node_act: torch.Tensor
    node_norm: torch.Tensor
    node_fan_in: torch.Tensor
    x_mask: torch.Tensor

    @property
    def hidden_slice(self) -> slice:
        return slice(self.layer_offsets[1], self.layer_offsets[-2])


@functools.lru_cache(maxsize=8192)
def graph_layout(config: MLPConfig) -> GraphLayout:
    """The (cached) :class:`GraphLayout` of ``config``."""
    widths = config.widths
    depth = config.depth
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    n_nodes = offsets[-1]

    blocks: list[Block] = []
    src_chunks, dst_chunks, kind_chunks = [], [], []
    start = 0
    for dst in range(1, depth + 2):
        sources = [(dst - 1, f"layers.{dst - 1}.weight", LINEAR)]
        if dst <= depth:
            sources += [(s, f"skips.{skip_key(s, dst)}.weight", SKIP) for s in config.skips_into(dst)]
        parts, col = [], 0
        col_src, col_kind = [], []
        for s, name, kind in sources:
            parts.append(Part(name, s, col, col + widths[s]))
            col += widths[s]
            col_src.append(torch.arange(offsets[s], offsets[s] + widths[s]))
            col_kind.append(torch.full((widths[s],), kind, dtype=torch.long))
        rows = widths[dst]
        blocks.append(Block(dst, start, rows, col, tuple(parts)))
        start += rows * col
        src_chunks.append(torch.cat(col_src).repeat(rows))
        kind_chunks.append(torch.cat(col_kind).repeat(rows))
        dst_chunks.append(torch.arange(offsets[dst], offsets[dst] + rows).repeat_interleave(col))
    edge_index = torch.stack([torch.cat(src_chunks), torch.cat(dst_chunks)])
    edge_kind = torch.cat(kind_chunks)

    layer_of_node = torch.repeat_interleave(torch.arange(depth + 2), torch.tensor(widths))
    node_pos = torch.cat([torch.arange(w) for w in widths])
    node_kind = torch.full((n_nodes,), HIDDEN, dtype=torch.long)
    node_kind[: widths[0]] = INPUT
    node_kind[offsets[depth + 1] :] = OUTPUT
    hidden = node_kind == HIDDEN
    node_act = torch.where(hidden, act_id(config.activation), 0)
    node_norm = torch.where(hidden, norm_id(config.norm), 0)
    node_fan_in = torch.bincount(edge_index[1], minlength=n_nodes)

    x_mask = torch.zeros(n_nodes, NODE_FEATURES, dtype=torch.bool)
    x_mask[widths[0] :, COL_BIAS] = True
    if config.norm != "none":
        x_mask[hidden, COL_NORM_WEIGHT] = True
        x_mask[hidden, COL_NORM_BIAS] = True
    if config.norm == "batchnorm":
        x_mask[hidden, COL_RUNNING_MEAN] = True
        x_mask[hidden, COL_RUNNING_VAR] = True

    return GraphLayout(
        config=config,
        config_json=config.to_json(),
        n_nodes=n_nodes,
        n_edges=start,
        layer_offsets=tuple(offsets),
        blocks=tuple(blocks),
        edge_index=edge_index,
        edge_kind=edge_kind,
        node_kind=node_kind,
        node_layer=layer_of_node,
        node_pos=node_pos,
        node_act=node_act,
        node_norm=node_norm,
        node_fan_in=node_fan_in,
        x_mask=x_mask,
    )


@functools.lru_cache(maxsize=8192)
def config_from_json(text: str) -> MLPConfig:
    """Parse (and cache) the config JSON stored in a graph."""
    return MLPConfig.from_json(text)
