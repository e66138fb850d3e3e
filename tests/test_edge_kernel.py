"""The C++ edge kernel of the metanetwork's inference pass (hubedit.metanet.edge_kernel) against the chunked
torch loop it replaces and the autograd path; its switch and its fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from hubedit.graph import mlps_to_batch
from hubedit.metanet import GraphMetanetwork, edge_kernel
from hubedit.metanet.layers import BidirectionalLayer, EdgeWorkspace

from test_metanet import N_IN, make_net, task_models

needs_kernel = pytest.mark.skipif(not edge_kernel.available(), reason="no C++ compiler: inference uses the torch loop")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _layer_outputs(layer, h, e0, src, dst, vec, kernel: bool):
    layer.edge_kernel = kernel
    e, acc = e0.clone(), torch.zeros(e0.shape[0])
    h_new = layer.forward_fused(h, e, src, dst, torch.rand(h.shape[0], generator=torch.Generator().manual_seed(1)),
                                torch.rand(h.shape[0], generator=torch.Generator().manual_seed(2)),
                                EdgeWorkspace(e.shape[1], torch.float32, "cpu", chunk=1000), head=(vec, acc))
    return h_new, e, acc


@needs_kernel
@pytest.mark.parametrize("width", edge_kernel.WIDTHS)
@pytest.mark.parametrize("activation", sorted(edge_kernel.ACT_CODES))
def test_kernel_equals_the_torch_loop(width, activation, two_threads):
    """Node updates, in-place edge updates and the edit head, over enough edges to use both threads, with
    nodes that receive many edges (the scatter-adds) and edges in both directions."""
    torch.manual_seed(width)
    layer = BidirectionalLayer(24, width, activation).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    n_nodes, n_edges = 300, 40_003  # > 2 x 8192 edges (threads) and not a multiple of the tile
    src = torch.randint(0, n_nodes, (n_edges,))
    dst = torch.randint(0, 40, (n_edges,))  # few destinations: heavy collisions in the sums
    h, e0, vec = torch.randn(n_nodes, 24), torch.randn(n_edges, width), torch.randn(width)
    with torch.no_grad():
        loop = _layer_outputs(layer, h, e0, src, dst, vec, kernel=False)
        kern = _layer_outputs(layer, h, e0, src, dst, vec, kernel=True)
        again = _layer_outputs(layer, h, e0, src, dst, vec, kernel=True)
    for name, a, b, c in zip(("h", "e", "head"), loop, kern, again):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)
        assert torch.equal(b, c), f"{name}: two kernel runs with the same threads differ"
    assert not torch.equal(kern[1], e0)  # e is updated in place


@needs_kernel
@pytest.mark.parametrize("kw", [{"activation": "relu"}, {"activation": "leaky_relu", "edge_hidden": 32}],
                         ids=["relu-16", "leaky_relu-32"])
def test_network_with_the_kernel_matches_the_autograd_path(kw, monkeypatch):
    calls = []
    real = edge_kernel.edge_layer_forward
    monkeypatch.setattr(edge_kernel, "edge_layer_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = make_net(seed=6, perturb=True, hidden=32, **kw)
    batch = mlps_to_batch(task_models(10, seed=5))
    with torch.no_grad():
        fast = net(batch)
    assert len(calls) == len(net.layers)  # every layer ran the kernel
    for layer in net.layers:
        layer.edge_kernel = False
    slow = net(batch)  # the autograd path, torch ops only
    assert len(calls) == len(net.layers)
    for name in ("edge_values", "node_values", "edge_logits", "input_node_logits"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name).detach(), rtol=1e-5, atol=1e-5, msg=name)


@needs_kernel
def test_unsupported_settings_run_the_torch_loop(monkeypatch):
    monkeypatch.setattr(edge_kernel, "edge_layer_forward", lambda *a, **k: pytest.fail("kernel called"))
    batch = mlps_to_batch(task_models(4, seed=2))
    for kw in ({"edge_hidden": 8}, {"activation": "silu", "edge_hidden": 16}, {"edge_hidden": 16, "edge_norm": True}):
        with torch.no_grad():
            make_net(seed=1, perturb=True, hidden=32, **kw)(batch)
    layer = BidirectionalLayer(8, 16).double()  # float64: the kernel is float32 only
    src = torch.randint(0, 5, (50,))
    with torch.no_grad():
        layer.forward_fused(torch.randn(5, 8, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64), src, src,
                            torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64),
                            EdgeWorkspace(16, torch.float64, "cpu"))


def test_bad_input_is_refused_with_what_was_expected():
    e = torch.zeros(10, 12)
    nodes = [torch.zeros(3, 12)] * 4
    weights = [torch.zeros(12, 12)] * 4
    idx = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="expected contiguous float32 CPU edges of width"):
        edge_kernel.edge_layer_forward(e, *nodes, *weights, idx, idx, "relu")


def test_kernel_can_be_switched_off():
    code = "from hubedit.metanet import edge_kernel; print(edge_kernel.available())"
    env = {**os.environ, "HUBEDIT_FUSED_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]


def test_failed_build_falls_back_to_the_torch_loop(monkeypatch, tmp_path):
    """A compiler that fails leaves inference on the torch loop, with a warning that says why."""
    monkeypatch.setenv("HUBEDIT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(edge_kernel, "_compiler", lambda: shutil.which("false") or "false")
    edge_kernel._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not edge_kernel.available()
        assert any("edge kernel unavailable" in str(w.message) for w in caught)
        assert not edge_kernel.supports(torch.zeros(4, 32), "relu")
        net = GraphMetanetwork(hidden=64, layers=2, max_in=8, max_out=4).eval()
        with torch.no_grad():
            out = net(mlps_to_batch(task_models(3, seed=1)))
        assert torch.isfinite(out.edge_values).all()
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-built left behind
    finally:
        edge_kernel._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("activation", sorted(edge_kernel.ACT_CODES))
def test_training_pass_equals_the_torch_chunks(width, activation, two_threads):
    """With gradients the layer's chunked autograd function (edge_pass) runs the kernel in both directions: the
    same outputs and gradients as its torch chunks, in float32, over enough edges to use both threads."""
    torch.manual_seed(width + 1)
    layer = BidirectionalLayer(24, width, activation)
    n_nodes, n_edges = 300, 20_011
    h = torch.randn(n_nodes, 24, requires_grad=True)
    e = torch.randn(n_edges, width, requires_grad=True)
    edge_index = torch.stack([torch.randint(0, n_nodes, (n_edges,)), torch.randint(0, 60, (n_edges,))])
    deg_in, deg_out = torch.rand(n_nodes), torch.rand(n_nodes)
    results = []
    for kernel in (False, True):
        layer.edge_kernel = kernel
        layer.zero_grad()
        h.grad = e.grad = None
        h2, e2 = layer(h, e, edge_index, deg_in, deg_out)
        (h2.sin().sum() + e2.square().sum()).backward()
        results.append([h2.detach(), e2.detach(), h.grad.clone(), e.grad.clone(),
                        *(p.grad.clone() for p in layer.parameters())])
    names = ["h", "e", "h.grad", "e.grad", *(n for n, _ in layer.named_parameters())]
    for name, loop, kern in zip(names, *results):
        # a pre-activation within rounding of 0 may switch sides: allow a handful of such elements
        off = ~torch.isclose(kern, loop, rtol=1e-4, atol=1e-4 * float(loop.abs().max()))
        assert int(off.sum()) <= max(2, loop.numel() // 10_000), f"{name}: {int(off.sum())} elements differ"
        assert float((kern - loop).norm() / loop.norm()) < 1e-3, name


@needs_kernel
def test_training_with_the_kernel_follows_the_torch_loop():
    """A few optimiser steps of a whole metanetwork on the same batch: the losses with and without the kernel agree."""
    from hubedit.graph import functional_forward

    batch = mlps_to_batch(task_models(8, seed=4))
    x = torch.randn(64, N_IN)
    losses = []
    for kernel in (False, True):
        net = make_net(seed=3, perturb=True, hidden=32, edge_hidden=16).train()
        for layer in net.layers:
            layer.edge_kernel = kernel
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        run = []
        for _ in range(4):
            out = net(batch)
            loss = functional_forward(batch, x, out.edge_values, out.node_values).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(float(loss.detach()))
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_kernel_failures_become_python_errors():
    """The C++ side catches its own exceptions (allocation, threads) and returns a code; the wrapper raises."""
    with pytest.raises(MemoryError, match="per-thread sums .* set fewer torch threads"):
        edge_kernel._check(-2, 32, 1000)
    with pytest.raises(RuntimeError, match="width 24 is not one of"):
        edge_kernel._check(-1, 24, 1000)
    edge_kernel._check(0, 32, 1000)


@needs_kernel
def test_cached_kernel_weights_follow_changed_parameters():
    """The inference path keeps its kernel weights between calls (BidirectionalLayer._kernel_weights); an optimiser
    step or a loaded state dict changes the parameters in place, and the next edit must use the new ones."""
    net = make_net(seed=7, perturb=True, hidden=32, activation="relu")
    batch = mlps_to_batch(task_models(4, seed=8))
    with torch.no_grad():
        before = net(batch).edge_values
        net(batch)  # the cached weights reused
        for layer in net.layers:
            layer.edge_out.weight.mul_(1.5)  # in place, as an optimiser step
            layer.fwd_src.weight.add_(0.1)
        after = net(batch).edge_values
    assert not torch.allclose(before, after)
    slow = net(batch)  # the autograd path, no cache
    torch.testing.assert_close(after, slow.edge_values.detach(), rtol=1e-5, atol=1e-5)
    other = make_net(seed=9, perturb=True, hidden=32, activation="relu")
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(batch).edge_values, other(batch).edge_values, rtol=0, atol=0)
    assert all("_kernel_cache" not in k for k in net.state_dict())
