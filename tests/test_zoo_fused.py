"""The fused layer kernels of the batched trainer compute the trainer's torch formulation: same losses,
gradients, BatchNorm statistics and dropout draws, for every norm x activation, with skips and padding."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
import sys
import warnings
from dataclasses import replace

import pytest
import torch

from hubedit.zoo import fused
from hubedit.zoo.trainer import ModelGroup
from test_zoo_training import _config, _randomise, _zoo_of_every_kind

needs_kernels = pytest.mark.skipif(not fused.available(), reason="no C++ compiler: the trainer uses its torch formulation")


def _fused_and_reference(configs, seed=1):
    fast, ref = ModelGroup(configs), ModelGroup(configs)
    _randomise(fast, seed)
    _randomise(ref, seed)
    ref.use_fused = False
    return fast, ref


def _loss_and_grads(group, xb, yb, step):
    for leaf in group.p.values():
        leaf.grad = None
    per = group._per_model_loss(group.p, xb, yb, step)
    per.sum().backward()
    return per.detach(), {n: leaf.grad * group._mask_views[n] for n, leaf in group.p.items()}


@needs_kernels
@pytest.mark.parametrize("step", [None, 7], ids=["no-dropout", "dropout"])
def test_fused_training_step_equals_torch_formulation(step):
    fast, ref = _fused_and_reference(_zoo_of_every_kind())
    assert fast.use_fused and not ref.use_fused
    gen = torch.Generator().manual_seed(3)
    xb = torch.randn(fast.n_models, 48, 16, generator=gen) * 2
    yb = torch.randint(0, 2, (fast.n_models, 48), generator=gen)
    st = None if step is None else torch.tensor(step)
    loss_f, grads_f = _loss_and_grads(fast, xb, yb, st)
    loss_r, grads_r = _loss_and_grads(ref, xb, yb, st)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-6)
    for name in grads_r:  # real (unpadded) entries; padded ones are masked out of every update
        scale = grads_r[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    for l in ref.running_mean:
        torch.testing.assert_close(fast.running_mean[l], ref.running_mean[l], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.running_var[l], ref.running_var[l], rtol=1e-5, atol=1e-6)
    # the dropout actually dropped something (the two runs differ only through it)
    if step is not None:
        assert not torch.allclose(loss_f, _loss_and_grads(fast, xb, yb, None)[0])


@needs_kernels
def test_kernel_dropout_draw_is_the_groups_keep_mask():
    """With z > 0, relu and no norm, h is exactly the keep factor: the kernel's counter-based draw is
    ``ModelGroup._dropout_keep`` bit for bit (so the fused and torch paths train the same models)."""
    cfgs = [_config(i, (64, 64), "relu", "none", dropout=p) for i, p in enumerate((0.0, 0.1, 0.2, 0.5))]
    group = ModelGroup(cfgs)
    B, step = 40, torch.tensor(123)
    for l in (1, 2):
        z = torch.ones(group.n_models, B, group.widths[l])
        h, d, *_ = torch.ops.hubedit.group_layer(
            z, torch.zeros(group.n_models, group.widths[l]), None, None, group._dropout_key(step, l).view(-1), group._drop_thr.view(-1), group.drop_scale.view(-1),
            group._norm_code, group._act_code, group._width_code[l], group.norm_eps, False,
        )
        keep = group._dropout_keep(step, l, B)
        assert torch.equal(h, keep) and d.numel() == 0
        kept = (keep > 0).float().mean(dim=(1, 2))
        assert kept[0] == 1.0 and abs(kept[3].item() - 0.5) < 0.03


@needs_kernels
def test_fused_training_forward_matches_extracted_models():
    """Training-mode forward (batch statistics, no dropout) of the fused path is each model's own forward."""
    group = ModelGroup([c for c in _zoo_of_every_kind() if c.mlp.dropout == 0.0])
    _randomise(group, 4)
    assert group.use_fused
    xb = torch.randn(group.n_models, 32, 16)
    out = group.forward(xb, training=True)
    for g in range(group.n_models):
        ref = group.extract(g).train()(xb[g])
        torch.testing.assert_close(out[g], ref, rtol=1e-5, atol=1e-5)


