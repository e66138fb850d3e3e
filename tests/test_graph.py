"""MLP <-> parameter graph: exact round trips, batching of mixed architectures, functional forward, symmetries."""

from __future__ import annotations

import random

import pytest
import torch

from hubedit.errors import FeatureMismatchError, UnsupportedArchitectureError
from hubedit.graph import (
    NODE_FEATURES,
    batch_to_mlps,
    functional_forward,
    graph_configs,
    graph_layout,
    graph_permutation,
    graph_to_mlp,
    graphs_to_batch,
    mlp_to_graph,
    mlps_to_batch,
    permute_hidden,
    random_hidden_permutations,
)
from hubedit.graph.encoding import HIDDEN, INPUT, LINEAR, OUTPUT, SKIP, node_type_ids
from hubedit.mlp import ACTIVATIONS, MLP, NORMS, MLPConfig

from _graph_helpers import randomise, sample_config, sampled_models

N_CONFIGS = 240


def assert_same_model(a: MLP, b: MLP, x: torch.Tensor) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_sampler_covers_every_option():
    rng = random.Random(0)
    configs = [sample_config(rng) for _ in range(N_CONFIGS)]
    assert {c.activation for c in configs} == set(ACTIVATIONS)
    assert {c.norm for c in configs} == set(NORMS)
    assert any(c.skips for c in configs) and any(not c.skips for c in configs)
    assert any(s == 0 for c in configs for s, _ in c.skips) and any(s > 0 for c in configs for s, _ in c.skips)
    assert {c.depth for c in configs} == {1, 2, 3, 4, 5}
    assert any(len(c.skips_into(d)) == 2 for c in configs for d in range(2, c.depth + 1))


def test_round_trip_exact_on_sampled_configs():
    models = sampled_models(N_CONFIGS)
    for i, model in enumerate(models):
        x = torch.randn(7, model.config.in_features, generator=torch.Generator().manual_seed(i))
        graph = mlp_to_graph(model)
        assert graph.num_nodes == sum(model.config.widths)
        assert graph.edge_index.shape[1] == model.n_weights == graph.edge_attr.shape[0]
        assert_same_model(model, graph_to_mlp(graph), x)


def test_round_trip_through_one_batch_of_mixed_architectures():
    models = sampled_models(N_CONFIGS, seed=1)
    batch = mlps_to_batch(models)
    assert batch.num_graphs == len(models)
    back = batch_to_mlps(batch)
    for i, (a, b) in enumerate(zip(models, back)):
        assert_same_model(a, b, torch.randn(5, a.config.in_features, generator=torch.Generator().manual_seed(i)))
    # the torch_geometric collation of single graphs gives the same batch
    ref = graphs_to_batch([mlp_to_graph(m) for m in models[:20]])
    fast = mlps_to_batch(models[:20])
    for key in ref.keys():
        a, b = ref[key], fast[key]
        assert (torch.equal(a, b) if torch.is_tensor(a) else a == b), key
    assert [graph_configs(g)[0] for g in fast.to_data_list()] == [m.config for m in models[:20]]
    assert_same_model(models[3], graph_to_mlp(fast.get_example(3)), torch.randn(4, models[3].config.in_features))


def test_round_trip_float64_and_training_flag_and_counters():
    model = randomise(MLP(MLPConfig(5, (4, 6), 3, "tanh", "batchnorm", skips=((0, 2),))), torch.Generator().manual_seed(3))
    model = model.double().train()
    back = graph_to_mlp(mlp_to_graph(model))
    assert back.layers[0].weight.dtype == torch.float64 and not back.training
    assert_same_model(model.eval(), back, torch.randn(3, 5, dtype=torch.float64))
    assert int(back.norms[1].num_batches_tracked) == int(model.norms[1].num_batches_tracked)


