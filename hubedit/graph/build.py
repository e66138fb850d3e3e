"""MLP -> parameter graph (torch_geometric ``Data``), and batching of graphs of different architectures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_geometric.data import Batch, Data

from ..errors import UnsupportedArchitectureError
from ..mlp.config import MLPConfig
from ..mlp.module import MLP
from .encoding import COL_BIAS, COL_NORM_BIAS, COL_NORM_WEIGHT, COL_RUNNING_MEAN, COL_RUNNING_VAR, NODE_FEATURES
from .layout import GraphLayout, config_from_json, graph_layout

#: per-node / per-edge attributes every parameter graph carries (besides ``edge_index``)
NODE_KEYS = ("x", "x_mask", "node_kind", "node_layer", "node_pos", "node_act", "node_norm", "node_fan_in", "node_bn_steps")
EDGE_KEYS = ("edge_attr", "edge_kind")


def _check_model(model: object) -> MLP:
    if not isinstance(model, MLP):
        raise UnsupportedArchitectureError(
            f"expected a hubedit.MLP, got {type(model).__name__}; import other models with MLP.from_torch / "
            "MLP.from_sklearn first"
        )
    return model


@torch.no_grad()
def _edge_values(model: MLP, lay: GraphLayout) -> torch.Tensor:
    """All weights of ``model`` in the layout's edge order (one flat tensor)."""
    chunks = []
    for block in lay.blocks:
        mats = [model.get_parameter(p.name) for p in block.parts]
        chunks.append((mats[0] if len(mats) == 1 else torch.cat(mats, dim=1)).reshape(-1))
    return torch.cat(chunks)


