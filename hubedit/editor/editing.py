"""What every use of an editor shares: run the metanetwork, fold masks into weights, score an edit.

The trainer (soft masks, gradients), validation and :meth:`Editor.edit` (hard masks) all go through these
functions, so training and editing cannot drift apart.
"""

from __future__ import annotations

import math

import torch
from torch_geometric.data import Data

from ..metrics.scores import jsd_from_logits
from ..graph import functional_forward
from ..graph.encoding import INPUT
from ..graph.refit import refit_values
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


def refit_edit(data: Data, edit: Edit, x: torch.Tensor, ridge: float) -> Edit:
    """The edit refit to the original models on ``x`` (:func:`hubedit.graph.refit.refit_values`): kept
    weights and biases re-solved layer by layer; the masks stay, and every weight they drop comes out 0."""
    keep = edit.edge_mask if edit.edge_mask is not None else torch.ones_like(edit.edge_values)
    if edit.input_mask is not None:
        keep = keep.reshape(-1) * input_edge_mask(data, edit.input_mask)
    ev, nv = refit_values(data, x, edit.edge_values, edit.node_values, keep, ridge=ridge)
    return Edit(edge_values=ev, node_values=nv, edge_mask=edit.edge_mask, input_mask=edit.input_mask)


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
    from torch_geometric.data import Batch

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