def test_edited_values_written_back_and_read_again():
    models = sampled_models(30, seed=2)
    batch = mlps_to_batch(models)
    gen = torch.Generator().manual_seed(0)
    ev = torch.randn(batch.edge_index.shape[1], generator=gen)
    nv = torch.where(batch.x_mask, torch.randn(batch.x.shape, generator=gen).abs() + 0.1, torch.zeros(()))
    edited = batch_to_mlps(batch, ev.requires_grad_(), nv)
    again = mlps_to_batch(edited)
    assert torch.equal(again.edge_attr[:, 0], ev.detach())
    assert torch.equal(again.x, nv)
    assert not any(p.requires_grad and p.grad_fn is not None for m in edited for p in m.parameters())


def test_graph_structure_and_encodings():
    cfg = MLPConfig(3, (4, 5, 2), 2, "gelu", "layernorm", skips=((0, 2), (1, 3), (0, 3)))
    g = mlp_to_graph(MLP(cfg))
    lay = graph_layout(cfg)
    assert g.num_nodes == 3 + 4 + 5 + 2 + 2
    n_edges = 3 * 4 + (4 + 3) * 5 + (5 + 4 + 3) * 2 + 2 * 2
    assert g.edge_index.shape == (2, n_edges)
    # edges sorted by destination; skip edges marked
    assert bool((g.edge_index[1][1:] >= g.edge_index[1][:-1]).all())
    assert int((g.edge_kind == SKIP).sum()) == 3 * 5 + 4 * 2 + 3 * 2
    assert int((g.edge_kind == LINEAR).sum()) == 3 * 4 + 4 * 5 + 5 * 2 + 2 * 2
    assert g.node_kind.tolist() == [INPUT] * 3 + [HIDDEN] * 11 + [OUTPUT] * 2
    assert g.node_fan_in.tolist() == [0] * 3 + [3] * 4 + [7] * 5 + [12] * 2 + [2] * 2
    assert lay.n_edges == n_edges
    # presence mask: bias everywhere but inputs, LayerNorm affine on hidden nodes, no running statistics
    assert g.x_mask.sum(0).tolist() == [13, 11, 11, 0, 0]
    types = node_type_ids(g.node_kind, g.node_layer, g.node_pos, max_in=5, max_out=3, max_depth=8)
    assert types.tolist() == [0, 1, 2] + [8] * 4 + [9] * 5 + [10] * 2 + [5, 6]
    with pytest.raises(UnsupportedArchitectureError):
        node_type_ids(g.node_kind, g.node_layer, g.node_pos, max_in=2, max_out=3, max_depth=8)
    with pytest.raises(UnsupportedArchitectureError):
        node_type_ids(g.node_kind, g.node_layer, g.node_pos, max_in=5, max_out=3, max_depth=2)


def test_bad_inputs_are_refused():
    with pytest.raises(UnsupportedArchitectureError):
        mlp_to_graph(torch.nn.Linear(3, 2))  # type: ignore[arg-type]
    g = mlp_to_graph(MLP(MLPConfig(3, (4,))))
    with pytest.raises(ValueError):
        graph_to_mlp(g, edge_values=torch.zeros(5))
    with pytest.raises(ValueError):
        graph_to_mlp(g, node_values=torch.zeros(2, NODE_FEATURES))
    with pytest.raises(ValueError):
        graph_to_mlp(mlps_to_batch([MLP(MLPConfig(3, (4,)))] * 2))
    with pytest.raises(FeatureMismatchError):
        functional_forward(g, torch.zeros(2, 4))


