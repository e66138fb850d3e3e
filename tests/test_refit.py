"""Layer-wise refit (hubedit.mlp.refit) and the editor's ``refit`` setting."""

import json

import numpy as np
import pytest
import torch

from hubedit import MLP, MLPConfig, baselines
from hubedit.editor import Editor
from hubedit.errors import ConfigError
from hubedit.mlp.refit import refit, solve_masked_ridge

ARCHS = [
    dict(hidden=(16,), activation="relu", norm="none"),
    dict(hidden=(16, 12), activation="tanh", norm="layernorm", skips=((0, 2),)),
    dict(hidden=(8, 16, 8), activation="gelu", norm="batchnorm"),
    dict(hidden=(12, 12, 10), activation="leaky_relu", norm="none", skips=((1, 3),)),
]


def model(arch: dict, seed: int, in_features: int = 14) -> MLP:
    torch.manual_seed(seed)
    m = MLP(MLPConfig(in_features=in_features, **arch))
    if m.config.norm == "batchnorm":  # running statistics that are not the identity
        with torch.no_grad():
            for bn in m.norms:
                bn.running_mean.normal_(0, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def inputs(n: int, seed: int, in_features: int = 14) -> torch.Tensor:
    return torch.randn(n, in_features, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a['activation']}-{a['norm']}-{len(a['hidden'])}")
def test_refit_of_an_unedited_model_is_the_model(arch):
    """With nothing removed the original weights fit exactly and are the ridge's anchor: nothing moves."""
    m = model(arch, 0)
    same = refit(m, m, inputs(256, 1))
    for (name, a), b in zip(m.state_dict().items(), same.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a['activation']}-{a['norm']}-{len(a['hidden'])}")
def test_refit_keeps_the_pruned_pattern_and_brings_the_outputs_back(arch):
    m = model(arch, 3)
    pruned = baselines.magnitude_prune(m, 0.4)
    fitted = refit(m, pruned, inputs(512, 4), ridge=1e-2)
    masks = baselines.masks_of(pruned)
    assert all(torch.equal(masks[k], v) for k, v in baselines.masks_of(fitted).items())  # same zeros, exactly
    x_new = inputs(2000, 5)  # points the refit never saw
    with torch.no_grad():
        ref = m(x_new)
        before = (pruned(x_new) - ref).pow(2).mean()
        after = (fitted(x_new) - ref).pow(2).mean()
    assert after < 0.8 * before, (float(before), float(after))  # 0.32x-0.80x on these four
    assert not any(p is q for p, q in zip(pruned.parameters(), fitted.parameters()))  # a copy: the input is kept
    assert torch.equal(baselines.masks_of(pruned)[next(iter(masks))], masks[next(iter(masks))])


def test_masked_ridge_equals_per_row_least_squares_in_numpy():
    rng = np.random.default_rng(0)
    n, k, out, ridge = 300, 9, 5, 0.05
    x = rng.normal(size=(n, k))
    y = rng.normal(size=(n, out))
    w0 = rng.normal(size=(out, k))
    mask = rng.random((out, k)) < 0.6
    got = solve_masked_ridge(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w0), torch.from_numpy(mask),
                             ridge).numpy()
    alpha = ridge * np.mean(np.sum(x * x, axis=0) / n)
    for j in range(out):
        cols = np.flatnonzero(mask[j])
        xs = x[:, cols]
        # min |xs w - y_j|^2 / n + alpha |w - w0_j|^2, stacked as one ordinary least-squares problem
        a = np.vstack([xs / np.sqrt(n), np.sqrt(alpha) * np.eye(len(cols))])
        b = np.concatenate([y[:, j] / np.sqrt(n), np.sqrt(alpha) * w0[j, cols]])
        expect = np.zeros(k)
        expect[cols] = np.linalg.lstsq(a, b, rcond=None)[0]
        np.testing.assert_allclose(got[j], expect, atol=1e-10)


