"""Batched population training: the batched math is the MLP family's math, checkpoints reload exactly,
divergence is contained, builds are deterministic and resumable."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hubedit.errors import ConfigError
from hubedit.mlp import ACTIVATIONS, MLP, NORMS, MLPConfig
from hubedit.zoo import build as build_mod
from hubedit.zoo.build import build_checkpoints, build_zoo
from hubedit.zoo.presets import ZooPreset
from hubedit.zoo.records import TrainConfig, ZooConfig, model_id
from hubedit.zoo.sampling import sample_configs
from hubedit.zoo.trainer import (
    TRAINER_REVISION,
    ModelGroup,
    compile_available,
    native_available,
    evaluation_data,
    init_state_dict,
    train_group,
    train_single,
    training_data,
)


def _config(i, hidden, act, norm, skips=(), dropout=0.0, bs=64, lr=3e-3, epochs=2, cps=(1, 2), n_features=16):
    return ZooConfig(
        config_id=i,
        mlp=MLPConfig(in_features=n_features, hidden=hidden, activation=act, norm=norm, dropout=dropout, skips=skips),
        train=TrainConfig(batch_size=bs, lr=lr, weight_decay=1e-4, epochs=epochs),
        seed=1000 + i,
        checkpoint_epochs=cps,
    )


def _zoo_of_every_kind(n_features=16, **kw):
    """Every activation x every norm, depths 1-4, different widths, skips from the input and hidden layers."""
    archs = [
        ((8,), ()),
        ((16, 32), ((0, 2),)),
        ((8, 16, 64), ((0, 2), (0, 3), (1, 3))),
        ((16, 16, 32, 64), ((1, 3), (0, 4), (2, 4))),
        ((32, 64, 64), ((1, 3),)),
        ((64, 64, 64, 64), ((0, 2), (1, 4))),
    ]
    out, i = [], 0
    for a, act in enumerate(ACTIVATIONS):
        for n, norm in enumerate(NORMS):
            hidden, skips = archs[(a + 2 * n) % len(archs)]
            out.append(_config(i, hidden, act, norm, skips, dropout=(0.0, 0.1, 0.2)[i % 3], n_features=n_features, **kw))
            i += 1
    return out


def _one_batch_size(configs, bs=64):
    return [replace(c, train=replace(c.train, batch_size=bs)) for c in configs]


def _randomise(group: ModelGroup, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        group.flat.add_(torch.randn(group.flat.shape, generator=gen) * 0.05 * group.pmask)
        for l in group.running_mean:
            group.running_mean[l].normal_(generator=gen)
            group.running_var[l].uniform_(0.5, 2.0, generator=gen)


def test_init_is_nn_linear_default_and_group_independent():
    c = _config(0, (8, 16), "relu", "batchnorm", ((0, 2),))
    sd = init_state_dict(c.mlp, 5)
    assert set(sd) == set(MLP(c.mlp).state_dict())
    for k, v in sd.items():
        assert v.shape == MLP(c.mlp).state_dict()[k].shape
        if k.endswith("weight") and ("layers" in k or "skips" in k):
            assert v.abs().max() <= 1 / math.sqrt(v.shape[1]) + 1e-7
    assert all(torch.equal(sd[k], init_state_dict(c.mlp, 5)[k]) for k in sd)
    others = _zoo_of_every_kind()
    c1 = replace(c, seed=others[0].seed, config_id=99)
    alone = ModelGroup([c1]).state_dict_of(0)
    together = ModelGroup([c1] + others[1:])
    g = [x.config_id for x in together.configs].index(99)
    assert all(torch.equal(alone[k], together.state_dict_of(g)[k]) for k in alone)


def test_batched_forward_equals_mlp_forward():
    group = ModelGroup(_zoo_of_every_kind())
    assert group.depth == 4 and len(group._norm_sel) == 3 and len(group._act_onehot) == len(ACTIVATIONS)
    _randomise(group)
    x = torch.randn(50, 16)
    with torch.no_grad():
        out = group.forward(x)  # eval mode
        for g in range(group.n_models):
            ref = group.extract(g)(x)
            assert torch.allclose(out[g], ref, atol=1e-5, rtol=1e-5), group.configs[g].mlp
        # training mode (batch statistics) without dropout, each model its own batch
        nodrop = ModelGroup([replace(c, mlp=replace(c.mlp, dropout=0.0)) for c in _zoo_of_every_kind()])
        _randomise(nodrop, 1)
        xb = torch.randn(nodrop.n_models, 32, 16)
        out = nodrop.forward(xb, training=True)
        for g in range(nodrop.n_models):
            ref = nodrop.extract(g).train()(xb[g])
            assert torch.allclose(out[g], ref, atol=1e-5, rtol=1e-5)


def test_dropout_masks_rate_and_independence_of_group():
    cfgs = [_config(i, (64, 64), "relu", "none", dropout=p) for i, p in enumerate((0.0, 0.1, 0.2))]
    group = ModelGroup(cfgs)
    keep = group._dropout_keep(torch.tensor(7), 1, 64)
    assert keep.shape == (3, 64, 64)
    kept = [(keep[g] > 0).float().mean().item() for g in range(3)]
    assert kept[0] == 1.0 and abs(kept[1] - 0.9) < 0.02 and abs(kept[2] - 0.8) < 0.02
    assert torch.allclose(keep[2][keep[2] > 0], torch.tensor(1 / 0.8))
    alone = ModelGroup([cfgs[2]])._dropout_keep(torch.tensor(7), 1, 64)
    assert torch.equal(alone[0], keep[2])
    assert not torch.equal(group._dropout_keep(torch.tensor(8), 1, 64)[2], keep[2])
    assert not torch.equal(group._dropout_keep(torch.tensor(7), 2, 64)[2], keep[2])


def test_per_model_loss_is_each_models_cross_entropy():
    """The two-class loss (softplus of the logit difference) is F.cross_entropy of each model."""
    group = ModelGroup([replace(c, mlp=replace(c.mlp, dropout=0.0)) for c in _zoo_of_every_kind()])
    _randomise(group, 2)
    gen = torch.Generator().manual_seed(3)
    xb = torch.randn(group.n_models, 40, 16, generator=gen) * 3
    yb = torch.randint(0, 2, (group.n_models, 40), generator=gen)
    with torch.no_grad():
        per = group._per_model_loss(group.p, xb, yb, None)
        logits = group.forward(xb, training=True)
    assert per.shape == (group.n_models,)
    for g in range(group.n_models):
        ref = torch.nn.functional.cross_entropy(logits[g], yb[g])
        assert torch.allclose(per[g], ref, rtol=1e-6, atol=1e-7), (g, per[g], ref)


def test_training_processes_keep_freed_memory_instead_of_page_faulting():
    """A step's pattern (several MB-sized buffers allocated, then all freed) makes glibc return the
    memory and fault it in again every step; after the allocator tuning it is reused."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from hubedit.zoo.trainer import _keep_freed_memory\n"
        "def faults():\n"
        "    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(20):\n"
        "        bufs = [torch.ones(1 << 19) for _ in range(6)]\n"  # six 2 MB activation buffers
        "        del bufs\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0\n"
        "before = faults(); _keep_freed_memory(); faults(); after = faults()\n"
        "print(before, after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before > 20 * 100  # measured ~370 page faults per iteration with glibc's defaults
    assert after < before / 20