def test_functional_forward_matches_modules_with_masks_and_gradients():
    models = sampled_models(24, seed=4, in_features=6, out_features=3)
    models += [models[0], models[5]]  # repeated configs are evaluated together
    batch = mlps_to_batch(models)
    x = torch.randn(9, 6)
    ref = torch.stack([m(x) for m in models])
    out = functional_forward(batch, x)
    assert out.shape == (len(models), 9, 3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # per-model inputs
    xs = torch.randn(len(models), 4, 6)
    torch.testing.assert_close(
        functional_forward(batch, xs), torch.stack([m(xi) for m, xi in zip(models, xs)]), rtol=1e-4, atol=1e-4
    )
    # masks: an edge mask equals zeroing those weights; an input mask equals masking the features
    gen = torch.Generator().manual_seed(1)
    edge_mask = (torch.rand(batch.edge_index.shape[1], generator=gen) > 0.3).float()
    input_mask = (torch.rand(len(models), 6, generator=gen) > 0.5).float()
    masked = batch_to_mlps(batch, edge_values=batch.edge_attr[:, 0] * edge_mask)
    ref = torch.stack([m(x * im) for m, im in zip(masked, input_mask)])
    out = functional_forward(batch, x, edge_mask=edge_mask, input_mask=input_mask.reshape(-1))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # gradients reach edited values and soft masks
    ev = batch.edge_attr[:, 0].clone().requires_grad_()
    nv = batch.x.clone().requires_grad_()
    soft = torch.full((batch.edge_index.shape[1],), 0.9, requires_grad=True)
    functional_forward(batch, x, ev, nv, edge_mask=soft).square().sum().backward()
    assert ev.grad is not None and bool((ev.grad != 0).any())
    assert nv.grad is not None and bool((nv.grad[batch.x_mask[:, 0]] != 0).any())
    assert soft.grad is not None and bool((soft.grad != 0).any())


@pytest.mark.parametrize("seed", range(6))
def test_hidden_permutations_keep_function_and_match_graph_permutation(seed):
    rng, gen = random.Random(100 + seed), torch.Generator().manual_seed(seed)
    for _ in range(10):
        model = randomise(MLP(sample_config(rng)), gen)
        perms = random_hidden_permutations(model.config, gen)
        permuted = permute_hidden(model, perms)
        x = torch.randn(8, model.config.in_features, generator=gen)
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-5)
        g, gp = mlp_to_graph(model), mlp_to_graph(permuted)
        node_perm, edge_perm = graph_permutation(model.config, perms)
        assert torch.equal(gp.x, g.x[node_perm])
        assert torch.equal(gp.edge_attr, g.edge_attr[edge_perm])
        assert torch.equal(gp.edge_index, g.edge_index)  # the structure is canonical


def test_calibration_rounds_reproduce_iterative_snip_on_own_labels():
    """The iterative-saliency feature of hubedit.graph.calibration, computed for a batch of models at once, keeps
    the same weights as the SNIP baseline (an independent implementation on modules) run on each model alone
    with the model's own labels."""
    from hubedit import baselines
    from hubedit.graph.calibration import calibration_features
    from hubedit.graph.writeback import batch_to_mlps

    torch.manual_seed(0)
    configs = [MLPConfig(6, (8, 16), 2, "relu", "batchnorm"), MLPConfig(6, (12,), 2, "tanh"),
               MLPConfig(6, (8, 8, 8), 2, "gelu", "layernorm", skips=((0, 2),))]
    models = [MLP(c).eval() for c in configs]
    for m in models:  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(64, 6)
    keep = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    batch = mlps_to_batch(models)
    features = calibration_features(batch, x, keep=keep, rounds=4)
    assert features.shape == (batch.edge_index.shape[1], 4)
    masked = batch_to_mlps(batch, batch.edge_attr.reshape(-1) * features[:, 2], batch.x)
    for model, mine, k in zip(models, masked, keep.tolist()):
        with torch.no_grad():
            own = model(x).argmax(-1)
        snip = baselines.snip_prune(model, k, x, own, iterations=4)
        assert torch.equal(baselines.masks_of(mine)["layers.0.weight"], baselines.masks_of(snip)["layers.0.weight"])
        assert all(torch.equal(a, b) for a, b in zip(baselines.masks_of(mine).values(), baselines.masks_of(snip).values()))
    # the first two columns are standardised within each model
    group = batch.batch.index_select(0, batch.edge_index[0])
    for g in range(3):
        col = features[group == g, :2]
        torch.testing.assert_close(col.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(col.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