def test_masked_ridge_with_rows_alike_shares_one_system_and_gives_the_same_solution():
    """Rows with one mask (dropped inputs, an unpruned layer) take the shared-system path: the same solution as
    the per-row path (forced by a mask that needs a gradient), batched over models."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 200, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 200, 6, generator=gen, dtype=torch.float64)
    w0 = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    cols = (torch.rand(2, 1, 8, generator=gen) < 0.6).double()
    for mask in (cols.expand(2, 6, 8).contiguous(), torch.ones(2, 6, 8, dtype=torch.float64)):
        shared = solve_masked_ridge(x, y, w0, mask, 0.1)
        per_row = solve_masked_ridge(x, y, w0, mask.clone().requires_grad_(True), 0.1).detach()
        assert torch.allclose(shared, per_row, atol=1e-10)
        assert torch.all(shared[mask == 0] == 0)


def test_refit_refuses_what_it_cannot_do():
    a, b = model(ARCHS[0], 0), model(ARCHS[1], 0)
    with pytest.raises(ValueError, match="one architecture"):
        refit(a, b, inputs(64, 0))
    with pytest.raises(ValueError, match="ridge > 0"):
        refit(a, a, inputs(64, 0), ridge=0.0)
    with pytest.raises(Exception, match=r"\(batch, 14\)"):
        refit(a, a, inputs(64, 0, in_features=13))


def _prune_editor(**kw) -> Editor:
    torch.manual_seed(0)
    return Editor(requirement="prune", variant="prune", task="adult", target_range=[0.05, 0.8],
                  metanet={"hidden": 16, "layers": 2, "calibration": 128, "calibration_rounds": 2, "prior_masks": True},
                  **kw)


def test_an_editor_with_refit_edits_then_refits_on_its_calibration_batch(tmp_path):
    models = [model(ARCHS[i % 4], 10 + i) for i in range(4)]
    plain = _prune_editor()
    refitting = plain.with_refit(0.03)
    assert torch.equal(_prune_editor(refit=0.03).metanet.calibration_inputs, refitting.metanet.calibration_inputs)
    assert refitting.settings["refit"] == 0.03 and plain.settings["refit"] is None
    x_cal = refitting.metanet.calibration_inputs
    for m, a, b in zip(models, plain.edit_many(models, target=0.3), refitting.edit_many(models, target=0.3)):
        expect = refit(m, a, x_cal, ridge=0.03)
        for (name, p), q in zip(expect.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(p, q, atol=1e-6), name
        assert baselines.sparsity(b) == baselines.sparsity(a)  # the requirement still holds
    refitting.save_pretrained(tmp_path / "ed")
    assert json.loads((tmp_path / "ed" / "config.json").read_text())["refit"] == 0.03
    again = Editor.from_pretrained(tmp_path / "ed")
    assert again.settings["refit"] == 0.03
    assert torch.equal(again.edit(models[0], target=0.3).layers[0].weight,
                       refitting.edit(models[0], target=0.3).layers[0].weight)
    back = again.with_refit(None)
    assert back.settings["refit"] is None
    assert torch.equal(back.edit(models[0], target=0.3).layers[0].weight, plain.edit(models[0], target=0.3).layers[0].weight)


def test_refit_setting_is_checked():
    with pytest.raises(ConfigError, match="ridge > 0"):
        _prune_editor(refit=-1.0)
    with pytest.raises(ConfigError, match="calibration batch"):
        Editor(requirement="prune", variant="prune", task="adult", target_range=[0.05, 0.8], refit=0.03,
               metanet={"hidden": 16, "layers": 2})
    with pytest.raises(ConfigError, match="undo"):
        Editor(requirement="fairness", task="adult", lam=1.0, refit=0.03, metanet={"hidden": 16, "layers": 2, "calibration": 64})


def test_graph_refit_of_a_mixed_batch_equals_the_per_model_refit_and_is_differentiable():
    """hubedit.graph.refit (models of one architecture solved together) against hubedit.mlp.refit, model by model;
    gradients reach the edited values and the keep mask (training an editor through its refit)."""
    from hubedit.graph import batch_to_mlps, mlps_to_batch
    from hubedit.graph.refit import refit_values

    originals = [model(ARCHS[i % 4], 20 + i) for i in range(6)]  # two pairs share an architecture
    pruned = [baselines.magnitude_prune(m, 0.35) for m in originals]
    batch = mlps_to_batch(originals)
    edited = mlps_to_batch(pruned)
    keep = (edited.edge_attr.reshape(-1) != 0).double().requires_grad_(True)
    ev = edited.edge_attr.reshape(-1).double().requires_grad_(True)
    x = inputs(300, 7)
    new_ev, new_nv, _ = refit_values(batch, x, ev, edited.x.double(), keep, ridge=0.02)
    for orig, pr, got in zip(originals, pruned, batch_to_mlps(batch, new_ev.detach().float(), new_nv.detach().float())):
        expect = refit(orig, pr, x, ridge=0.02)
        for (name, a), b in zip(expect.state_dict().items(), got.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5), name
    (new_ev.pow(2).sum() + new_nv.pow(2).sum()).backward()
    assert torch.isfinite(keep.grad).all() and keep.grad.abs().sum() > 0
    assert torch.isfinite(ev.grad).all() and ev.grad.abs().sum() > 0


def test_reselect_keeps_each_layers_count_and_picks_by_weight_times_input_norm():
    """refit_values(reselect=True): per model and layer block, the same number of kept weights as the given mask,
    chosen by |w| * |input|_2; the first block's choice checked against a direct top-k."""
    from hubedit.graph import mlps_to_batch
    from hubedit.graph.layout import graph_layout
    from hubedit.graph.refit import refit_values

    originals = [model(ARCHS[i % 4], 40 + i) for i in range(5)]
    pruned = [baselines.magnitude_prune(m, 0.3) for m in originals]
    batch, edited = mlps_to_batch(originals), mlps_to_batch(pruned)
    keep = (edited.edge_attr.reshape(-1) != 0).double()
    x = inputs(200, 8)
    ev, _, new_keep = refit_values(batch, x, edited.edge_attr.reshape(-1).double(), edited.x.double(), keep,
                                   ridge=0.02, reselect=True)
    assert torch.all(ev[new_keep == 0] == 0)
    assert not torch.equal(new_keep, keep)  # magnitude is not what the refit would choose
    start = 0
    for orig in originals:
        lay = graph_layout(orig.config)
        for block in lay.blocks:
            sl = slice(start + block.start, start + block.start + block.size)
            assert new_keep[sl].sum() == keep[sl].sum()
        first = lay.blocks[0]
        w = orig.layers[0].weight.detach().double()
        score = (w.abs() * x.double().norm(dim=0)).reshape(-1)
        n = int(keep[start + first.start: start + first.start + first.size].sum())
        expect = torch.zeros_like(score)
        expect[score.argsort(descending=True)[:n]] = 1
        assert torch.equal(new_keep[start + first.start: start + first.start + first.size], expect)
        start += sum(b.size for b in lay.blocks)