def test_kernels_can_be_switched_off():
    code = (
        "from hubedit.zoo import fused; from hubedit.zoo.trainer import ModelGroup;"
        "from test_zoo_training import _zoo_of_every_kind;"
        "g = ModelGroup(_zoo_of_every_kind()); print(fused.available(), g.use_fused)"
    )
    env = {**os.environ, "HUBEDIT_FUSED_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parent, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_failed_kernel_build_falls_back_to_torch(monkeypatch, tmp_path):
    """A compiler that fails leaves the trainer on its torch formulation, with a warning that says why."""
    monkeypatch.setenv("HUBEDIT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(fused, "_compiler", lambda: shutil.which("false") or "false")  # every build step fails
    fused._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not fused.available()
        assert any("fused trainer kernels unavailable" in str(w.message) for w in caught)
        assert not ModelGroup(_zoo_of_every_kind()[:3]).use_fused
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-built left behind
    finally:
        fused._library.cache_clear()


@needs_kernels
def test_kernels_stay_finite_and_exact_on_extreme_pre_activations():
    """Large pre-activations (a model on its way to diverging) give the torch activations' values, not the
    NaN an overflowing exp gives under the kernels' fast-math flags (sigmoid / silu below -88)."""
    from hubedit.mlp import activation_fn

    vals = torch.tensor([-1e30, -1e4, -200.0, -100.0, -89.0, -88.0, -20.0, -1.0, 0.0, 1.0, 20.0, 88.0, 89.0, 1e4, 1e30])
    G, W = len(fused.ACT_CODES), 32
    z = torch.zeros(G, 1, W)
    z[:, 0, : len(vals)] = vals
    h, d, *_ = torch.ops.hubedit.group_layer(
        z, torch.zeros(G, W), None, None, None, torch.zeros(G, dtype=torch.int64), torch.ones(G),
        torch.zeros(G, dtype=torch.int32), torch.tensor(list(fused.ACT_CODES.values()), dtype=torch.int32),
        torch.full((G,), W, dtype=torch.int32), 1e-5, True,
    )
    for g, name in enumerate(fused.ACT_CODES):
        out = h[g, 0, : len(vals)]
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out, activation_fn(name)(vals), rtol=1e-5, atol=1e-6, msg=name)
        if fused.ACT_CODES[name] >= 2:  # stored derivatives
            assert torch.isfinite(d[g, 0, : len(vals)]).all(), name


# --- the whole-step kernel ------------------------------------------------------------------------------
def _batch(group, B, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(group.n_models, B, group.in_features, generator=gen) * 2, torch.randint(0, group.out_features, (group.n_models, B), generator=gen)


@needs_kernels
@pytest.mark.parametrize("classes", [2, 3])
def test_native_step_equals_torch_formulation(classes):
    """One step of the whole-step kernel from the same state as the torch formulation: same gradients,
    BatchNorm running statistics and AdamW update (every norm x activation, depths 1-4, skips, dropout,
    padding; the two-class loss and the general cross-entropy); padded entries stay exact zeros."""
    configs = [replace(c, mlp=replace(c.mlp, out_features=classes)) for c in _zoo_of_every_kind()]
    native, ref = _fused_and_reference(configs)
    ref.use_native = False
    assert native.use_native
    for k, step in enumerate((0, 7, 30)):
        native.step_count = ref.step_count = step
        for name in ("flat", "exp_avg", "exp_avg_sq"):
            getattr(ref, name).copy_(getattr(native, name))
        for l in native.running_mean:
            ref.running_mean[l].copy_(native.running_mean[l])
            ref.running_var[l].copy_(native.running_var[l])
        xb, yb = _batch(native, 48, k)
        native.train_step(xb, yb)
        ref.train_step(xb, yb)
        g_nat, g_ref = native.grad * native.pmask, ref.grad * ref.pmask
        scale = g_ref.abs().max().item()
        assert scale > 0.05
        torch.testing.assert_close(g_nat, g_ref, rtol=1e-4, atol=1e-6 * scale)
        # AdamW moves a weight by about lr whatever its gradient's size, so compare where it is not ~0
        clear = ref.exp_avg_sq.sqrt() > 1e-5
        assert clear.sum() > 0.5 * ref.pmask.sum()
        torch.testing.assert_close(native.flat[clear], ref.flat[clear], rtol=1e-4, atol=1e-6)
        assert not bool(((native.flat != 0) & (native.pmask == 0)).any())
        for g, c in enumerate(native.configs):  # running statistics of the models' real BatchNorm layers
            if c.mlp.norm == "batchnorm":
                for l in range(1, c.mlp.depth + 1):
                    w = native.real_widths[g][l]
                    torch.testing.assert_close(native.running_mean[l][g, :w], ref.running_mean[l][g, :w], rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(native.running_var[l][g, :w], ref.running_var[l][g, :w], rtol=1e-5, atol=1e-6)


def test_native_segments_are_exactly_the_real_entries():
    group = ModelGroup(_zoo_of_every_kind())
    cover = torch.zeros_like(group.pmask)
    for g in range(group.n_models):
        for off, n in group._real_segments(g):
            cover[off : off + n] += 1
    assert torch.equal(cover, group.pmask)


@needs_kernels
def test_native_models_do_not_depend_on_their_group():
    """Each model's step reads and writes only its own blocks: a model trained with 17 others of every
    shape and kind ends bit-identical to the same model trained in a group of two."""
    configs = _zoo_of_every_kind()
    big = ModelGroup(configs)
    pick = [big.configs[5].config_id, big.configs[12].config_id]
    small = ModelGroup([c for c in configs if c.config_id in pick])
    rows = {c.config_id: g for g, c in enumerate(big.configs)}
    for step in range(4):
        xb, yb = _batch(big, 40, step)
        big.train_step(xb, yb)
        idx = torch.tensor([rows[c.config_id] for c in small.configs])
        small.train_step(xb[idx], yb[idx])
    for g, c in enumerate(small.configs):
        a, b = big.state_dict_of(rows[c.config_id]), small.state_dict_of(g)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_kernels
def test_native_step_refuses_malformed_batches():
    group = ModelGroup(_zoo_of_every_kind()[:3])
    xb, yb = _batch(group, 8, 0)
    plan, state, _ = group._native_plan()
    before = group.flat.clone()
    with pytest.raises(ValueError, match=r"float32 \(G, B, F\)"):
        fused.group_step(plan, state, xb.double(), yb, 0, -1.0, 1e-8)
    with pytest.raises(ValueError, match=r"float32 \(G, B, F\)"):
        fused.group_step(plan, state, xb[:, :, :-1].contiguous(), yb, 0, -1.0, 1e-8)
    with pytest.raises(ValueError, match="int64"):
        fused.group_step(plan, state, xb, yb.int(), 0, -1.0, 1e-8)
    assert torch.equal(group.flat, before)  # nothing was touched


@needs_kernels
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_native_step_leaves_a_non_finite_model_untouched(activation):
    """A model fed a NaN is reported (NaN loss) and not updated; the others train. Checked from the bits
    (the kernels are compiled with -ffast-math, under which isfinite() may be folded to true) and on the
    gradients too: a relu maps NaN to 0 in the forward pass, so only the weight gradient shows it."""
    group = ModelGroup([_config(i, (16, 32), activation, "none", ((0, 2),)) for i in range(4)])
    xb, yb = _batch(group, 16, 0)
    xb[2, 5, 3] = float("nan")
    plan, state, _ = group._native_plan()
    before = {n: group.p[n].detach().clone() for n in group.p}
    loss = fused.group_step(plan, state, xb, yb, 0, -1.0, 1e-8)
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all()
    for n, t in group.p.items():
        assert torch.equal(t[2], before[n][2]), n
        assert not torch.equal(t[0], before[n][0]), n
