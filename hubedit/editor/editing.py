"""What every use of an editor shares: run the metanetwork, fold masks into weights, score an edit.

The trainer (soft masks, gradients), validation and :meth:`Editor.edit` (hard masks) all go through these
functions, so training and editing cannot drift apart.
"""

from __future__ import annotations

import math

import torch
from torch_geometric.data import Batch, Data

from ..metrics.scores import jsd_from_logits
from ..graph import functional_forward
from ..graph.encoding import INPUT
from ..graph.groups import edge_graph_index
from ..graph.refit import refit_jsd, refit_variants
from ..metanet.model import EditOutput, GraphMetanetwork
from ..requirements import Edit, Outcome, Requirement
from ..requirements.base import graph_index, num_graphs


def lambda_condition(lam: torch.Tensor, lam_range: tuple[float, float] | None) -> torch.Tensor | None:
    """Conditioning input of a lambda-conditioned editor: log lambda scaled to [-1, 1] over its range."""
    if lam_range is None:
        return None
    lo, hi = math.log(lam_range[0]), math.log(lam_range[1])
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-12)
    return ((torch.log(lam.double()) - mid) / half).float().unsqueeze(1)


def run_edit(
    metanet: GraphMetanetwork,
    requirement: Requirement,
    data: Data,
    *,
    lam: torch.Tensor | None,
    lam_range: tuple[float, float] | None,
    hard: bool,
    target: torch.Tensor | None = None,
    target_range: tuple[float, float] | None = None,
) -> tuple[EditOutput, Edit]:
    """The metanetwork's output and the requirement's edit. A lambda-conditioned editor gets ``lam`` (per model)
    as its condition; a target-conditioned one (``target_range``) gets ``target`` (per model), which the
    requirement's masks then meet exactly."""
    if target_range is not None:
        if target is None:
            raise ValueError("a target-conditioned editor needs a target per model")
        cond = requirement.target_condition(target, target_range)
    else:
        cond = lambda_condition(lam, lam_range) if lam_range is not None else None
    keep = target if (target_range is not None and requirement.name == "prune") else None
    out = metanet(data, cond=cond, with_logits=requirement.uses_mask_heads, **({"keep": keep} if keep is not None else {}))
    if isinstance(out, dict):  # an Editor (or its DDP wrapper) returns the fields as a dict
        out = EditOutput(**out)
    return out, requirement.apply(data, out, hard=hard, target=target if target_range is not None else None)


def input_edge_mask(data: Data, input_mask: torch.Tensor) -> torch.Tensor:
    """Per-edge multiplier that zeroes every weight leaving a dropped input feature (M x F mask)."""
    src = data.edge_index[0]
    graph = graph_index(data).index_select(0, src)
    pos = data.node_pos.index_select(0, src)
    from_input = data.node_kind.index_select(0, src) == INPUT
    m = input_mask[graph, pos.clamp(max=input_mask.shape[1] - 1)]
    return torch.where(from_input, m, torch.ones_like(m))


def folded_values(data: Data, edit: Edit) -> tuple[torch.Tensor, torch.Tensor]:
    """Edited edge and node values with the masks folded in: pruned weights and the weights of dropped
    input features become exact zeros, so the written-back MLP satisfies the requirement by itself."""
    ev = edit.masked_edge_values()
    if edit.input_mask is not None:
        ev = ev * input_edge_mask(data, edit.input_mask)
    return ev, edit.node_values


def refit_edit(data: Data, edit: Edit, x: torch.Tensor, ridge: float, *, reselect: bool = False) -> Edit:
    """The edit refit to the original models on ``x`` (:func:`hubedit.graph.refit.refit_values`): kept
    weights and biases re-solved layer by layer; every weight the masks drop comes out 0.

    With ``reselect`` (pruning only), each model gets the better of two refits, judged by its JSD to the
    original on ``x`` itself: of the editor's mask, and of a mask with the same number of weights in every
    layer re-chosen for the refit (``reselect`` of :func:`~hubedit.graph.refit.refit_values`). The editor
    then decides how many weights each layer keeps; the refit may decide which."""
    return _refit_and_jsd(data, edit, x, ridge, reselect=reselect, score=False)[0]


def _refit_and_jsd(data: Data, edit: Edit, x: torch.Tensor, ridge: float, *, reselect: bool = False,
                   score: bool = True) -> tuple[Edit, torch.Tensor | None]:
    """:func:`refit_edit` and each refit model's mean JSD to its original on ``x`` ``(M,)`` (both refits of
    ``reselect`` solved in one pass, :func:`~hubedit.graph.refit.refit_variants`, which also gives the logits);
    with ``score=False`` and no ``reselect`` the JSD is not computed (None)."""
    if reselect and (edit.edge_mask is None or edit.input_mask is not None):
        raise ValueError("reselect re-chooses a pruning mask: it needs an edge mask and no input mask")
    keep = edit.edge_mask if edit.edge_mask is not None else torch.ones_like(edit.edge_values)
    if edit.input_mask is not None:
        keep = keep.reshape(-1) * input_edge_mask(data, edit.input_mask)
    variants, reference = refit_variants(data, x, edit.edge_values, edit.node_values, keep, ridge=ridge,
                                         reselect=(False, True) if reselect else (False,))
    plain = variants[0]
    refit = Edit(edge_values=plain.edge_values, node_values=plain.node_values, edge_mask=edit.edge_mask,
                 input_mask=edit.input_mask)
    if not reselect:
        return refit, refit_jsd(plain, reference) if score else None
    jsds = [refit_jsd(v, reference) for v in variants]
    other = variants[1]
    better = jsds[1] < jsds[0]  # (M,)
    ev = plain.edge_values
    on_edge = better.index_select(0, edge_graph_index(data)).view(-1, *([1] * (ev.dim() - 1)))
    on_node = better.index_select(0, graph_index(data)).unsqueeze(1)
    mask = other.keep.view_as(edit.edge_mask)
    chosen = Edit(edge_values=torch.where(on_edge, other.edge_values, ev),
                  node_values=torch.where(on_node, other.node_values, plain.node_values),
                  edge_mask=torch.where(on_edge.view(-1, *([1] * (edit.edge_mask.dim() - 1))), mask, edit.edge_mask))
    return chosen, torch.where(better, jsds[1], jsds[0])


