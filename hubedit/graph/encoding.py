"""The encoding scheme of parameter graphs: feature columns, node/edge kinds, type ids.

Graph of an MLP with widths ``(n_in, h_1, ..., h_d, n_out)``
-------------------------------------------------------------
* **Nodes**, one per neuron, layer by layer: input neurons (layer 0), hidden layers ``1..d``,
  output neurons (layer ``d + 1``). Node features ``x`` (``N x NODE_FEATURES``), columns
  :data:`NODE_COLUMNS`: ``bias`` (of the neuron's linear map; hidden and output neurons),
  ``norm_weight``/``norm_bias`` (per-neuron affine of BatchNorm/LayerNorm; hidden neurons of normalised
  models), ``running_mean``/``running_var`` (BatchNorm statistics). Absent entries are 0 and
  ``x_mask`` (bool, same shape) says which are present. Input neurons carry no parameters (all absent).
* **Edges**, one per weight, ``src -> dst`` in the direction of computation. For each destination layer
  the incoming weights of that layer (the linear map from the previous layer, then the skip maps in
  increasing source layer) form one matrix ``[W_l | S_{s1->l} | S_{s2->l} ...]`` of shape
  ``(h_l, in_total)``; its row-major flattening is the edge order. Edges are therefore sorted by
  destination node, and every weight tensor is a contiguous, reshape-able block (write-back is slicing).
  ``edge_attr`` (``E x 1``) holds the weight, ``edge_kind`` is :data:`LINEAR` or :data:`SKIP`.

Positional encodings (which symmetries are broken)
--------------------------------------------------
Only hidden neurons of one layer may be permuted among themselves. Type ids, relative to the *task*
(``max_in`` input features, ``max_out`` classes) so that all MLPs of one task share input/output types:

====================  =============================================
node                  node type id
====================  =============================================
input neuron ``i``    ``i``                         (``0 .. max_in - 1``)
output neuron ``j``   ``max_in + j``
hidden layer ``l``    ``max_in + max_out + (l - 1)``  (all neurons of the layer share it; ``l <= max_depth``)
====================  =============================================

Edges get the factorised encoding ``E_src[type(src)] + E_dst[type(dst)] + E_kind[kind]``: an edge out of
input neuron ``i`` is tied to ``i`` and to its destination layer, an edge into output neuron ``j`` to ``j``,
an edge between hidden layers to the pair ``(src layer, dst layer)``, and linear and skip edges differ by
kind. Every quantity is invariant to permutations of hidden neurons, so a network using only these ids
(and sums over neighbours) is permutation-equivariant.

Functional encodings: hidden nodes carry ``node_act = 1 + ACTIVATIONS.index(activation)`` and
``node_norm = 1 + NORMS.index(norm)``; input and output nodes carry 0 in both (linear, no norm).
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedArchitectureError
from ..mlp.config import ACTIVATIONS, NORMS

NODE_COLUMNS = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
NODE_FEATURES = len(NODE_COLUMNS)
COL_BIAS, COL_NORM_WEIGHT, COL_NORM_BIAS, COL_RUNNING_MEAN, COL_RUNNING_VAR = range(NODE_FEATURES)
#: node columns an editor may change (running statistics are kept as they are)
EDITABLE_COLUMNS = (COL_BIAS, COL_NORM_WEIGHT, COL_NORM_BIAS)

# node kinds
INPUT, HIDDEN, OUTPUT = 0, 1, 2
# edge kinds
LINEAR, SKIP = 0, 1
N_EDGE_KINDS = 2

#: number of functional ids (0 = not a hidden node)
N_ACT_IDS = len(ACTIVATIONS) + 1
N_NORM_IDS = len(NORMS) + 1


def act_id(name: str) -> int:
    """Functional id of an activation (hidden nodes); 0 is reserved for "no activation"."""
    return 1 + ACTIVATIONS.index(name)


def norm_id(name: str) -> int:
    """Functional id of a normalisation (hidden nodes); 0 is reserved for "not a hidden node"."""
    return 1 + NORMS.index(name)


def num_node_types(max_in: int, max_out: int, max_depth: int) -> int:
    return max_in + max_out + max_depth


def node_type_ids(
    node_kind: torch.Tensor, node_layer: torch.Tensor, node_pos: torch.Tensor, max_in: int, max_out: int, max_depth: int
) -> torch.Tensor:
    """Node type ids of the scheme above (a ``LongTensor`` like ``node_kind``).

    Raises :class:`UnsupportedArchitectureError` when a graph has more input features, classes or hidden
    layers than the ids cover.
    """
    is_in, is_out = node_kind == INPUT, node_kind == OUTPUT
    hidden_id = max_in + max_out + node_layer - 1
    types = torch.where(is_in, node_pos, torch.where(is_out, max_in + node_pos, hidden_id))
    if node_kind.numel():
        bad_in = bool((is_in & (node_pos >= max_in)).any())
        bad_out = bool((is_out & (node_pos >= max_out)).any())
        bad_depth = bool(((node_kind == HIDDEN) & (node_layer > max_depth)).any())
        if bad_in or bad_out or bad_depth:
            raise UnsupportedArchitectureError(
                "graph exceeds the metanetwork's positional encodings: expected at most "
                f"{max_in} input features, {max_out} classes and {max_depth} hidden layers, got a graph with "
                f"{int(node_pos[is_in].max()) + 1 if bool(is_in.any()) else 0} inputs, "
                f"{int(node_pos[is_out].max()) + 1 if bool(is_out.any()) else 0} outputs, "
                f"{int(node_layer[node_kind == HIDDEN].max()) if bool((node_kind == HIDDEN).any()) else 0} hidden layers"
            )
    return types
