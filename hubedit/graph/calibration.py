"""Per-weight features from a model's own behaviour on a small calibration batch.

An editor that sees only weights must guess which ones matter; the per-model baselines it competes with (SNIP,
magnitude) rank weights by ``|w|`` or by the sensitivity ``|w * dL/dw|`` on data. These features hand the same
information to the metanetwork, computed for a whole batch of parameter graphs at once
(:func:`~hubedit.graph.saliency.saliency_rounds`: a C++ kernel, or a torch pass with its backward written out):
``L`` is the cross-entropy of each model against its *own* predicted labels on the calibration inputs (no true labels are needed, and keeping those
predictions is what the editor is trained for). Both are put on a per-model scale -- ``log`` values, centred and
scaled within each model -- so that models of any weight scale or width look alike to the editor (and the
features are invariant to hidden-neuron permutations).
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from .functional import functional_forward
from .groups import edge_graph_index
from .saliency import saliency_rounds

def calibration_feature_count(rounds: int = 0) -> int:
    """Feature columns :func:`calibration_features` returns per edge (2, or 4 with iterative rounds)."""
    return 4 if rounds else 2


def standardise_per_graph(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``(v - mean_g) / std_g`` within each group ``g`` (std floored at 1e-6)."""
    count = torch.bincount(group, minlength=n_groups).clamp(min=1).to(values.dtype)
    mean = values.new_zeros(n_groups).index_add_(0, group, values) / count
    centred = values - mean.index_select(0, group)
    var = values.new_zeros(n_groups).index_add_(0, group, centred.square()) / count
    return centred / var.sqrt().clamp(min=1e-6).index_select(0, group)


@torch.no_grad()
def calibration_features(data: Data, inputs: torch.Tensor, *, keep: torch.Tensor | None = None,
                         rounds: int = 0) -> torch.Tensor:
    """Features per weight (see the module docstring): standardised ``log|w|`` and ``log|w * dL/dw|``; with
    ``rounds`` and ``keep`` (each model's fraction of weights to keep) also the outcome of ``rounds`` rounds of
    iterative saliency pruning towards ``keep`` -- each round keeps ``keep ** (r / rounds)`` of the weights by
    the saliency re-taken on the masked model, against the dense model's own labels (iterative SNIP on the
    model's own predictions) -- as a 0/1 column, and the last round's standardised log saliency."""
    weights = data.edge_attr.reshape(-1).detach().float()
    group = edge_graph_index(data)
    n_groups = int(getattr(data, "num_graphs", 1) or 1)
    counts = None
    if rounds:
        if keep is None or keep.shape != (n_groups,):
            raise ValueError(f"iterative rounds need one keep fraction per model ({n_groups}), got "
                             f"{None if keep is None else tuple(keep.shape)}")
        sizes = torch.bincount(group, minlength=n_groups)
        exponents = torch.arange(1, rounds + 1, dtype=torch.float64, device=sizes.device) / rounds
        counts = torch.round(keep.double().to(sizes.device).unsqueeze(1) ** exponents * sizes.unsqueeze(1))
        counts = counts.long().clamp(min=1)  # (M, rounds)
    saliency, mask, score, features = saliency_rounds(data, inputs, weights, counts)
    if features is not None:  # the kernel made them
        return features
    magnitude = torch.log(weights.abs() + 1e-8)
    columns = [standardise_per_graph(magnitude, group, n_groups),
               standardise_per_graph(torch.log(saliency + 1e-12), group, n_groups)]
    if rounds:
        columns += [mask, standardise_per_graph(torch.log(score * mask + 1e-12), group, n_groups)]
    return torch.stack(columns, dim=1)


def input_saliency(data: Data, edge_saliency: torch.Tensor, input_index: torch.Tensor) -> torch.Tensor:
    """Per input node (``input_index`` order): the log of the summed ``exp`` of the (standardised) saliency of the
    weights leaving it, standardised within each model -- a gradient-based feature importance."""
    src = data.edge_index[0]
    total = edge_saliency.new_zeros(data.num_nodes).index_add_(0, src, torch.exp(edge_saliency.clamp(max=30)))
    value = torch.log(total.index_select(0, input_index) + 1e-12)
    batch = getattr(data, "batch", None)
    group = (torch.zeros_like(input_index) if batch is None else batch.index_select(0, input_index))
    n_groups = int(getattr(data, "num_graphs", 1) or 1)
    return standardise_per_graph(value, group, n_groups)


@torch.no_grad()
def permutation_importance(data: Data, inputs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``(M, F)`` permutation importance of every input feature of every model on the calibration inputs: the mean
    JSD between a model's outputs and its outputs with that feature's column permuted (one fixed, seeded
    permutation), as ``log`` standardised within each model. The batched counterpart of the FS baseline's PFI,
    measured against the model's own outputs."""
    from ..metrics.scores import jsd_from_logits

    reference = functional_forward(data, inputs)  # (M, B, C)
    n_features = inputs.shape[1]
    perm = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))
    scores = []
    for j in range(n_features):
        shuffled = inputs.clone()
        shuffled[:, j] = inputs[perm, j]
        scores.append(jsd_from_logits(reference, functional_forward(data, shuffled)).mean(-1))
    value = torch.log(torch.stack(scores, dim=1) + 1e-12)  # (M, F)
    return (value - value.mean(1, keepdim=True)) / value.std(1, unbiased=False, keepdim=True).clamp(min=1e-6)
