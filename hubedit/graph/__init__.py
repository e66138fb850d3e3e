"""MLP <-> parameter graph (torch_geometric ``Data``/``Batch``) with an exact round trip.

See :mod:`hubedit.graph.encoding` for the node/edge features and positional / functional encodings.
"""

from .build import graph_configs, graph_offsets, graphs_to_batch, mlp_to_graph, mlps_to_batch
from .encoding import EDITABLE_COLUMNS, NODE_COLUMNS, NODE_FEATURES, node_type_ids, num_node_types
from .functional import functional_forward
from .layout import GraphLayout, graph_layout
from .symmetry import graph_permutation, permute_hidden, random_hidden_permutations
from .writeback import batch_to_mlps, graph_to_mlp

__all__ = [
    "mlp_to_graph",
    "mlps_to_batch",
    "graphs_to_batch",
    "graph_to_mlp",
    "batch_to_mlps",
    "functional_forward",
    "graph_configs",
    "graph_offsets",
    "graph_layout",
    "GraphLayout",
    "node_type_ids",
    "num_node_types",
    "NODE_COLUMNS",
    "NODE_FEATURES",
    "EDITABLE_COLUMNS",
    "permute_hidden",
    "random_hidden_permutations",
    "graph_permutation",
]