def test_an_editor_that_reselects_is_never_worse_on_its_calibration_batch(tmp_path):
    """reselect: per model the better of two refits on the calibration batch, so never worse there than the plain
    refit; the kept fraction is still exactly the target; the setting is saved and checked."""
    from hubedit.metrics.scores import jsd

    models = [model(ARCHS[i % 4], 60 + i) for i in range(6)]
    plain = _prune_editor(refit=0.03)
    both = plain.with_refit(0.03, reselect=True)
    x_cal = both.metanet.calibration_inputs.float()
    a, b = plain.edit_many(models, target=0.2), both.edit_many(models, target=0.2)
    gains = []
    for m, pa, pb in zip(models, a, b):
        with torch.no_grad():
            ref = m.predict_proba(x_cal).double()
            ja = float(jsd(ref, pa.predict_proba(x_cal).double()).mean())
            jb = float(jsd(ref, pb.predict_proba(x_cal).double()).mean())
        assert jb <= ja + 1e-7
        gains.append(ja - jb)
        assert baselines.sparsity(pb) == baselines.sparsity(pa)
    assert max(gains) > 0  # the re-chosen mask wins on some model
    both.save_pretrained(tmp_path / "ed")
    again = Editor.from_pretrained(tmp_path / "ed")
    assert again.settings["reselect"] is True
    assert torch.equal(again.edit(models[0], target=0.2).layers[0].weight, b[0].layers[0].weight)
    with pytest.raises(ConfigError, match="reselect"):
        _prune_editor(reselect=True)  # no refit
    with pytest.raises(ConfigError, match="reselect"):
        _prune_editor(refit=0.03, reselect=1)