@pytest.fixture(scope="module")
def bank_configs():
    return _one_batch_size(sample_configs("bank", 16, 8, seed=5, epochs=2, checkpoint_epochs=(1, 2)))


@pytest.fixture(scope="module")
def bank_result(bank_configs):
    return train_group("bank", bank_configs, compile=False)


def test_group_training_records_reloadable_checkpoints(bank_configs, bank_result):
    res = bank_result
    assert res.diverged == {} and res.backend == ("native" if native_available(bank_configs) else "eager")
    assert len(res.checkpoints) == 2 * len(bank_configs)
    sets = evaluation_data("bank")
    for ck in res.checkpoints:
        assert ck.model_id == model_id("bank", ck.config.config_id, ck.epoch)
        m = MLP.from_bytes(ck.weights)
        assert m.config == ck.config.mlp and not m.training
        for split, (X, y) in sets.items():
            assert m.accuracy(X, y) == ck.metrics[f"{split}_accuracy"]
        assert ck.to_module().accuracy(*sets["test"]) == ck.metrics["test_accuracy"]
    finals = [ck.metrics["test_accuracy"] for ck in res.checkpoints if ck.epoch == 2]
    assert np.median(finals) > 0.85


def test_training_is_deterministic(bank_configs, bank_result):
    again = train_group("bank", bank_configs, compile=False)
    assert [c.weights for c in again.checkpoints] == [c.weights for c in bank_result.checkpoints]


