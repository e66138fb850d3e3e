"""Editor training on accelerate: single process, resume, and `accelerate launch --num_processes 2 --cpu`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubedit.editor import Editor
from hubedit.train import train_editor
from hubedit.train.sampling import sample_models, sample_points
from hubedit.zoo import Zoo

FAST = dict(models_per_step=4, points_per_step=128, hidden=16, layers=2, eval_every=5)


@pytest.fixture(scope="session")
def tiny_zoo_dir(tmp_path_factory):
    from hubedit.zoo.build import build_zoo

    out = tmp_path_factory.mktemp("zoo") / "adult"
    build_zoo("adult", "tiny", out, seed=0, progress=False, n_configs=10, epochs=2)
    return out


@pytest.fixture(scope="session")
def tiny_zoo(tiny_zoo_dir):
    return Zoo.load(tiny_zoo_dir)


def test_step_sampling_is_a_function_of_seed_and_step():
    a = sample_models(50, 8, seed=1, step=7, rank=0, world=2) + sample_models(50, 8, seed=1, step=7, rank=1, world=2)
    assert len(set(a)) == 16  # the two processes draw disjoint models
    assert a == sample_models(50, 8, 1, 7, 0, 2) + sample_models(50, 8, 1, 7, 1, 2)
    assert not torch.equal(sample_points(100, 32, 1, 7, 0), sample_points(100, 32, 1, 8, 0))


def test_training_writes_editor_log_and_validation_front(tiny_zoo, tmp_path):
    log = []
    editor = train_editor(tiny_zoo, "prune", variant="prune-edit", lam=0.5, out=tmp_path / "ed", steps=10,
                          progress=False, log=log, **FAST)
    assert isinstance(editor, Editor)
    assert [r["step"] for r in log] == list(range(1, 11))
    assert all({"loss", "jsd", "requirement"} <= set(r) for r in log)
    assert all(r["loss"] == pytest.approx(r["jsd"] + 0.5 * r["requirement"], rel=1e-4, abs=1e-6) for r in log)
    front = editor.settings["validation_front"]
    assert len(front) == 1 and front[0]["lam"] == 0.5 and 0 <= front[0]["metric"] <= 1 and front[0]["jsd"] >= 0
    cfg = json.loads((tmp_path / "ed" / "config.json").read_text())
    assert cfg["training"]["steps"] == 10 and cfg["zoo"]["path"] == str(tiny_zoo.source["path"])
    lines = (tmp_path / "ed" / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 11 and json.loads(lines[0])["step"] == 0  # step 0: the untrained editor's validation
    assert "val_front" in json.loads(lines[0]) and "val_front" in json.loads(lines[5])
    again = Editor.from_pretrained(tmp_path / "ed")
    assert again.settings["validation_front"] == front


def test_resume_continues_exactly(tiny_zoo, tmp_path):
    full = train_editor(tiny_zoo, "minimise", lam=0.2, out=tmp_path / "full", steps=10, progress=False, **FAST)
    train_editor(tiny_zoo, "minimise", lam=0.2, out=tmp_path / "part", steps=5, progress=False, **FAST)
    log = []
    resumed = train_editor(tiny_zoo, "minimise", lam=0.2, out=tmp_path / "part", steps=10, resume=True,
                           progress=False, log=log, **FAST)
    assert [r["step"] for r in log] == list(range(6, 11))  # steps 1-5 were not redone
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_lambda_conditioned_training(tiny_zoo):
    editor = train_editor(tiny_zoo, "prune", lam_range=(0.01, 1.0), steps=4, progress=False,
                          eval_lambdas=(0.01, 1.0), **FAST)
    assert editor.lam_range == (0.01, 1.0)
    assert [p["lam"] for p in editor.settings["validation_front"]] == [0.01, 1.0]
    model = tiny_zoo["test"][0].to_module()
    assert editor.edit(model, lam=0.5).record["lam"] == 0.5


def _accelerate_train(launch_args: list[str], zoo_dir, out, requirement: str, lam: str, steps: int) -> dict:
    """`accelerate launch LAUNCH_ARGS -m hubedit train ...` on the tiny zoo; returns the saved config."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hubedit",
        "train", "--zoo", str(zoo_dir), "--requirement", requirement, "--lambda", lam, "--out", str(out),
        "--steps", str(steps), "--models-per-step", "2", "--points-per-step", "128", "--hidden", "16", "--layers", "2",
        "--eval-every", str(steps // 2), "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len((out / "train_log.jsonl").read_text().splitlines()) == steps + 1  # + step 0, the untrained editor
    Editor.from_pretrained(out)
    return json.loads((out / "config.json").read_text())


def test_accelerate_launch_two_processes(tiny_zoo_dir, tmp_path):
    """Two data-parallel processes (gloo on CPU). accelerate 1.x's `--cpu` launcher starts ONE process unless
    MPI is set up (`--mpirun_hostfile`); `--multi_gpu` uses torchrun and, without GPUs, runs MULTI_CPU."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = _accelerate_train(["--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)], tiny_zoo_dir,
                            tmp_path / "ddp", "fairness", "1.0", 6)
    assert cfg["training"]["processes"] == 2 and cfg["training"]["best_step"] in (0, 3, 6)  # 0: the untrained editor


def test_accelerate_launch_cpu_flag_runs_to_the_end(tiny_zoo_dir, tmp_path):
    """The literal `accelerate launch --num_processes 2 --cpu` command: accelerate's simple launcher starts one
    process here (no MPI hostfile), and training runs unchanged to the end; the two-process run is the test above."""
    cfg = _accelerate_train(["--num_processes", "2", "--cpu"], tiny_zoo_dir, tmp_path / "cpu", "prune", "0.1", 4)
    assert cfg["training"]["processes"] == 1 and cfg["training"]["steps"] == 4


def test_target_conditioned_training_and_lr_schedule(tiny_zoo, tmp_path):
    from hubedit.train.loop import EditorTrainingConfig, lr_factor

    log = []
    editor = train_editor(tiny_zoo, "prune", target_range=(0.1, 0.6), steps=6, progress=False, log=log,
                          lr_schedule="cosine", warmup_steps=2, film=True, out=tmp_path / "t", **FAST)
    assert editor.target_range == (0.1, 0.6) and editor.metanet.config["film"] is True
    front = editor.settings["validation_front"]
    assert [p["target"] for p in front] == list(editor.requirement.target_grid((0.1, 0.6)))
    for p in front:  # validation edits meet each target (to the rounding of small models' weight counts)
        assert p["metric"] == pytest.approx(p["target"], abs=0.02)
    assert all(r["loss"] == pytest.approx(r["jsd"], rel=1e-6) for r in log)  # JSD alone: the target is met
    assert Editor.from_pretrained(tmp_path / "t").target_range == (0.1, 0.6)
    cfg = EditorTrainingConfig("prune", lam=1.0, steps=10, lr_schedule="cosine", warmup_steps=2, lr_min_ratio=0.1)
    factors = [lr_factor(cfg, s) for s in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:])) and factors[-1] == pytest.approx(0.1, abs=0.05)


def test_epo_scalarisation_trains_an_editor_for_a_preference(tiny_zoo, tmp_path):
    log = []
    editor = train_editor(tiny_zoo, "fairness", preference=(1.0, 2.0), scalarisation="epo", steps=3, progress=False,
                          log=log, out=tmp_path / "epo", **{**FAST, "eval_every": 3})
    assert editor.settings["preference"] == [1.0, 2.0] and editor.lam is None
    assert all(r["scalarisation_mode"] in ("balance", "descent") for r in log)
    assert all(sum(r["weights"]) == pytest.approx(1.0) and min(r["weights"]) >= 0 for r in log)
    (point,) = editor.settings["validation_front"]
    assert point["preference"] == [1.0, 2.0] and point["jsd"] >= 0
    again = Editor.from_pretrained(tmp_path / "epo")
    assert again.settings["preference"] == [1.0, 2.0]
    again.edit(tiny_zoo["test"][0].to_module())  # no lam needed
    with pytest.raises(Exception, match="preference"):
        train_editor(tiny_zoo, "fairness", lam=1.0, scalarisation="epo", steps=1, progress=False, **FAST)


def test_training_through_the_refit(tiny_zoo, tmp_path):
    """--refit: the loss and the validation are those of refit edits, the saved editor refits, and its validation
    front is what editing the validation models with it gives."""
    from hubedit.editor.editing import evaluate_edits
    from hubedit.graph import mlp_to_graph

    log = []
    editor = train_editor(tiny_zoo, "prune", target_range=(0.1, 0.6), steps=4, progress=False, log=log,
                          calibration=64, calibration_rounds=2, refit=0.05, out=tmp_path / "r", **FAST)
    assert editor.settings["refit"] == 0.05 and editor.settings["training"]["refit"] == 0.05
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    loaded = Editor.from_pretrained(tmp_path / "r")
    assert loaded.settings["refit"] == 0.05
    graphs = [mlp_to_graph(c.to_module()) for c in tiny_zoo["validation"]]
    x, y, s = tiny_zoo.task.split("evaluation")
    t = editor.settings["validation_front"][0]["target"]
    _, with_refit = evaluate_edits(loaded.metanet, loaded.requirement, graphs, x, y, s, lam=None, lam_range=None,
                                   target=t, target_range=loaded.target_range, refit=0.05)
    _, without = evaluate_edits(loaded.metanet, loaded.requirement, graphs, x, y, s, lam=None, lam_range=None,
                                target=t, target_range=loaded.target_range)
    assert float(with_refit.mean()) == pytest.approx(editor.settings["validation_front"][0]["jsd"], rel=1e-5)
    assert float(with_refit.mean()) < float(without.mean())
    with pytest.raises(Exception, match="refit needs a calibration batch"):
        train_editor(tiny_zoo, "prune", target_range=(0.1, 0.6), steps=1, progress=False, refit=0.05, **FAST)
