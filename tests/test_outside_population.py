"""The outside population (issue #13): models trained by scikit-learn and plain torch loops, not the zoo trainer,
imported exactly, deterministic for a seed, written once and never over a user's files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hubedit.errors import CorruptFileError
from hubedit.mlp import MLP
from hubedit.tasks import load_task
from hubedit.zoo import outside
from hubedit.zoo.outside import (
    FIDELITY_TOL,
    HIDDEN_SHAPES,
    MANIFEST_NAME,
    build_outside_population,
    check_import_fidelity,
    fit_source,
    import_source,
    is_zoo_shape,
    load_outside_population,
    sample_spec,
    source_proba,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(max_train_rows=1000, training_scale=0.1)  # 60-200 optimiser steps a model: about a second for four
SEED = 7


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("outside") / "adult"
    pairs = build_outside_population("adult", 4, SEED, out, **TINY)
    return out, pairs


def _weights(pairs):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m, _ in pairs]


def test_same_seed_same_weights_other_seed_other_weights(built):
    _, first = built
    again = build_outside_population("adult", 4, SEED, **TINY)
    assert len(again) == len(first) == 4
    for a, b in zip(_weights(first), _weights(again)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("train_seconds", "file", "sha256")}  # noqa: E731
    assert [strip(r) for _, r in first] == [strip(r) for _, r in again]
    # model k does not depend on how many are built, and another seed gives other models
    (m0, r0), = build_outside_population("adult", 1, SEED, **TINY)
    assert all(torch.equal(v, first[0][0].state_dict()[k]) for k, v in m0.state_dict().items())
    other = build_outside_population("adult", 2, SEED + 1, **TINY)
    assert [r["hyperparameters"] for _, r in other] != [r["hyperparameters"] for _, r in first[:2]]


def test_half_scikit_learn_half_torch_with_shapes_the_zoo_never_samples(built):
    _, pairs = built
    trainers = [r["trainer"] for _, r in pairs]
    assert trainers == [outside.TRAINERS["sklearn"], outside.TRAINERS["torch"]] * 2
    for m, r in pairs:
        assert tuple(m.config.hidden) == tuple(r["hidden"]) and 1 <= m.config.depth <= 3
        assert not is_zoo_shape(m.config.hidden)
        assert m.config.skips == ()
    # over many draws: every solver / optimiser / init / head shows up, no zoo shape, no unsupported activation
    specs = [sample_spec(slot, 0, 3, n_rows=26000) for slot in range(300)]
    by_trainer = Counter(s["trainer"] for s in specs)
    assert by_trainer == {"sklearn": 150, "torch": 150}
    sk = [s for s in specs if s["trainer"] == "sklearn"]
    th = [s for s in specs if s["trainer"] == "torch"]
    assert {s["hyperparameters"]["solver"] for s in sk} == {"adam", "sgd", "lbfgs"}
    assert {s["hyperparameters"]["activation"] for s in sk} == {"relu", "tanh", "logistic"}
    assert {s["hyperparameters"]["alpha"] for s in sk} == {1e-5, 1e-4, 1e-3, 1e-2}
    assert {True, False} <= {s["hyperparameters"].get("early_stopping") for s in sk}
    assert {s["hyperparameters"]["optimiser"] for s in th} == {"sgd_momentum", "adamw", "rmsprop"}
    assert {s["init"] for s in th} == set(outside.TORCH_INITS)
    assert {s["norm"] for s in th} == {"none", "batchnorm", "layernorm"}
    assert {s["hyperparameters"]["head"] for s in th} == {"two_logits", "one_logit"}
    assert any(s["hyperparameters"]["label_smoothing"] > 0 for s in th)
    assert not any(is_zoo_shape(tuple(s["hidden"])) for s in specs)
    assert any(list(s["hidden"]) != sorted(s["hidden"]) for s in specs)  # shrinking widths
    assert all(not is_zoo_shape(h) and 1 <= len(h) <= 3 for h in HIDDEN_SHAPES)
    assert is_zoo_shape((16, 32)) and not is_zoo_shape((32, 16)) and not is_zoo_shape((24,))


@pytest.mark.parametrize("slot", [0, 1, 2, 3], ids=["sklearn-0", "torch-1", "sklearn-2", "torch-3"])
def test_imported_model_gives_the_source_probabilities(slot):
    task = load_task("bank")
    X, y, _ = task.split("train")
    X_test, _, _ = task.split("test")
    spec = sample_spec(slot, 0, 11, n_rows=400, training_scale=0.05)
    source, _ = fit_source(spec, X[:400], y[:400])
    mlp = import_source(source)
    expected = source_proba(source, X_test)
    got = mlp.predict_proba(X_test).double().numpy()
    assert np.abs(got - expected).max() <= FIDELITY_TOL
    assert np.allclose(expected.sum(1), 1.0) and expected.std() > 0  # real probabilities, not a constant
    assert check_import_fidelity(mlp, source, X_test)["max_abs_prob_diff"] <= FIDELITY_TOL
    with torch.no_grad():
        mlp.layers[-1].bias[1] += 1e-3  # a tiny error in the import is caught
    with pytest.raises(AssertionError, match="differs from its source"):
        check_import_fidelity(mlp, source, X_test)


def test_files_and_manifest_hold_what_was_built(built):
    out, pairs = built
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["task"] == "adult" and manifest["seed"] == SEED and manifest["n_kept"] == len(pairs) == 4
    task = load_task("adult")
    X_test, y_test, _ = task.split("test")
    majority = manifest["majority_class_accuracy"]["test"]
    assert majority == pytest.approx(float((y_test == 0).double().mean()))
    loaded = load_outside_population(out)
    for (m, r), (m2, r2), entry in zip(pairs, loaded, manifest["models"]):
        assert r2 == entry and r["file"] == entry["file"]
        assert torch.equal(m.predict_proba(X_test), m2.predict_proba(X_test))
        assert MLP.load(out / entry["file"]).metadata["trainer"] == entry["trainer"]
        assert entry["test_accuracy"] == pytest.approx(m2.accuracy(X_test, y_test))
        assert entry["test_accuracy"] > majority
        assert abs(entry["test_accuracy"] - entry["original_test_accuracy"]) < 1e-3
        for key in ("optimiser", "hyperparameters", "widths", "activation", "init", "train_seconds"):
            assert key in entry
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, *(e["file"] for e in manifest["models"])])
    # a damaged file is caught by its checksum
    victim = out / manifest["models"][0]["file"]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-4] + b"\0\0\0\1")
        with pytest.raises(CorruptFileError, match="sha256"):
            load_outside_population(out)
    finally:
        victim.write_bytes(original)


def test_degenerate_models_are_skipped_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(outside, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(outside, "_majority", lambda y_train, y: 1.0)  # nothing beats a perfect majority class
    out = tmp_path / "pop"
    pairs = build_outside_population("bank", 1, SEED, out, max_train_rows=300, training_scale=0.02)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert pairs == [] and manifest["models"] == [] and manifest["slots_given_up"] == [0]
    assert [s["attempt"] for s in manifest["skipped"]] == [0, 1]
    assert all(s["reason"].startswith("degenerate: test accuracy") for s in manifest["skipped"])


def test_refuses_to_write_over_files(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not empty.*mine.txt"):
        build_outside_population("bank", 2, SEED, full, max_train_rows=300, training_scale=0.02)
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        build_outside_population("bank", 2, SEED, a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(build_outside_population("bank", 1, SEED, empty, max_train_rows=300, training_scale=0.05)) == 1
    assert (empty / MANIFEST_NAME).is_file()
    assert not list(tmp_path.glob(".*partial*"))  # the temporary folder was renamed into place
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "outside_population.py"), "--task", "bank",
                           "--n", "2", "--out", str(full)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: cannot write the outside population" in proc.stderr
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