def test_greedy_feature_selection_takes_the_best_single_feature_and_the_editor_uses_it():
    """greedy_input_masks: exactly ``counts[m]`` features per model; its first pick is the single feature whose
    per-model refit (hubedit.mlp.refit, computed here independently) has the lowest JSD on the calibration batch.
    An editor with greedy_features keeps those features up to that count and its own above it."""
    from hubedit.editor.editing import greedy_input_masks, run_edit
    from hubedit.graph import mlps_to_batch
    from hubedit.metrics.scores import jsd

    models = [model(ARCHS[i % 4], 80 + i) for i in range(4)]
    dm = Editor(requirement="minimise", task="adult", target_range=[1, 13], refit=0.3,
                metanet={"hidden": 16, "layers": 2, "calibration": 96, "feature_importance": True})
    x_cal = dm.metanet.calibration_inputs.float()
    batch = mlps_to_batch(models)
    with torch.no_grad():
        _, edit = run_edit(dm.metanet, dm.requirement, batch, lam=None, lam_range=None, hard=True,
                           target=torch.full((4,), 3.0, dtype=torch.float64), target_range=dm.target_range)
        masks = greedy_input_masks(batch, edit, x_cal, 0.3, torch.tensor([0, 1, 2, 3]))
    assert masks.sum(1).tolist() == [0, 1, 2, 3]
    with torch.no_grad():  # candidates refit a few at a time (the last group padded): the same choices
        assert torch.equal(greedy_input_masks(batch, edit, x_cal, 0.3, torch.tensor([0, 1, 2, 3]), max_graphs=12), masks)
    losses = []
    for j in range(14):  # model 1 keeps one feature: the best single one
        dropped = deepcopy_model_without_inputs(models[1], keep=[j])
        refit_one = refit(models[1], dropped, x_cal, ridge=0.3)
        with torch.no_grad():
            losses.append(float(jsd(models[1].predict_proba(x_cal).double(), refit_one.predict_proba(x_cal).double()).mean()))
    assert int(torch.nonzero(masks[1]).flatten()) == int(np.argmin(losses))

    greedy = dm.with_refit(0.3, greedy_features=2)
    for count in (1, 2, 5):
        plain, chosen = dm.edit_many(models, target=count), greedy.edit_many(models, target=count)
        for m, a, b in zip(models, plain, chosen):
            assert len(b.record["kept_features"]) == count
            if count > 2:
                assert b.record["kept_features"] == a.record["kept_features"]
            elif count == 1:  # greedy's single feature is the best on the calibration batch
                with torch.no_grad():
                    ref = m.predict_proba(x_cal).double()
                    assert (float(jsd(ref, b.predict_proba(x_cal).double()).mean())
                            <= float(jsd(ref, a.predict_proba(x_cal).double()).mean()) + 1e-9)
    with pytest.raises(ConfigError, match="greedy_features"):
        _prune_editor(refit=0.03, greedy_features=2)
    with pytest.raises(ConfigError, match="greedy_features"):
        dm.with_refit(None, greedy_features=2)
    with pytest.raises(ConfigError, match="greedy_features"):
        Editor(requirement="minimise", task="adult", lam=1.0, refit=0.3, greedy_features=2,
               metanet={"hidden": 16, "layers": 2, "calibration": 64})


def deepcopy_model_without_inputs(m: MLP, keep: list[int]) -> MLP:
    """A copy of ``m`` whose weights from every input feature but ``keep`` are 0 (a data-minimisation edit)."""
    from copy import deepcopy

    out = deepcopy(m)
    drop = [j for j in range(m.config.in_features) if j not in keep]
    with torch.no_grad():
        out.layers[0].weight[:, drop] = 0
        for key, layer in out.skips.items():
            if key.startswith("0_"):
                layer.weight[:, drop] = 0
    return out


def test_refit_variants_solved_together_equal_separate_refits_and_carry_their_logits():
    """refit_variants(reselect=(False, True)) gives the two refit_values results of separate calls, each with the
    logits a functional forward of its values gives, and the originals' logits; the refit_edit choice is the
    variant with the lower JSD on those logits, model by model."""
    from hubedit.editor.editing import Edit, _refit_and_jsd
    from hubedit.graph import mlps_to_batch
    from hubedit.graph.functional import functional_forward
    from hubedit.graph.refit import refit_values, refit_variants
    from hubedit.metrics.scores import jsd_from_logits

    originals = [model(ARCHS[i % 4], 60 + i) for i in range(7)]  # mixed architectures, some shared
    pruned = [baselines.magnitude_prune(m, 0.25) for m in originals]
    batch, edited = mlps_to_batch(originals), mlps_to_batch(pruned)
    keep = (edited.edge_attr.reshape(-1) != 0).double()
    ev, nv = edited.edge_attr.reshape(-1).double(), edited.x.double()
    x = inputs(150, 9)
    variants, reference = refit_variants(batch, x, ev, nv, keep, ridge=0.05, reselect=(False, True))
    originals_forward = functional_forward(batch, x.double(), batch.edge_attr.double(), batch.x.double())
    torch.testing.assert_close(reference, originals_forward, rtol=1e-9, atol=1e-9)
    for variant, reselect in zip(variants, (False, True)):
        alone = refit_values(batch, x, ev, nv, keep, ridge=0.05, reselect=reselect)
        for got, expect in zip(variant[:3], alone):
            torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-9)
        forward = functional_forward(batch, x.double(), variant.edge_values, variant.node_values,
                                     edge_mask=variant.keep)
        torch.testing.assert_close(variant.logits, forward, rtol=1e-8, atol=1e-8)
    jsd = torch.stack([jsd_from_logits(reference, v.logits).mean(-1) for v in variants])
    assert bool((jsd[1] < jsd[0]).any()) and bool((jsd[1] > jsd[0]).any())  # each variant wins somewhere here
    chosen, best = _refit_and_jsd(batch, Edit(ev, nv, keep.clone()), x, 0.05, reselect=True)
    torch.testing.assert_close(best, jsd.min(0).values, rtol=1e-9, atol=1e-12)
    again = jsd_from_logits(reference, functional_forward(batch, x.double(), chosen.edge_values, chosen.node_values,
                                                          edge_mask=chosen.edge_mask)).mean(-1)
    torch.testing.assert_close(again, best, rtol=1e-7, atol=1e-10)


