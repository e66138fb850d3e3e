"""The hand-written saliency pass (hubedit.graph.saliency) against autograd through functional_forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hubedit.graph import functional_forward, mlps_to_batch
from hubedit.graph import native_kernels
from hubedit.graph.saliency import SaliencyPass
from hubedit.mlp import ACTIVATIONS, MLP, MLPConfig


def autograd_saliency(data, x, weights, labels=None, mask=None):
    """The reference: ``|w * dL/dw|`` by autograd (the implementation SaliencyPass replaced)."""
    values = weights.clone().requires_grad_(True)
    logits = functional_forward(data, x, values, edge_mask=mask)
    if labels is None:
        labels = logits.detach().argmax(-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    (grad,) = torch.autograd.grad(loss / x.shape[0], values)
    return (weights * grad).abs(), labels


def _models(norm: str) -> list[MLP]:
    torch.manual_seed(0)
    configs = [MLPConfig(5, (8, 16), 3, act, norm) for act in ACTIVATIONS]
    configs += [MLPConfig(5, (6, 6, 12), 3, act, norm, skips=((0, 2), (1, 3), (0, 3))) for act in ACTIVATIONS]
    configs += [MLPConfig(5, (4,), 3, "sigmoid", norm), MLPConfig(5, (8, 16), 3, "relu", norm)]  # a repeated config
    models = [MLP(c).eval() for c in configs]
    for m in models:  # non-trivial norm parameters and statistics
        for mod in m.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.normal_(0, 0.3)
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return models


@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
def test_saliency_pass_equals_autograd(norm):
    models = _models(norm)
    batch = mlps_to_batch(models[::-1] + models[:3])  # repeated configs, not in first-appearance order
    x = torch.randn(40, 5)
    weights = batch.edge_attr.reshape(-1).float()
    saliency_of = SaliencyPass(batch, x, weights)
    mine, labels = saliency_of()
    ref, ref_labels = autograd_saliency(batch, x, weights)
    assert torch.equal(labels, ref_labels)
    assert labels.shape == (len(models) + 3, 40)
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-7)
    assert float(mine.max()) > 1e-3  # a real gradient, not zeros
    # masked, against given labels: the same pass again with another mask
    mask = (torch.rand(weights.shape[0], generator=torch.Generator().manual_seed(1)) > 0.4).float()
    other = torch.randint(0, 3, labels.shape, generator=torch.Generator().manual_seed(2))
    mine, out_labels = saliency_of(mask, other)
    ref, _ = autograd_saliency(batch, x, weights, other, mask)
    assert torch.equal(out_labels, other)
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-7)
    assert bool((mine[mask == 0] == 0).all())  # pruned weights have no saliency


def test_saliency_pass_single_model_and_bad_inputs():
    model = MLP(MLPConfig(5, (8, 16), 2, "gelu", "layernorm")).eval()
    data = mlps_to_batch([model])
    x = torch.randn(32, 5)
    mine, labels = SaliencyPass(data, x)()
    ref, ref_labels = autograd_saliency(data, x, data.edge_attr.reshape(-1))
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-7)
    assert torch.equal(labels, ref_labels) and labels.shape == (1, 32)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 5\), got \(32, 4\)"):
        SaliencyPass(data, x[:, :4])


def torch_rounds(data, x, weights, counts):
    """saliency_rounds through the torch formulation (SaliencyPass), the kernel's reference."""
    from hubedit.graph import saliency

    try:
        native_kernels.USE = False
        return saliency.saliency_rounds(data, x, weights, counts)
    finally:
        native_kernels.USE = True