def test_a_diverging_model_does_not_poison_the_others(bank_configs, bank_result):
    group = ModelGroup(bank_configs)
    victim = group.configs[3].config_id
    with torch.no_grad():
        w = group.p["w1"]
        w[3, 0, 0] = float("nan")
    res = train_group("bank", group, compile=False)
    assert set(res.diverged) == {victim} and "non-finite" in res.diverged[victim]
    assert all(c.config.config_id != victim for c in res.checkpoints)
    clean = {c.model_id: c.weights for c in bank_result.checkpoints}
    assert len(res.checkpoints) == len(clean) - 2
    for c in res.checkpoints:  # every other model is bit-identical to the run without the NaN
        assert c.weights == clean[c.model_id]


def test_batched_training_is_as_good_as_the_plain_loop():
    configs = _one_batch_size(sample_configs("adult", 14, 8, seed=21, epochs=3, checkpoint_epochs=(3,)), 32)
    data = training_data("adult", max_train_rows=4000)
    sets = evaluation_data("adult")
    sets = {k: (X[:4000], y[:4000]) for k, (X, y) in sets.items()}
    batched = train_group("adult", configs, data=data, eval_sets=sets, compile=False)
    acc_b = {c.config.config_id: c.metrics["validation_accuracy"] for c in batched.checkpoints}
    acc_s = {c.config_id: train_single(c, "adult", data=data, eval_sets=sets)[-1].metrics["validation_accuracy"] for c in configs}
    diffs = np.array([acc_b[i] - acc_s[i] for i in acc_s])
    assert np.abs(diffs).mean() < 0.02 and abs(diffs.mean()) < 0.01, diffs
    assert np.corrcoef([acc_b[i] for i in acc_s], list(acc_s.values()))[0, 1] > 0.8


@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
def test_kernel_compiled_and_eager_backends_train_the_same_models(bank_configs):
    cfgs = [c for c in bank_configs if c.mlp.depth <= 2][:3] or bank_configs[:2]
    cfgs = [replace(c, train=replace(c.train, batch_size=cfgs[0].train.batch_size, epochs=1), checkpoint_epochs=(1,)) for c in cfgs]
    eager = train_group("bank", cfgs, compile=False)  # the whole-step kernel where it is built
    compiled = train_group("bank", cfgs, compile=True)
    assert compiled.backend == "compiled" and eager.backend != "compiled"
    torch_eager = ModelGroup(cfgs)
    torch_eager.use_native = False  # the torch formulation, eagerly (what runs without a C++ compiler)
    plain = train_group("bank", torch_eager, compile=False)
    assert plain.backend == "eager"
    for a, b in [*zip(eager.checkpoints, compiled.checkpoints), *zip(eager.checkpoints, plain.checkpoints)]:
        sa, sb = MLP.from_bytes(a.weights).state_dict(), MLP.from_bytes(b.weights).state_dict()
        for k in sa:
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=2e-3, rtol=1e-2), k
        assert abs(a.metrics["test_accuracy"] - b.metrics["test_accuracy"]) < 0.01


# --- builds -------------------------------------------------------------------------------------------
MINI = ZooPreset("mini", n_configs=6, epochs=2, checkpoint_epochs=(1, 2), max_group_size=3)


