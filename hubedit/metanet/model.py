"""``GraphMetanetwork``: the editor network. Parameter graph in, edited parameters and masks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.data import Data

from ..graph.build import mlps_to_batch
from ..graph.calibration import (
    calibration_feature_count,
    calibration_features,
    input_saliency,
    permutation_importance,
)
from ..graph.encoding import (
    COL_BIAS,
    COL_RUNNING_MEAN,
    COL_RUNNING_VAR,
    EDITABLE_COLUMNS,
    INPUT,
    N_ACT_IDS,
    N_NORM_IDS,
    NODE_FEATURES,
    node_type_ids,
    num_node_types,
)
from ..graph.writeback import batch_to_mlps
from ..mlp.module import MLP
from .layers import BidirectionalLayer, EdgeWorkspace, activation_, make_activation


@dataclass
class EditOutput:
    """What a :class:`GraphMetanetwork` returns for a batch of parameter graphs.

    Attributes:
        edge_values: edited weights ``theta' = theta + sum_l alpha_l * Delta_l / sqrt(fan_in)`` (``E``), in
            the dtype of the graph's values.
        node_values: edited node features (``N x 5``); only the editable columns (bias, norm weight and
            bias, where present) change, running statistics and absent entries are passed through.
        edge_logits: edge-classification logits (``E x mask_classes``), e.g. for pruning masks, or None.
        input_node_logits: node-classification logits of the input nodes (``N_in x mask_classes``, in node
            order, i.e. ``(M * F) x C`` for ``M`` models of ``F`` inputs), e.g. for data minimisation; or None.
        input_node_index: node ids of those input nodes (``N_in``).
    """

    edge_values: torch.Tensor
    node_values: torch.Tensor
    edge_logits: torch.Tensor | None
    input_node_logits: torch.Tensor | None
    input_node_index: torch.Tensor


def _mlp(d_in: int, d_hidden: int, d_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), make_activation(activation), nn.Linear(d_hidden, d_out))


def _raise_keep_logit(logits: torch.Tensor, bump: torch.Tensor) -> torch.Tensor:
    """``logits`` (``n x classes``) with ``bump`` (``n``) added to the keep logit (the last class)."""
    return torch.cat([logits[:, :-1], logits[:, -1:] + bump.unsqueeze(1)], dim=1)


def _symlog(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.log1p(t.abs())


class GraphMetanetwork(nn.Module):
    """Bidirectional permutation-equivariant graph metanetwork with residual edit heads.

    Args:
        hidden: node representation width.
        layers: number of :class:`BidirectionalLayer` s.
        max_in: input features covered by the positional encodings (the task's feature count or more).
        max_out: output classes covered by the positional encodings.
        max_depth: hidden layers covered by the positional encodings.
        edge_hidden: edge representation width, also the hidden width of the per-edge MLPs (default
            ``max(8, hidden // 2)``). Edges outnumber nodes 20-30 times in MLP graphs, so this sets the
            cost: 64 instead of 32 is about 2.5x slower (``scripts/bench_edit.py``).
        activation: nonlinearity inside the metanetwork.
        mask_classes: classes of the edge / input-node classification heads (2: drop, keep).
        alpha_init: initial value of the per-layer residual scales ``alpha_l``.
        node_norm: LayerNorm on nodes after each residual node update.
        edge_norm: LayerNorm on edges after each residual edge update (off by default: per-edge work
            dominates the cost, see ``scripts/bench_edit.py``).

    The residual heads are zero-initialised, so a fresh metanetwork returns its input parameters exactly.
    Inputs are normalised with fixed, permutation-invariant maps: weights and biases are multiplied by
    ``sqrt(fan_in)`` of their destination neuron, BatchNorm statistics go through ``symlog`` / ``log``;
    edits come back through the inverse scale (``Delta_w / sqrt(fan_in)``).
    """

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 4,
        *,
        max_in: int = 32,
        max_out: int = 8,
        max_depth: int = 8,
        edge_hidden: int | None = None,
        activation: str = "relu",
        mask_classes: int = 2,
        alpha_init: float = 0.01,
        node_norm: bool = True,
        edge_norm: bool = False,
        cond_dim: int = 0,
        film: bool = False,
        calibration: int = 0,
        calibration_rounds: int = 0,
        prior_masks: bool = False,
        feature_importance: bool = False,
    ):
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"expected hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        de = max(8, hidden // 2) if edge_hidden is None else edge_hidden
        if de < 1:
            raise ValueError(f"expected edge_hidden >= 1, got {edge_hidden}")
        self.config = {
            "hidden": hidden,
            "layers": layers,
            "max_in": max_in,
            "max_out": max_out,
            "max_depth": max_depth,
            "edge_hidden": de,
            "activation": activation,
            "mask_classes": mask_classes,
            "alpha_init": alpha_init,
            "node_norm": node_norm,
            "edge_norm": edge_norm,
            "cond_dim": cond_dim,
        }
        if film:  # recorded only when on, so that configs of editors without it stay as they were
            self.config["film"] = True
        if calibration < 0:
            raise ValueError(f"expected calibration >= 0 (points), got {calibration}")
        if calibration:
            self.config["calibration"] = calibration
        if calibration_rounds < 0 or (calibration_rounds and not calibration):
            raise ValueError(f"calibration_rounds needs a calibration batch and must be >= 0, got {calibration_rounds}")
        if calibration_rounds:
            self.config["calibration_rounds"] = calibration_rounds
        if prior_masks and not calibration:
            raise ValueError("prior_masks needs a calibration batch (the prior is computed from it)")
        if prior_masks:
            self.config["prior_masks"] = True
        if feature_importance and not calibration:
            raise ValueError("feature_importance needs a calibration batch")
        if feature_importance:
            self.config["feature_importance"] = True
        self.max_in, self.max_out, self.max_depth = max_in, max_out, max_depth
        n_types = num_node_types(max_in, max_out, max_depth)
        # INIT (paper eq. 20): an MLP over [features, positional, functional encodings]; the first linear
        # map of the one-hot parts is an embedding, added to the feature projection.
        self.node_feat = nn.Linear(2 * NODE_FEATURES, hidden)
        self.node_type_emb = nn.Embedding(n_types, hidden)
        self.node_act_emb = nn.Embedding(N_ACT_IDS, hidden)
        self.node_norm_emb = nn.Embedding(N_NORM_IDS, hidden)
        self.node_init = nn.Sequential(make_activation(activation), nn.Linear(hidden, hidden))
        # edges: [weight, kind] -> linear (kind has two values, so one 0/1 column is its one-hot code), plus
        # embeddings of the source and destination node types; the second linear map has no bias (every
        # use of e downstream is affine and absorbs it)
        # [scaled weight, kind (0 linear / 1 skip)] and, with a calibration batch, its per-weight features
        n_calib = calibration_feature_count(calibration_rounds) if calibration else 0
        self.edge_feat = nn.Linear(2 + n_calib, de)
        # the calibration inputs are part of the editor's state (saved with the weights): editing needs no data
        self.calibration_inputs: torch.Tensor | None
        self.register_buffer("calibration_inputs", torch.zeros(calibration, max_in) if calibration else None)
        # the keep logit starts from a saliency prior: the last round's mask and saliency with iterative rounds
        # (the editor starts as iterative SNIP on the model's own labels), else the one-shot saliency; learned
        if not calibration:
            self.calibration_prior = None
        else:
            prior = [0.0, 1.0] if not calibration_rounds else [0.0, 0.0, 4.0, 1.0]
            if prior_masks:  # masks from the fixed prior alone; the editor learns the edit of what is kept
                self.register_buffer("calibration_prior", torch.tensor(prior))
            else:
                self.calibration_prior = nn.Parameter(torch.tensor(prior))
            # and the keep logit of an input feature from its saliency: the (standardised) log of the summed
            # exp-standardised saliency of the weights leaving it (data minimisation)
            self.input_prior = nn.Parameter(torch.tensor(1.0))
        self.edge_src_emb = nn.Embedding(n_types, de)
        self.edge_dst_emb = nn.Embedding(n_types, de)
        self.edge_init = nn.Linear(de, de, bias=False)
        self._activation = activation

        self.layers = nn.ModuleList(
            BidirectionalLayer(hidden, de, activation, node_norm, edge_norm) for _ in range(layers)
        )
        # residual heads, one per layer, zero-initialised; theta' = theta + sum_l alpha_l * head_l(repr_l)
        self.edge_heads = nn.ModuleList(nn.Linear(de, 1) for _ in range(layers))
        self.node_heads = nn.ModuleList(nn.Linear(hidden, len(EDITABLE_COLUMNS)) for _ in range(layers))
        for head in [*self.edge_heads, *self.node_heads]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.alpha = nn.Parameter(torch.full((layers,), float(alpha_init)))
        # mask heads
        self.edge_classifier = _mlp(de, de, mask_classes, activation)
        self.input_classifier = _mlp(hidden, hidden, mask_classes, activation)
        # a fresh editor keeps everything: mask heads start at p(keep) = sigmoid(4) ~ 0.98
        for head in (self.edge_classifier, self.input_classifier):
            with torch.no_grad():
                head[-1].bias.copy_(torch.linspace(-2.0, 2.0, mask_classes))
        # optional per-graph conditioning input (e.g. log lambda of a lambda-conditioned editor), added to
        # every node's and every edge's initial representation of that graph (invariant to permutations)
        self.cond_dim = cond_dim
        if cond_dim:
            self.cond_node = nn.Linear(cond_dim, hidden)
            self.cond_edge = nn.Linear(cond_dim, de)
        # FiLM (Perez et al. 2018; as in "You Only Train Once"): the condition also scales and shifts the node
        # representations after every layer, so that no layer can ignore it; zero-initialised (identity)
        self.film = None
        if film:
            if not cond_dim:
                raise ValueError("film needs a conditioning input (cond_dim >= 1)")
            self.film = nn.ModuleList(nn.Linear(cond_dim, 2 * hidden) for _ in range(layers))
            for lin in self.film:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self._workspace: EdgeWorkspace | None = None  # buffers of the fused inference path (not state)

    def _modulate(self, i: int, h: torch.Tensor, data: Data, cond: torch.Tensor | None) -> torch.Tensor:
        """FiLM of layer ``i``: ``h * (1 + gamma(cond)) + beta(cond)`` per graph (identity without FiLM)."""
        if self.film is None:
            return h
        gamma, beta = self.film[i](cond.to(h.dtype)).chunk(2, dim=1)
        batch = getattr(data, "batch", None)
        if batch is not None:
            gamma, beta = gamma.index_select(0, batch), beta.index_select(0, batch)
        return h * (1 + gamma) + beta

    # --- encoding ------------------------------------------------------------------------------------
    def _node_condition(self, data: Data, cond: torch.Tensor | None, layer: nn.Linear) -> torch.Tensor | None:
        """The conditioning term of every node (``cond`` is ``(num_graphs, cond_dim)``)."""
        if not self.cond_dim:
            if cond is not None:
                raise ValueError("this metanetwork was built without a conditioning input (cond_dim=0)")
            return None
        n_graphs = int(getattr(data, "num_graphs", 1) or 1)
        if cond is None or cond.shape != (n_graphs, self.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"expected cond of shape ({n_graphs}, {self.cond_dim}), got {got}")
        batch = getattr(data, "batch", None)
        per_graph = layer(cond.to(self.alpha.dtype))
        if batch is None:
            return per_graph.expand(data.num_nodes, -1)
        return per_graph.index_select(0, batch)

    def _encode_nodes(self, data: Data, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Initial node representations, node type ids, and ``sqrt(fan_in)`` per node (the input scale)."""
        dtype = self.alpha.dtype
        x = data.x.to(dtype)
        mask = data.x_mask
        scale = data.node_fan_in.to(dtype).clamp(min=1.0).sqrt()
        feats = x.clone()
        feats[:, COL_BIAS] = x[:, COL_BIAS] * scale
        feats[:, COL_RUNNING_MEAN] = _symlog(x[:, COL_RUNNING_MEAN])
        feats[:, COL_RUNNING_VAR] = torch.log(x[:, COL_RUNNING_VAR].clamp(min=1e-12))
        feats = torch.where(mask, feats, torch.zeros((), dtype=dtype, device=x.device))
        feats = torch.cat([feats, mask.to(dtype)], dim=1)
        types = node_type_ids(data.node_kind, data.node_layer, data.node_pos, self.max_in, self.max_out, self.max_depth)
        h = self.node_feat(feats) + self.node_type_emb(types) + self.node_act_emb(data.node_act)
        h = h + self.node_norm_emb(data.node_norm)
        c = self._node_condition(data, cond, self.cond_node if self.cond_dim else None)
        if c is not None:
            h = h + c
        h = self.node_init(h)
        return h, types, scale

    def edge_calibration(self, data: Data, keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-weight calibration features of ``data`` (None without a calibration batch); with
        ``calibration_rounds``, ``keep`` is each model's fraction of weights to keep (pruning targets)."""
        if self.calibration_inputs is None:
            return None
        rounds = self.config.get("calibration_rounds", 0)
        if rounds and keep is None:
            raise ValueError("this metanetwork prunes by iterative saliency rounds: it needs each model's keep fraction")
        n_in = int((data.node_kind == INPUT).sum()) // max(1, int(getattr(data, "num_graphs", 1) or 1))
        return calibration_features(data, self.calibration_inputs[:, :n_in], keep=keep if rounds else None,
                                    rounds=rounds).to(self.alpha.dtype)

    def _edge_inputs(self, data: Data, types: torch.Tensor, scale: torch.Tensor, cond: torch.Tensor | None = None,
                     calib: torch.Tensor | None = None):
        """Per-edge input features ``[sqrt(fan_in) * w, kind (, calibration features)]`` and per-node source /
        destination terms."""
        dtype = self.alpha.dtype
        w = data.edge_attr.to(dtype).reshape(-1) * scale.index_select(0, data.edge_index[1])
        columns = [w.unsqueeze(1), data.edge_kind.to(dtype).unsqueeze(1)]
        if (calib is None) != (self.calibration_inputs is None):
            raise ValueError("calibration features are given exactly when the metanetwork has a calibration batch")
        if calib is not None:
            columns.append(calib)
        feats = torch.cat(columns, dim=1)
        p_src = self.edge_src_emb(types) + self.edge_feat.bias
        if self.cond_dim:
            p_src = p_src + self._node_condition(data, cond, self.cond_edge)
        return feats, p_src, self.edge_dst_emb(types)

    def encode(self, data: Data, cond: torch.Tensor | None = None,
               calib: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Initial node and edge representations, and ``sqrt(fan_in)`` per node (the input scale)."""
        h, types, scale = self._encode_nodes(data, cond)
        src, dst = data.edge_index[0], data.edge_index[1]
        feats, p_src, p_dst = self._edge_inputs(data, types, scale, cond, calib)
        e = p_src.index_select(0, src).addmm_(feats, self.edge_feat.weight.t()).add_(p_dst.index_select(0, dst))
        e = torch.mm(activation_(self._activation, e), self.edge_init.weight.t())
        return h, e, scale

    # --- forward -------------------------------------------------------------------------------------
    def forward(self, data: Data, *, cond: torch.Tensor | None = None, with_logits: bool = True,
                keep: torch.Tensor | None = None) -> EditOutput:
        """Edit a parameter graph / ``Batch`` (see :class:`EditOutput`); ``with_logits=False`` skips the mask heads.

        With gradients enabled this runs the plain autograd path; under ``torch.no_grad`` /
        ``torch.inference_mode`` a fused, chunked path with the same maths (equal to float rounding) that
        is several times faster on CPU.
        """
        calib = self.edge_calibration(data, keep)
        if torch.is_grad_enabled():
            return self._forward_autograd(data, with_logits, cond, calib)
        return self._forward_fused(data, with_logits, cond, calib)

    def _forward_autograd(self, data: Data, with_logits: bool, cond: torch.Tensor | None = None,
                          calib: torch.Tensor | None = None) -> EditOutput:
        h, e, scale = self.encode(data, cond, calib)
        deg_in, deg_out = self._degrees(data, h.dtype)
        edge_delta = h.new_zeros(e.shape[0])
        node_delta = h.new_zeros(h.shape[0], len(EDITABLE_COLUMNS))
        for i, layer in enumerate(self.layers):
            h, e = layer(h, e, data.edge_index, deg_in, deg_out)
            h = self._modulate(i, h, data, cond)
            a, head = self.alpha[i], self.edge_heads[i]
            edge_delta = torch.addmv(edge_delta + a * head.bias, e, a * head.weight[0])
            node_delta = node_delta + a * self.node_heads[i](h)
        edge_logits = self._with_prior(self.edge_classifier(e), calib) if with_logits else None
        return self._output(data, h, edge_delta, node_delta, scale, edge_logits, with_logits, calib)

    @torch.no_grad()
    def _forward_fused(self, data: Data, with_logits: bool, cond: torch.Tensor | None = None,
                       calib: torch.Tensor | None = None) -> EditOutput:
        h, types, scale = self._encode_nodes(data, cond)
        src, dst = data.edge_index[0], data.edge_index[1]
        n_edges, width = src.shape[0], self.config["edge_hidden"]
        work = self._take_workspace(width, h.dtype, h.device)
        try:
            # initial edge representations, chunk by chunk into one buffer that the layers update in place
            feats, p_src, p_dst = self._edge_inputs(data, types, scale, cond, calib)
            e = work.edges(n_edges)
            w_feat, w_init = self.edge_feat.weight.t(), self.edge_init.weight.t()
            for s, t in work.chunks(n_edges):
                ec, tmp = work.buffers[0][: t - s], work.buffers[1][: t - s]
                torch.index_select(p_src, 0, src[s:t], out=ec).addmm_(feats[s:t], w_feat)
                ec.add_(torch.index_select(p_dst, 0, dst[s:t], out=tmp))
                torch.mm(activation_(self._activation, ec), w_init, out=e[s:t])
            deg_in, deg_out = self._degrees(data, h.dtype)
            edge_delta = h.new_zeros(n_edges)
            node_delta = h.new_zeros(h.shape[0], len(EDITABLE_COLUMNS))
            for i, layer in enumerate(self.layers):
                a, head = self.alpha[i], self.edge_heads[i]
                h = layer.forward_fused(h, e, src, dst, deg_in, deg_out, work, head=(a * head.weight[0], edge_delta))
                h = self._modulate(i, h, data, cond)
                edge_delta += a * head.bias
                node_delta += a * self.node_heads[i](h)
            edge_logits = None
            if with_logits:
                edge_logits = h.new_empty(n_edges, self.config["mask_classes"])
                for s, t in work.chunks(n_edges):
                    edge_logits[s:t] = self.edge_classifier(e[s:t])
                edge_logits = self._with_prior(edge_logits, calib)
            return self._output(data, h, edge_delta, node_delta, scale, edge_logits, with_logits, calib)
        finally:
            self._workspace = work

    def _with_prior(self, edge_logits: torch.Tensor, calib: torch.Tensor | None) -> torch.Tensor:
        """Add the calibration prior to the keep logit (the last class)."""
        if calib is None:
            return edge_logits
        bump = calib @ self.calibration_prior.to(calib.dtype)
        if self.config.get("prior_masks"):
            return torch.stack([torch.zeros_like(bump), bump], dim=1).to(edge_logits.dtype)
        return _raise_keep_logit(edge_logits, bump)

    def _take_workspace(self, width: int, dtype: torch.dtype, device: torch.device) -> EdgeWorkspace:
        # taken off the module while in use, so that concurrent calls never share buffers
        work, self._workspace = self._workspace, None
        if work is None or not work.fits(width, dtype, device):
            work = EdgeWorkspace(width, dtype, device)
        return work

    @staticmethod
    def _degrees(data: Data, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        src = data.edge_index[0]
        deg_in = data.node_fan_in.to(dtype)
        deg_out = torch.zeros(data.num_nodes, dtype=dtype, device=src.device)
        deg_out.index_add_(0, src, torch.ones(src.shape[0], dtype=dtype, device=src.device))
        return deg_in, deg_out

    def _output(self, data, h, edge_delta, node_delta, scale, edge_logits, with_logits, calib=None) -> EditOutput:
        """theta' = theta + Delta in the models' own scale (weights and biases divided by sqrt(fan_in))."""
        dtype = h.dtype
        # theta keeps its own dtype: a fresh editor returns it bit for bit
        theta_e = data.edge_attr.reshape(-1)
        edge_values = theta_e + (edge_delta / scale.index_select(0, data.edge_index[1])).to(theta_e.dtype)
        node_delta = torch.cat([(node_delta[:, 0] / scale).unsqueeze(1), node_delta[:, 1:]], dim=1)
        full = h.new_zeros(h.shape[0], NODE_FEATURES)
        full[:, list(EDITABLE_COLUMNS)] = node_delta  # EDITABLE_COLUMNS[0] is the bias
        full = torch.where(data.x_mask, full, torch.zeros((), dtype=dtype, device=h.device))
        node_values = data.x + full.to(data.x.dtype)
        input_index = (data.node_kind == INPUT).nonzero().squeeze(1)
        input_logits = self.input_classifier(h.index_select(0, input_index)) if with_logits else None
        if input_logits is not None and calib is not None:
            if self.config.get("feature_importance"):  # permutation importance on the calibration batch
                n_graphs = int(getattr(data, "num_graphs", 1) or 1)
                f_in = input_index.shape[0] // n_graphs
                prior = permutation_importance(data, self.calibration_inputs[:, :f_in]).reshape(-1)
            else:
                prior = input_saliency(data, calib[:, 1], input_index)
            input_logits = _raise_keep_logit(input_logits, self.input_prior.to(dtype) * prior.to(dtype))
        return EditOutput(edge_values, node_values, edge_logits, input_logits, input_index)

    # --- convenience ---------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, models: MLP | Sequence[MLP]) -> list[MLP]:
        """Edit models in one forward pass (graph build + forward + write-back); returns new MLPs."""
        batch = mlps_to_batch([models] if isinstance(models, MLP) else list(models))
        device = self.alpha.device
        if batch.x.device != device:
            batch = batch.to(device)
        out = self(batch, with_logits=False)
        return batch_to_mlps(batch, out.edge_values, out.node_values)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())

