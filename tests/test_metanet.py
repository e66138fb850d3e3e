"""The graph metanetwork: identity at initialisation, permutation equivariance, gradients, shapes."""

from __future__ import annotations

import random

import pytest
import torch

from hubedit.errors import UnsupportedArchitectureError
from hubedit.graph import (
    batch_to_mlps,
    functional_forward,
    graph_permutation,
    mlp_to_graph,
    mlps_to_batch,
    permute_hidden,
    random_hidden_permutations,
)
from hubedit.metanet import EditOutput, GraphMetanetwork
from hubedit.metanet.layers import EdgeWorkspace
from hubedit.mlp import MLP, MLPConfig

from _graph_helpers import randomise, sample_config, sampled_models

N_IN, N_OUT = 6, 3


def make_net(seed: int = 0, perturb: bool = False, **kw) -> GraphMetanetwork:
    torch.manual_seed(seed)
    net = GraphMetanetwork(hidden=kw.pop("hidden", 16), layers=kw.pop("layers", 3), max_in=8, max_out=4, **kw)
    if perturb:  # leave the identity: non-zero heads and alphas, so every output depends on the input
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            net.alpha.fill_(0.5)
    return net.eval()


def task_models(n: int, seed: int) -> list[MLP]:
    return sampled_models(n, seed=seed, in_features=N_IN, out_features=N_OUT)


def test_fresh_metanetwork_is_the_identity():
    models = task_models(16, seed=0)
    batch = mlps_to_batch(models)
    net = make_net()
    out = net(batch)
    assert isinstance(out, EditOutput)
    assert torch.equal(out.edge_values, batch.edge_attr[:, 0])
    assert torch.equal(out.node_values, batch.x)
    assert out.edge_logits.shape == (batch.edge_index.shape[1], 2)
    assert out.input_node_logits.shape == (16 * N_IN, 2)
    assert torch.equal(out.input_node_index, (batch.node_kind == 0).nonzero().squeeze(1))
    x = torch.randn(11, N_IN)
    for a, b in zip(models, net.edit(models)):
        assert torch.equal(a(x), b(x))
        assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert net(batch, with_logits=False).edge_logits is None


def test_edits_stay_where_parameters_exist():
    batch = mlps_to_batch(task_models(8, seed=1))
    out = make_net(perturb=True)(batch)
    changed = out.node_values != batch.x
    assert not bool((changed & ~batch.x_mask).any())  # absent entries stay zero
    assert not bool(changed[:, 3:].any())  # BatchNorm running statistics are not edited
    assert bool(changed[:, 0].any()) and bool((out.edge_values != batch.edge_attr[:, 0]).any())


CONFIGS = [
    MLPConfig(N_IN, (5, 7, 4), N_OUT, "relu", "none", skips=((0, 2), (1, 3), (0, 3))),
    MLPConfig(N_IN, (8, 8), N_OUT, "gelu", "batchnorm", skips=((0, 2),)),
    MLPConfig(N_IN, (4, 6, 6, 3), N_OUT, "tanh", "layernorm", skips=((0, 2), (2, 4))),
    MLPConfig(N_IN, (9,), N_OUT, "sigmoid", "layernorm"),
]