def _blobs(checkpoints):
    return {c.model_id: c.weights for c in checkpoints}


@pytest.fixture(scope="module")
def mini_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    cps, info = build_checkpoints("bank", MINI, out, seed=1, progress=False, workers=1, compile=False)
    return out, cps, info


def test_build_is_deterministic_and_seeded(mini_build, tmp_path):
    _, cps, info = mini_build
    assert info["n_configs"] == 6 and info["n_checkpoints"] == 12 and info["n_groups"] >= 2
    again, _ = build_checkpoints("bank", MINI, tmp_path / "a", seed=1, progress=False, workers=1, compile=False)
    assert _blobs(again) == _blobs(cps)
    other, _ = build_checkpoints("bank", MINI, tmp_path / "b", seed=2, progress=False, workers=1, compile=False)
    assert set(_blobs(other).values()).isdisjoint(_blobs(cps).values())


def test_build_resumes_after_an_interrupt(mini_build, tmp_path, monkeypatch):
    _, cps, info = mini_build
    real = build_mod.train_group
    calls = []

    def interrupted(*args, **kw):
        if calls:
            raise KeyboardInterrupt("simulated interrupt")
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(build_mod, "train_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_checkpoints("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False)
    assert len(list((tmp_path / ".build").glob("group-*.parquet"))) == 1

    counted = []
    monkeypatch.setattr(build_mod, "train_group", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed, rinfo = build_checkpoints("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False)
    assert len(counted) == info["n_groups"] - 1 and rinfo["resumed_groups"] == 1
    assert _blobs(resumed) == _blobs(cps)
    # everything finished: a rerun trains nothing
    counted.clear()
    build_checkpoints("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False)
    assert counted == []
    # another seed or preset into the same folder is refused
    with pytest.raises(ConfigError, match="seed"):
        build_checkpoints("bank", MINI, tmp_path, seed=2, progress=False, workers=1, compile=False)
    with pytest.raises(ConfigError, match="epochs"):
        build_checkpoints("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False, epochs=3)
    # an unfinished build by a trainer with other arithmetic is not resumed (its groups would differ)
    manifest = next((tmp_path / ".build").glob("*.json"))
    old = json.loads(manifest.read_text())
    old["trainer_revision"] = TRAINER_REVISION - 1
    manifest.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=f"revision {TRAINER_REVISION - 1} -> {TRAINER_REVISION}"):
        build_checkpoints("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False)


def test_parallel_workers_give_the_same_bytes(mini_build, tmp_path):
    _, cps, _ = mini_build
    par, _ = build_checkpoints("bank", MINI, tmp_path, seed=1, progress=True, workers=2, compile=False)
    assert _blobs(par) == _blobs(cps)


def test_progress_credit_never_passes_a_groups_size():
    """Late epoch messages of a finished group (the workers' queue is asynchronous) add nothing."""
    credited = {0: 0.0}
    assert sum(build_mod._credit(credited, 0, 10 / 3, 10) for _ in range(3)) == pytest.approx(10)
    assert build_mod._credit(credited, 0, 10 - credited[0], 10) >= 0  # completion tops it up to the size
    assert build_mod._credit(credited, 0, 10 / 3, 10) == 0.0 and credited[0] == 10


def test_build_zoo_saves_a_loadable_zoo(mini_build, tmp_path):
    from hubedit.zoo import Zoo

    _, cps, _ = mini_build
    zoo = build_zoo("bank", MINI, tmp_path, seed=1, progress=False, workers=1, compile=False)
    assert zoo.info["seed"] == 1 and zoo.info["preset"] == "mini" and zoo.info["torch_version"]
    loaded = Zoo.load(tmp_path)
    assert _blobs(list(loaded)) == _blobs(cps)
    splits = {s: {c.config.config_id for c in loaded[s]} for s in ("train", "validation", "test")}
    assert set.union(*splits.values()) == set(range(6)) and sum(map(len, splits.values())) == 6
    X, y, _ = loaded.task.split("validation")
    for c in loaded:
        assert c.to_module().accuracy(X, y) == c.metrics["validation_accuracy"]