@pytest.mark.skipif(not __import__("hubedit.graph.native_kernels", fromlist=["available"]).available(),
                    reason="no C++ compiler here: the graph kernels are not built")
def test_refit_kernel_equals_the_torch_formulation_in_float64():
    """The C++ refit (float32 inputs, float64 solves; hubedit/graph/kernels/refit.cpp) against refit_variants' torch
    formulation run in float64, for both variants, on mixed architectures (every norm, skips, six activations),
    with edited node values (biases and norm parameters moved) as the anchor."""
    from hubedit.graph import mlps_to_batch, native_kernels
    from hubedit.graph.encoding import COL_BIAS, COL_NORM_WEIGHT
    from hubedit.graph.refit import refit_variants
    from hubedit.metrics.scores import jsd_from_logits

    archs = ARCHS + [dict(hidden=(6, 10), activation=a, norm=n) for a, n in
                     (("silu", "layernorm"), ("sigmoid", "batchnorm"), ("relu", "batchnorm"))]
    originals = [model(archs[i % len(archs)], 80 + i) for i in range(len(archs) + 3)]  # some configs twice
    pruned = [baselines.magnitude_prune(m, 0.3 + 0.05 * (i % 3)) for i, m in enumerate(originals)]
    batch, edited = mlps_to_batch(originals), mlps_to_batch(pruned)
    keep = (edited.edge_attr.reshape(-1) != 0).float()
    nv = edited.x.clone()
    nv[:, COL_BIAS] += 0.05 * torch.randn(nv.shape[0], generator=torch.Generator().manual_seed(3))
    nv[:, COL_NORM_WEIGHT] *= 1.1
    ev = edited.edge_attr.reshape(-1) + 0.01  # the anchor differs from the kept weights too
    x = inputs(256, 11)
    assert native_kernels.available()
    got, got_ref = refit_variants(batch, x, ev, nv, keep, ridge=0.01, reselect=(False, True))
    double = batch.clone()
    double.edge_attr, double.x = batch.edge_attr.double(), batch.x.double()
    expect, expect_ref = refit_variants(double, x.double(), ev.double(), nv.double(), keep.double(), ridge=0.01,
                                        reselect=(False, True))
    torch.testing.assert_close(got_ref.double(), expect_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(got, expect):
        assert torch.equal(a.keep.double(), b.keep)
        assert float(a.keep.sum()) == float(keep.sum())
        torch.testing.assert_close(a.edge_values.double(), b.edge_values, rtol=1e-3, atol=2e-4)
        torch.testing.assert_close(a.node_values.double(), b.node_values, rtol=1e-3, atol=2e-4)
        torch.testing.assert_close(a.logits.double(), b.logits, rtol=1e-3, atol=2e-4)
        assert bool((a.edge_values[a.keep == 0] == 0).all())
        assert b.jsd is None  # the torch formulation leaves the JSD to refit_jsd; the kernel's is the same figure
        torch.testing.assert_close(a.jsd, jsd_from_logits(got_ref, a.logits).mean(-1), rtol=1e-4, atol=1e-7)
        assert float(a.jsd.max()) > 1e-5
    assert not torch.equal(got[1].keep, got[0].keep)  # the reselected mask is another one
    # gradients wanted: the torch formulation runs (the kernel has no backward)
    ev_g = ev.clone().requires_grad_(True)
    (new,), _ = refit_variants(batch, x, ev_g, nv, keep, ridge=0.01)
    new.edge_values.sum().backward()
    assert ev_g.grad is not None and float(ev_g.grad.abs().sum()) > 0
