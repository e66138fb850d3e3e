"""The graph metanetwork: a bidirectional permutation-equivariant GNN that edits parameter graphs."""

from .layers import BidirectionalLayer
from .model import EditOutput, GraphMetanetwork

__all__ = ["GraphMetanetwork", "EditOutput", "BidirectionalLayer"]