def _check_equivariance(net: GraphMetanetwork, models: list[MLP], gen: torch.Generator, fused: bool = True) -> None:
    """Outputs on hidden-permuted models equal permuted outputs (``fused``: no-grad path, else autograd path)."""
    perms = [random_hidden_permutations(m.config, gen) for m in models]
    permuted = [permute_hidden(m, p) for m, p in zip(models, perms)]
    batch, batch_p = mlps_to_batch(models), mlps_to_batch(permuted)
    with torch.set_grad_enabled(not fused):
        out, out_p = net(batch), net(batch_p)
    out = EditOutput(*(t.detach() for t in vars(out).values()))
    out_p = EditOutput(*(t.detach() for t in vars(out_p).values()))
    node_off, edge_off, node_perm, edge_perm = 0, 0, [], []
    for m, p in zip(models, perms):
        npm, epm = graph_permutation(m.config, p)
        node_perm.append(npm + node_off)
        edge_perm.append(epm + edge_off)
        node_off += npm.numel()
        edge_off += epm.numel()
    node_perm, edge_perm = torch.cat(node_perm), torch.cat(edge_perm)
    tol = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(out_p.edge_values, out.edge_values[edge_perm], **tol)
    torch.testing.assert_close(out_p.node_values, out.node_values[node_perm], **tol)
    torch.testing.assert_close(out_p.edge_logits, out.edge_logits[edge_perm], **tol)
    torch.testing.assert_close(out_p.input_node_logits, out.input_node_logits, **tol)  # inputs are not permuted
    # and so the edited models compute the same functions
    x = torch.randn(10, N_IN, generator=gen)
    f = functional_forward(batch, x, out.edge_values, out.node_values)
    f_p = functional_forward(batch_p, x, out_p.edge_values, out_p.node_values)
    torch.testing.assert_close(f_p, f, rtol=1e-4, atol=1e-5)
    edited = batch_to_mlps(batch, out.edge_values, out.node_values)
    edited_p = batch_to_mlps(batch_p, out_p.edge_values, out_p.node_values)
    for a, b in zip(edited, edited_p):
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.norm}-{c.activation}-{len(c.skips)}skips")
def test_equivariance_to_hidden_permutations(config, fused):
    gen = torch.Generator().manual_seed(7)
    model = randomise(MLP(config), gen)
    _check_equivariance(make_net(seed=1, perturb=True), [model], gen, fused)


@pytest.mark.parametrize("fused", [True, False], ids=["no_grad", "autograd"])
def test_equivariance_on_a_batch_of_sampled_architectures(fused):
    gen = torch.Generator().manual_seed(8)
    models = task_models(12, seed=3)
    _check_equivariance(make_net(seed=2, perturb=True, activation="relu", edge_hidden=8), models, gen, fused)
    _check_equivariance(make_net(seed=3, perturb=True, node_norm=False, edge_norm=True), models, gen, fused)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"activation": "silu", "edge_norm": True},
        {"activation": "gelu", "node_norm": False},
        {"activation": "leaky_relu", "edge_hidden": 5},
        {"activation": "tanh"},
    ],
    ids=["relu", "silu-edge_norm", "gelu-no_node_norm", "leaky_relu-narrow", "tanh"],
)
def test_fused_inference_path_matches_autograd_path(kw):
    batch = mlps_to_batch(task_models(10, seed=5))
    net = make_net(seed=6, perturb=True, **kw)
    with torch.no_grad():
        net._workspace = EdgeWorkspace(net.config["edge_hidden"], torch.float32, "cpu", chunk=97)  # many chunks
        fused = net(batch)
    slow = net(batch)  # gradients enabled: the autograd path
    assert slow.edge_values.requires_grad and not fused.edge_values.requires_grad
    for name in ("edge_values", "node_values", "edge_logits", "input_node_logits"):
        torch.testing.assert_close(getattr(fused, name), getattr(slow, name).detach(), rtol=1e-5, atol=1e-5, msg=name)
    # the buffers are reused across calls of other sizes (smaller, then larger)
    for n in (2, 14):
        other = mlps_to_batch(task_models(n, seed=10 + n))
        with torch.no_grad():
            fused = net(other)
        slow = net(other)
        torch.testing.assert_close(fused.edge_values, slow.edge_values.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.edge_logits, slow.edge_logits.detach(), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    models = task_models(6, seed=4)
    batch = mlps_to_batch(models)
    net = make_net(seed=4).train()
    x = torch.randn(16, N_IN)
    target = functional_forward(batch, x).detach()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def loss_fn() -> torch.Tensor:
        out = net(batch)
        keep_e = out.edge_logits.softmax(-1)[:, 1]
        keep_in = out.input_node_logits.softmax(-1)[:, 1]
        y = functional_forward(batch, x, out.edge_values, out.node_values, edge_mask=keep_e, input_mask=keep_in)
        return (y - target - 1.0).square().mean() + out.node_values.square().mean()

    opt.zero_grad()
    loss_fn().backward()
    assert all(p.grad is not None for p in net.parameters())
    head_grads = [h.weight.grad.abs().sum() for h in [*net.edge_heads, *net.node_heads]]
    assert all(float(g) > 0 for g in head_grads)  # the zero-initialised heads learn from the first step
    opt.step()  # now the heads are non-zero and gradients reach the whole body
    opt.zero_grad()
    loss_fn().backward()
    zero = [n for n, p in net.named_parameters() if p.grad is None or not bool((p.grad != 0).any())]
    assert not zero, f"parameters without gradient: {zero}"


def test_encodings_limit_and_dtype():
    net = make_net()
    too_wide = mlp_to_graph(MLP(MLPConfig(12, (4,), 2)))
    with pytest.raises(UnsupportedArchitectureError):
        net(too_wide)
    too_deep = mlp_to_graph(MLP(MLPConfig(3, (2,) * 9, 2)))
    with pytest.raises(UnsupportedArchitectureError):
        net(too_deep)
    # float64 models are edited by a float32 network; a fresh network returns them bit for bit
    model = randomise(MLP(sample_config(random.Random(0), in_features=4, out_features=2)), torch.Generator())
    g = mlp_to_graph(model.double())
    out = net(g)
    assert out.edge_values.dtype == torch.float64 and torch.equal(out.edge_values, g.edge_attr[:, 0])


def test_config_and_sizes():
    net = GraphMetanetwork(hidden=32, layers=2, max_in=16, max_out=2, edge_hidden=16)
    assert net.config["edge_hidden"] == 16 and net.config["layers"] == 2
    assert len(net.layers) == 2 and net.alpha.tolist() == pytest.approx([0.01, 0.01])
    with pytest.raises(ValueError):
        GraphMetanetwork(hidden=0)
    with pytest.raises(ValueError):
        GraphMetanetwork(activation="softsign")


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_chunked_edge_pass_equals_autograd(activation, monkeypatch):
    """The chunked autograd function of training (hubedit.metanet.edge_pass) gives the plain autograd path's
    outputs and gradients, in float64 to 1e-12, and passes gradcheck over many small chunks."""
    import hubedit.metanet.edge_pass as edge_pass
    from hubedit.metanet.layers import BidirectionalLayer

    torch.manual_seed(0)
    layer = BidirectionalLayer(12, 6, activation).double()
    n_nodes, n_edges = 25, 300
    h = torch.randn(n_nodes, 12, dtype=torch.float64, requires_grad=True)
    e = torch.randn(n_edges, 6, dtype=torch.float64, requires_grad=True)
    edge_index = torch.randint(0, n_nodes, (2, n_edges))
    deg_in, deg_out = torch.rand(n_nodes, dtype=torch.float64), torch.rand(n_nodes, dtype=torch.float64)
    monkeypatch.setattr(edge_pass, "CHUNK_ELEMENTS", 6 * 64)  # several chunks
    results = []
    for chunked in (False, True):
        layer.chunked_backward = chunked
        layer.zero_grad()
        h.grad = e.grad = None
        h2, e2 = layer(h, e, edge_index, deg_in, deg_out)
        (h2.sin().sum() + e2.square().sum()).backward()
        results.append([h2.detach(), e2.detach(), h.grad.clone(), e.grad.clone(),
                        *(p.grad.clone() for p in layer.parameters())])
    for plain, chunked in zip(*results):
        torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda hh, ee: layer(hh, ee, edge_index, deg_in, deg_out), (h, e))


