"""Layer-wise refit of an edited MLP to its original on a batch of inputs (no labels, no training loop).

An edit (pruning, dropped input features) changes which weights exist; the weights that are left are then no
longer the best ones for the function the model had. :func:`refit` re-solves them, one layer at a time, in
closed form: the kept weights and bias of every neuron are the ridge least-squares fit of the *original*
model's pre-activation of that neuron, from the *edited* model's own activations of the layer below (so the
errors of the layers below are corrected, not compounded). The ridge pulls towards the edited weights. This is
the layer-wise reconstruction of one-shot pruning (OBS / SparseGPT-style), exact for MLPs of this size.

Nothing outside the edited model's nonzero pattern is touched: a pruned weight or a dropped input feature stays
exactly zero, so the refit model meets the same requirement as the edited one.
"""

from __future__ import annotations

from copy import deepcopy

import torch

from .module import MLP, skip_key


def _pre_activations(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Pre-activations (before any norm) of each hidden layer and the logits, in eval mode."""
    acts, pre = [x], []
    for li in range(1, model.config.depth + 1):
        z = model.layers[li - 1](acts[-1])
        for s in model.config.skips_into(li):
            z = z + model.skips[skip_key(s, li)](acts[s])
        pre.append(z)
        if len(model.norms):
            z = model.norms[li - 1](z)
        acts.append(model._act(z))
    pre.append(model.layers[-1](acts[-1]))
    return pre


def solve_masked_ridge(inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                       ridge: float) -> torch.Tensor:
    """For each row ``j`` of ``weights`` (out x K): the minimiser over its ``mask[j]`` entries of
    ``|inputs[:, m] w - targets[:, j]|^2 / n + alpha |w - weights[j, m]|^2`` (the others stay 0), with
    ``alpha = ridge * mean diagonal of inputs^T inputs / n``. All rows solved in one batched call; leading batch
    dimensions (several models: ``inputs`` (..., n, K), ``targets`` (..., n, out), ``weights`` and ``mask``
    (..., out, K)) are solved together. Differentiable in every argument, ``mask`` included (a float 0/1 mask
    with a straight-through gradient works), computed in float64. A mask whose rows are all alike (dropped input
    features, an unpruned layer) and needs no gradient shares one system among the rows: same solution, ``out``
    times less work."""
    n = inputs.shape[-2]
    x = inputs.double()
    gram = x.transpose(-1, -2) @ x / n  # (..., K, K)
    alpha = ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (...,)
    alpha = alpha[..., None, None]
    m = mask.double()  # (..., out, K)
    rhs = m * ((targets.double().transpose(-1, -2) @ x) / n + alpha * weights.double() * m)
    eye = torch.eye(gram.shape[-1], dtype=torch.float64, device=gram.device)
    if not mask.requires_grad and bool((m == m[..., :1, :]).all()):
        shared = m[..., 0, :]  # (..., K)
        diagonal = (alpha[..., 0] * shared + (1 - shared)).unsqueeze(-1)
        system = shared.unsqueeze(-1) * gram * shared.unsqueeze(-2) + eye * diagonal
        return torch.linalg.solve(system, rhs.transpose(-1, -2)).transpose(-1, -2) * m
    # masked rows/columns of the gram plus the ridge; an identity where the weight is pruned (solution 0 there)
    system = m.unsqueeze(-1) * gram.unsqueeze(-3) * m.unsqueeze(-2) + eye * (alpha * m + (1 - m)).unsqueeze(-1)
    return torch.linalg.solve(system, rhs.unsqueeze(-1)).squeeze(-1) * m


@torch.no_grad()
def refit(original: MLP, edited: MLP, x: torch.Tensor, *, ridge: float = 1e-2, copy: bool = True) -> MLP:
    """A copy of ``edited`` whose nonzero weights and biases are refit, layer by layer, to reproduce
    ``original``'s pre-activations on ``x`` (see the module docstring). Both models must have the same
    architecture; ``x`` is ``(n, in_features)``. Norm and activation parameters are kept as they are.
    ``copy=False`` refits ``edited`` itself (for a caller that owns it: saves the copy's time)."""
    if original.config != edited.config:
        raise ValueError(f"refit needs two models of one architecture, got {original.config} and {edited.config}")
    if not ridge > 0:
        raise ValueError(f"expected ridge > 0, got {ridge}")
    original.check_input(x)
    if x.shape[0] < 2:
        raise ValueError(f"refit needs at least 2 input rows, got {x.shape[0]}")
    out = (deepcopy(edited) if copy else edited).eval()
    was_training = original.training
    original.eval()
    dtype = out.layers[0].weight.dtype
    targets = _pre_activations(original, x.to(original.layers[0].weight.dtype))
    original.train(was_training)
    acts = [x.to(dtype)]
    cfg = out.config
    for li in range(1, cfg.depth + 2):
        layer = out.layers[li - 1]
        skips = [out.skips[skip_key(s, li)] for s in cfg.skips_into(li)] if li <= cfg.depth else []
        sources = [acts[li - 1]] + [acts[s] for s in (cfg.skips_into(li) if li <= cfg.depth else [])]
        ones = torch.ones(x.shape[0], 1, dtype=dtype)
        inputs = torch.cat([*sources, ones], dim=1)
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0], dtype=dtype)
        weights = torch.cat([layer.weight, *[s.weight for s in skips], bias.unsqueeze(1)], dim=1)
        mask = weights != 0
        mask[:, -1] = layer.bias is not None
        solved = solve_masked_ridge(inputs, targets[li - 1], weights, mask, ridge).to(dtype)
        widths = [layer.weight.shape[1], *[s.weight.shape[1] for s in skips]]
        parts = torch.split(solved[:, :-1], widths, dim=1)
        layer.weight.copy_(parts[0])
        for s, w in zip(skips, parts[1:]):
            s.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.copy_(solved[:, -1])
        if li <= cfg.depth:
            z = inputs @ torch.cat([*parts, solved[:, -1:]], dim=1).T
            if len(out.norms):
                z = out.norms[li - 1](z)
            acts.append(out._act(z))
    return out