def greedy_input_masks(data: Data, edit: Edit, x: torch.Tensor, ridge: float, counts: torch.Tensor, *,
                       max_graphs: int = 256) -> torch.Tensor:
    """``(M, F)`` input masks keeping ``counts[m]`` features of model ``m`` (0: none chosen, an all-zero row),
    chosen one at a time: each step adds the feature whose addition gives the lowest JSD to the original on
    ``x`` after the refit (:func:`refit_edit`). Forward selection wrapped around the refit, as FS & Retrain
    would choose if it could retrain each candidate: ``F`` refits per model and step, run as refits of a batch
    holding the models once per candidate feature (at most ``max_graphs`` graphs at a time)."""
    if edit.input_mask is None:
        raise ValueError("greedy feature selection needs a data-minimisation edit (an input mask)")
    m, n_features = edit.input_mask.shape
    counts = counts.reshape(-1).long().to(edit.input_mask.device)
    if counts.shape != (m,) or bool((counts < 0).any()) or bool((counts > n_features).any()):
        raise ValueError(f"expected {m} counts in [0, {n_features}], got {counts.tolist()}")
    per_batch = max(1, min(n_features, max_graphs // m))  # candidate features refit together
    graphs = data.to_data_list() if isinstance(data, Batch) else [data]
    copies = Batch.from_data_list(graphs * per_batch)
    def tiled(t: torch.Tensor | None) -> torch.Tensor | None:  # the values once per candidate in a group
        return None if t is None else t.repeat(per_batch, *([1] * (t.dim() - 1)))

    values = Edit(tiled(edit.edge_values), tiled(edit.node_values), tiled(edit.edge_mask))
    chosen = torch.zeros_like(edit.input_mask)
    out = torch.zeros_like(edit.input_mask)
    rows = torch.arange(m, device=chosen.device)
    for step in range(1, int(counts.max()) + 1):
        scores = torch.full_like(chosen, float("inf"))
        for first in range(0, n_features, per_batch):
            features = list(range(first, min(first + per_batch, n_features)))
            features += features[-1:] * (per_batch - len(features))  # pad the last group (results unused)
            trial = chosen.repeat(per_batch, 1).view(per_batch, m, n_features)
            trial[torch.arange(per_batch), :, torch.tensor(features)] = 1
            trial = trial.view(per_batch * m, n_features)
            _, jsd = _refit_and_jsd(copies, Edit(values.edge_values, values.node_values, values.edge_mask, trial),
                                    x, ridge)
            jsd = jsd.view(per_batch, m).to(scores.dtype)
            for c, j in enumerate(features[: min(per_batch, n_features - first)]):
                scores[:, j] = jsd[c]
        scores[chosen > 0] = float("inf")
        chosen[rows, scores.argmin(1)] = 1
        out[counts == step] = chosen[counts == step]
    return out


def score(
    requirement: Requirement,
    data: Data,
    edit: Edit,
    x: torch.Tensor,
    y: torch.Tensor,
    sensitive: torch.Tensor,
    *,
    reference_logits: torch.Tensor | None = None,
) -> tuple[Outcome, torch.Tensor]:
    """Edited models' outputs on ``x`` and their JSD to the originals, per model ``(M,)``."""
    if reference_logits is None:
        with torch.no_grad():
            reference_logits = functional_forward(data, x)
    logits = functional_forward(
        data, x, edit.edge_values, edit.node_values, edge_mask=edit.edge_mask, input_mask=edit.input_mask
    )
    jsd = jsd_from_logits(reference_logits, logits).mean(dim=-1)
    return Outcome(data=data, edit=edit, logits=logits, y=y, sensitive=sensitive), jsd


@torch.no_grad()
def evaluate_edits(
    metanet: GraphMetanetwork,
    requirement: Requirement,
    graphs: list[Data],
    x: torch.Tensor,
    y: torch.Tensor,
    sensitive: torch.Tensor,
    *,
    lam: float | None,
    lam_range: tuple[float, float] | None,
    chunk: int = 64,
    target: float | None = None,
    target_range: tuple[float, float] | None = None,
    refit: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard edits of ``graphs``: per-model requirement metric and JSD on ``(x, y, sensitive)``; with ``refit``
    (a ridge) each edit is refit on the metanetwork's calibration batch first, as :meth:`Editor.edit` does."""
    metrics, jsds = [], []
    for i in range(0, len(graphs), chunk):
        batch = Batch.from_data_list(graphs[i : i + chunk])
        m = num_graphs(batch)
        lam_t = torch.full((m,), float(lam if lam is not None else 1.0))
        target_t = None if target is None else torch.full((m,), float(target), dtype=torch.float64)
        _, edit = run_edit(metanet, requirement, batch, lam=lam_t, lam_range=lam_range, hard=True,
                           target=target_t, target_range=target_range)
        if refit is not None:
            edit = refit_edit(batch, edit, metanet.calibration_inputs[:, : x.shape[1]], refit)
        outcome, jsd = score(requirement, batch, edit, x, y, sensitive)
        metrics.append(requirement.metric(outcome))
        jsds.append(jsd.double())
    return torch.cat(metrics), torch.cat(jsds)