def test_film_conditioning_starts_as_identity_and_then_changes_every_layer():
    batch = mlps_to_batch(task_models(4, seed=3))
    torch.manual_seed(0)
    plain = GraphMetanetwork(hidden=16, layers=2, max_in=N_IN, cond_dim=1)
    torch.manual_seed(0)
    film = GraphMetanetwork(hidden=16, layers=2, max_in=N_IN, cond_dim=1, film=True)
    film.load_state_dict(plain.state_dict(), strict=False)
    cond = torch.linspace(-1, 1, 4).unsqueeze(1)
    a, b = plain(batch, cond=cond), film(batch, cond=cond)
    torch.testing.assert_close(a.edge_logits, b.edge_logits)  # zero-initialised FiLM: the same network
    with torch.no_grad():
        for lin in film.film:
            lin.weight.normal_()
    with torch.no_grad():
        fused = film(batch, cond=cond)
    slow = film(batch, cond=cond)
    assert not torch.allclose(slow.edge_logits, a.edge_logits)
    torch.testing.assert_close(fused.edge_logits, slow.edge_logits.detach(), rtol=1e-5, atol=1e-5)
    assert film.config["film"] is True and "film" not in plain.config
    with pytest.raises(ValueError, match="cond_dim"):
        GraphMetanetwork(hidden=8, layers=1, film=True)