@pytest.mark.skipif(not native_kernels.available(), reason="no C++ compiler here: the graph kernels are not built")
@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
def test_saliency_kernel_equals_torch_formulation(norm):
    from hubedit.graph.saliency import saliency_rounds

    models = _models(norm)
    batch = mlps_to_batch(models + models[:2])
    x = torch.randn(48, 5)
    weights = batch.edge_attr.reshape(-1).float()
    sizes = torch.bincount(batch.batch.index_select(0, batch.edge_index[0]))
    counts = torch.stack([(sizes * f).round().long().clamp(min=1) for f in (0.7, 0.45, 0.25)], dim=1)
    dense, mask, score, features = saliency_rounds(batch, x, weights, counts)
    ref_dense, ref_mask, ref_score, ref_features = torch_rounds(batch, x, weights, counts)
    assert ref_features is None and features.shape == (weights.shape[0], 4)
    torch.testing.assert_close(dense, ref_dense, rtol=1e-4, atol=1e-7)
    assert float(dense.max()) > 1e-3
    # the same weights kept in every model (iterative top-k on float-rounded scores: allow a near-tie flip)
    assert float((mask != ref_mask).float().mean()) < 0.005
    group = batch.batch.index_select(0, batch.edge_index[0])
    assert torch.equal(torch.bincount(group, weights=mask).round().long(), counts[:, -1])
    same = (mask == ref_mask)
    torch.testing.assert_close(score[same], ref_score[same], rtol=1e-3, atol=1e-6)
    # dense only
    only, no_mask, no_score, two = saliency_rounds(batch, x, weights, None)
    assert no_mask is None and no_score is None and two.shape == (weights.shape[0], 2)
    torch.testing.assert_close(only, dense, rtol=0, atol=0)


def test_saliency_falls_back_to_torch_where_not_finite():
    from hubedit.graph.saliency import saliency_rounds

    model = MLP(MLPConfig(5, (8,), 2)).eval()
    data = mlps_to_batch([model])
    x = torch.randn(16, 5)
    x[3, 2] = float("inf")
    dense, _, _, features = saliency_rounds(data, x, data.edge_attr.reshape(-1).float(), None)
    assert features is None  # the torch formulation ran
    ref, _ = autograd_saliency(data, x, data.edge_attr.reshape(-1).float())
    torch.testing.assert_close(dense, ref, equal_nan=True)
    assert not bool(torch.isfinite(dense).all())


def test_failed_build_falls_back_to_the_torch_formulations(monkeypatch, tmp_path):
    """A compiler that fails leaves the calibration features and the refit on their torch formulations, with a
    warning that says why, and the same results to float rounding."""
    import shutil
    import warnings

    from hubedit.graph.calibration import calibration_features
    from hubedit.graph.refit import refit_values

    models = _models("layernorm")[:4]
    batch = mlps_to_batch(models)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(4))
    keep = torch.tensor([0.3, 0.5, 0.2, 0.4], dtype=torch.float64)
    mask = (torch.rand(batch.edge_attr.shape[0], generator=torch.Generator().manual_seed(5)) > 0.5).float()
    built = native_kernels.available()
    fast = (calibration_features(batch, x, keep=keep, rounds=3),
            refit_values(batch, x, batch.edge_attr.reshape(-1), batch.x, mask, ridge=0.01))
    monkeypatch.setenv("HUBEDIT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(native_kernels, "_compiler", lambda: shutil.which("false") or "false")
    native_kernels._load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native_kernels.available()
        assert any("graph kernels (saliency, refit) unavailable" in str(w.message) for w in caught)
        slow = (calibration_features(batch, x, keep=keep, rounds=3),
                refit_values(batch, x, batch.edge_attr.reshape(-1), batch.x, mask, ridge=0.01))
        assert not list((tmp_path / "kernels").glob("*.so"))
    finally:
        native_kernels._load.cache_clear()
    if built:  # the kernels' results equal the torch formulations' (a near-tie may flip one kept weight)
        same = fast[0][:, 2] == slow[0][:, 2]
        assert float((~same).float().mean()) < 0.01
        torch.testing.assert_close(fast[0][:, :2], slow[0][:, :2], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(fast[0][same, 3], slow[0][same, 3], rtol=1e-3, atol=2e-3)
        assert float(fast[0][:, 3].std()) > 0.5  # standardised, not constant
        for a, b in zip(fast[1], slow[1]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