@torch.no_grad()
def _node_values(model: MLP, lay: GraphLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Node feature matrix (``N x NODE_FEATURES``) and per-node BatchNorm step counters."""
    ref = model.layers[0].weight
    n_in = lay.layer_offsets[1]
    x = torch.zeros(lay.n_nodes, NODE_FEATURES, dtype=ref.dtype, device=ref.device)
    x[n_in:, COL_BIAS] = torch.cat([layer.bias for layer in model.layers])
    steps = torch.zeros(lay.n_nodes, dtype=torch.long, device=ref.device)
    norm = model.config.norm
    if norm != "none":
        hid = lay.hidden_slice
        x[hid, COL_NORM_WEIGHT] = torch.cat([n.weight for n in model.norms])
        x[hid, COL_NORM_BIAS] = torch.cat([n.bias for n in model.norms])
        if norm == "batchnorm":
            x[hid, COL_RUNNING_MEAN] = torch.cat([n.running_mean for n in model.norms])
            x[hid, COL_RUNNING_VAR] = torch.cat([n.running_var for n in model.norms])
            counts = torch.stack([n.num_batches_tracked for n in model.norms]).to(ref.device)
            steps[hid] = counts.repeat_interleave(torch.tensor(model.config.hidden, device=ref.device))
    return x, steps


def mlp_to_graph(model: MLP) -> Data:
    """The parameter graph of ``model`` (see :mod:`hubedit.graph.encoding` for the scheme).

    Returns a ``torch_geometric.data.Data`` with ``x`` (N x 5 node features), ``x_mask`` (which are
    present), ``edge_index`` (2 x E), ``edge_attr`` (E x 1 weights), ``edge_kind``, ``node_kind``,
    ``node_layer``, ``node_pos``, ``node_act``, ``node_norm``, ``node_fan_in``, ``node_bn_steps`` and
    ``config_json`` (the :class:`MLPConfig`). Values are detached copies on the model's device/dtype.
    """
    model = _check_model(model)
    lay = graph_layout(model.config)
    x, steps = _node_values(model, lay)
    dev = x.device
    return Data(
        x=x,
        x_mask=lay.x_mask.to(dev, copy=True),
        edge_index=lay.edge_index.to(dev, copy=True),
        edge_attr=_edge_values(model, lay).unsqueeze(1),
        edge_kind=lay.edge_kind.to(dev, copy=True),
        node_kind=lay.node_kind.to(dev, copy=True),
        node_layer=lay.node_layer.to(dev, copy=True),
        node_pos=lay.node_pos.to(dev, copy=True),
        node_act=lay.node_act.to(dev, copy=True),
        node_norm=lay.node_norm.to(dev, copy=True),
        node_fan_in=lay.node_fan_in.to(dev, copy=True),
        node_bn_steps=steps,
        config_json=lay.config_json,
        num_nodes=lay.n_nodes,
    )


def graphs_to_batch(graphs: Sequence[Data]) -> Batch:
    """Batch parameter graphs (of any architectures) with ``torch_geometric``'s collation."""
    if not len(graphs):
        raise ValueError("expected at least one graph to batch, got none")
    return Batch.from_data_list(list(graphs))


def mlps_to_batch(models: Sequence[MLP]) -> Batch:
    """One ``Batch`` holding the graphs of ``models`` (architectures may differ).

    Equivalent to ``graphs_to_batch([mlp_to_graph(m) for m in models])`` but built directly from the
    cached layouts: structure tensors are concatenated with offsets, never per weight.
    """
    if isinstance(models, MLP):
        models = [models]
    models = [_check_model(m) for m in models]
    if not models:
        raise ValueError("expected at least one model to batch, got none")
    lays = [graph_layout(m.config) for m in models]
    xs, steps = zip(*(_node_values(m, lay) for m, lay in zip(models, lays)))
    dev = xs[0].device
    edge_vals = [_edge_values(m, lay) for m, lay in zip(models, lays)]
    n_nodes = torch.tensor([lay.n_nodes for lay in lays])
    n_edges = torch.tensor([lay.n_edges for lay in lays])
    node_ptr = torch.zeros(len(models) + 1, dtype=torch.long)
    node_ptr[1:] = torch.cumsum(n_nodes, 0)
    edge_ptr = torch.zeros(len(models) + 1, dtype=torch.long)
    edge_ptr[1:] = torch.cumsum(n_edges, 0)
    # the structure tensors of each distinct layout are reused; offsets are added in one go
    edge_index = torch.cat([lay.edge_index for lay in lays], dim=1)
    edge_index += torch.repeat_interleave(node_ptr[:-1], n_edges).unsqueeze(0)
    fields = {
        "x": torch.cat(xs),
        "edge_index": edge_index.to(dev),
        "edge_attr": torch.cat(edge_vals).unsqueeze(1),
        "node_bn_steps": torch.cat(steps),
    }
    for key in ("x_mask", "node_kind", "node_layer", "node_pos", "node_act", "node_norm", "node_fan_in"):
        fields[key] = torch.cat([getattr(lay, key) for lay in lays]).to(dev)
    fields["edge_kind"] = torch.cat([lay.edge_kind for lay in lays]).to(dev)
    batch_vec = torch.repeat_interleave(torch.arange(len(models)), n_nodes).to(dev)
    batch = Batch(
        batch=batch_vec,
        ptr=node_ptr.to(dev),
        config_json=[lay.config_json for lay in lays],
        num_nodes=int(node_ptr[-1]),
        **fields,
    )
    # book-keeping that lets ``Batch.get_example`` / ``to_data_list`` split it like a collated batch
    slices = {key: node_ptr for key in (*NODE_KEYS,)}
    slices.update({key: edge_ptr for key in (*EDGE_KEYS, "edge_index")})
    slices["config_json"] = torch.arange(len(models) + 1)
    incs = {key: torch.zeros(len(models), dtype=torch.long) for key in slices}
    incs["edge_index"] = node_ptr[:-1]
    incs["config_json"] = None
    batch._slice_dict = slices
    batch._inc_dict = incs
    batch._num_graphs = len(models)
    return batch


def graph_configs(data: Data) -> list[MLPConfig]:
    """The :class:`MLPConfig` of every graph in ``data`` (a ``Data`` or a ``Batch``), in order."""
    cj = data.config_json
    if isinstance(cj, str):
        return [config_from_json(cj)]
    return [config_from_json(c) for c in cj]


def graph_offsets(data: Data) -> tuple[list[MLPConfig], list[int], list[int]]:
    """Configs and node / edge start offsets of each graph in ``data`` (derived from the layouts).

    Also checks that the totals match the tensors, so a graph whose structure was changed is refused.
    """
    configs = graph_configs(data)
    node_off, edge_off = [0], [0]
    for c in configs:
        lay = graph_layout(c)
        node_off.append(node_off[-1] + lay.n_nodes)
        edge_off.append(edge_off[-1] + lay.n_edges)
    if node_off[-1] != data.num_nodes or edge_off[-1] != data.edge_index.shape[1]:
        raise UnsupportedArchitectureError(
            f"graph does not match its configs: configs need {node_off[-1]} nodes and {edge_off[-1]} edges, "
            f"graph has {data.num_nodes} nodes and {data.edge_index.shape[1]} edges"
        )
    return configs, node_off, edge_off
