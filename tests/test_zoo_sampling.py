"""Zoo configuration sampling, presets and group planning (no training)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from hubedit.errors import ConfigError
from hubedit.zoo.presets import PRESETS, ZooPreset, default_checkpoint_epochs, get_preset
from hubedit.zoo.sampling import (
    ACTIVATION_CHOICES,
    BATCH_SIZES,
    DEPTHS,
    DROPOUTS,
    NORM_CHOICES,
    WIDTHS,
    assign_splits,
    sample_configs,
)
from hubedit.zoo.trainer import ModelGroup, plan_groups

N = 1500


@pytest.fixture(scope="module")
def many():
    return sample_configs("adult", 14, N, seed=3, epochs=60, checkpoint_epochs=(3, 30, 60))


def test_configs_respect_the_zoo_table(many):
    for c in many:
        m = c.mlp
        assert m.in_features == 14 and m.out_features == 2
        assert m.depth in DEPTHS
        assert all(w in WIDTHS for w in m.hidden)
        assert list(m.hidden) == sorted(m.hidden), "widths never decrease with depth"
        assert m.dropout in DROPOUTS and m.norm in NORM_CHOICES and m.activation in ACTIVATION_CHOICES
        per_dst = Counter(d for _, d in m.skips)
        for s, d in m.skips:
            assert 2 <= d <= m.depth and 0 <= s <= d - 2
        assert all(k <= 2 for k in per_dst.values())
        assert per_dst.get(1, 0) == 0 and per_dst.get(2, 0) <= 1
        assert c.train.batch_size in BATCH_SIZES
        assert 1e-4 <= c.train.lr <= 1e-2 and 1e-6 <= c.train.weight_decay <= 1e-2
        assert c.train.epochs == 60 and c.checkpoint_epochs == (3, 30, 60)
        assert 0 <= c.seed < 2**63


def test_every_option_appears(many):
    assert {c.mlp.depth for c in many} == set(DEPTHS)
    assert {w for c in many for w in c.mlp.hidden} == set(WIDTHS)
    assert {c.mlp.dropout for c in many} == set(DROPOUTS)
    assert {c.mlp.norm for c in many} == set(NORM_CHOICES)
    assert {c.mlp.activation for c in many} == set(ACTIVATION_CHOICES)
    assert {c.train.batch_size for c in many} == set(BATCH_SIZES)
    # 0, 1 and 2 skips into a hidden layer; sources from the input and from hidden layers
    counts = Counter(n for c in many for n in (Counter(d for _, d in c.mlp.skips).get(d, 0) for d in range(2, c.mlp.depth + 1)))
    assert set(counts) == {0, 1, 2}
    assert {s for c in many for s, _ in c.mlp.skips} == {0, 1, 2}
    # log-uniform: about half of the draws below the geometric midpoint
    lrs = sorted(c.train.lr for c in many)
    assert abs(sum(lr < 1e-3 for lr in lrs) / N - 0.5) < 0.06
    wds = [c.train.weight_decay for c in many]
    assert abs(sum(w < 1e-4 for w in wds) / N - 0.5) < 0.06
    assert min(lrs) < 1.2e-4 and max(lrs) > 0.8e-2
    assert len({c.seed for c in many}) == N


def test_splits_are_by_configuration_disjoint_and_cover(many):
    counts = Counter(c.split for c in many)
    assert counts == {"train": N - 150 - 300, "validation": 150, "test": 300}
    assert sorted(c.config_id for c in many) == list(range(N))
    for n in (1, 2, 3, 7, 32):
        s = assign_splits(n, 0)
        assert len(s) == n
        if n >= 3:
            assert {"train", "validation", "test"} <= set(s)
    with pytest.raises(ConfigError):
        assign_splits(10, 0, (0.5, 0.5, 0.5))


def test_sampling_is_deterministic_and_prefix_stable():
    a = sample_configs("bank", 16, 40, seed=11, epochs=5, checkpoint_epochs=(1, 2, 5))
    b = sample_configs("bank", 16, 40, seed=11, epochs=5, checkpoint_epochs=(1, 2, 5))
    c = sample_configs("bank", 16, 40, seed=12, epochs=5, checkpoint_epochs=(1, 2, 5))
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in c]
    shorter = sample_configs("bank", 16, 10, seed=11, epochs=5, checkpoint_epochs=(1, 2, 5))
    assert [(x.mlp, x.train, x.seed) for x in shorter] == [(x.mlp, x.train, x.seed) for x in a[:10]]


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError):
        sample_configs("adult", 14, 0, 0, 5, (1, 5))
    with pytest.raises(ConfigError):
        sample_configs("adult", 14, 5, 0, 5, (1, 6))
    with pytest.raises(ConfigError):
        sample_configs("adult", 14, 5, 0, 5, (3, 2))


def test_presets():
    assert set(PRESETS) == {"tiny", "small", "paper"}
    paper, small, tiny = PRESETS["paper"], PRESETS["small"], PRESETS["tiny"]
    assert (paper.n_configs, paper.epochs, paper.checkpoint_epochs) == (4000, 60, (3, 30, 60))
    assert small.epochs == 60 and 100 <= small.n_configs <= 1000
    assert tiny.n_configs <= 64 and tiny.epochs <= 5 and len(tiny.checkpoint_epochs) == 3
    assert default_checkpoint_epochs(1) == (1,) and default_checkpoint_epochs(4) == (1, 2, 4)
    assert get_preset("tiny") is tiny
    p = tiny.replace(epochs=10, n_configs=7)
    assert (p.n_configs, p.epochs, p.checkpoint_epochs) == (7, 10, (1, 5, 10))
    with pytest.raises(ConfigError):
        get_preset("huge")
    with pytest.raises(ConfigError):
        ZooPreset("bad", n_configs=3, epochs=4, checkpoint_epochs=(2, 5))


@pytest.mark.parametrize("n_rows", [25999, 2690])
def test_group_plan_partitions_and_is_deterministic(many, n_rows):
    configs = many[:600]
    plan = plan_groups(configs, n_rows, max_group_size=64)
    ids = [i for g in plan for i in g]
    assert sorted(ids) == sorted(c.config_id for c in configs)
    by_id = {c.config_id: c for c in configs}
    for g in plan:
        assert 1 <= len(g) <= 64
        assert len({by_id[i].train.batch_size for i in g}) == 1
    assert plan == plan_groups(list(reversed(configs)), n_rows, max_group_size=64)
    # a group can be built from every planned set
    ModelGroup([by_id[i] for i in plan[0]])


def test_plan_packs_small_populations_into_few_groups():
    configs = sample_configs("adult", 14, 32, seed=0, epochs=4, checkpoint_epochs=(1, 2, 4))
    plan = plan_groups(configs, 25999)
    assert len(plan) <= 8  # per-step overhead dominates small builds: a few mixed groups
    assert math.isclose(sum(map(len, plan)), 32)
