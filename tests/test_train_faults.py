"""Training faults: `--resume` with other settings, and validation / push on every process of a real
`accelerate launch` (two CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from hubedit.cli import main
from hubedit.editor import Editor
from hubedit.editor.editing import evaluate_edits
from hubedit.errors import ConfigError
from hubedit.graph import mlp_to_graph
from hubedit.train import train_editor

FAST = dict(models_per_step=4, points_per_step=128, hidden=16, layers=2, eval_every=2)


@pytest.fixture(scope="module")
def checkpointed(tiny_adult_zoo, tmp_path_factory):
    """A 2-step run (checkpoint at step 2) of a data-minimisation editor at lambda 0.2, seed 0."""
    out = tmp_path_factory.mktemp("train") / "run"
    train_editor(tiny_adult_zoo, "minimise", lam=0.2, out=out, steps=2, seed=0, progress=False, **FAST)
    return out


def _snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("changes, differ", [
    ({"lam": 0.5}, "lam: 0.2 in the checkpoint, 0.5 now"),
    ({"seed": 1}, "seed: 0 in the checkpoint, 1 now"),
    ({"requirement": "prune"}, "requirement: 'minimise' in the checkpoint, 'prune' now"),
    ({"hidden": 8, "lr": 0.01}, "hidden: 16 in the checkpoint, 8 now; lr: 0.001 in the checkpoint, 0.01 now"),
])
def test_resume_refuses_settings_that_differ_from_the_run(tiny_adult_zoo, checkpointed, changes, differ):
    before = _snapshot(checkpointed)
    settings = {"requirement": "minimise", "lam": 0.2, "seed": 0, **FAST, **changes}
    with pytest.raises(ConfigError, match=f"differ from it: {differ}"):
        train_editor(tiny_adult_zoo, out=checkpointed, steps=4, resume=True, progress=False, **settings)
    assert _snapshot(checkpointed) == before  # the checkpoint, log and editor are untouched


def test_cli_resume_says_which_settings_differ(tiny_adult_zoo_dir, checkpointed, capsys):
    argv = ["train", "--zoo", str(tiny_adult_zoo_dir), "--requirement", "minimise", "--lambda", "0.5", "--out",
            str(checkpointed), "--steps", "4", "--models-per-step", "4", "--points-per-step", "128", "--hidden", "16",
            "--layers", "2", "--eval-every", "2", "--seed", "3", "--resume", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lam: 0.2 in the checkpoint, 0.5 now" in err and "seed: 0 in the checkpoint, 3 now" in err


def test_resume_with_the_same_settings_trains_on(tiny_adult_zoo, checkpointed, tmp_path):
    import shutil

    out = shutil.copytree(checkpointed, tmp_path / "run")
    log = []
    train_editor(tiny_adult_zoo, "minimise", lam=0.2, out=out, steps=3, seed=0, resume=True, progress=False,
                 log=log, **FAST)
    assert [r["step"] for r in log] == [3]


_LAUNCHED = textwrap.dedent("""
    # run by `accelerate launch`: the `hubedit train` command, counting validations and pushes on this process
    import hashlib, json, os, sys
    import hubedit.train as train_pkg
    import hubedit.train.loop as loop
    from hubedit.editor import Editor
    from hubedit.cli import main
    from accelerate import PartialState

    counts = {"validations": 0, "pushes": 0}
    evaluate_edits, push_to_hub, train_editor = loop.evaluate_edits, Editor.push_to_hub, train_pkg.train_editor
    editors = []

    def counted_evaluate(*args, **kwargs):
        counts["validations"] += 1
        return evaluate_edits(*args, **kwargs)

    def counted_push(self, *args, **kwargs):
        counts["pushes"] += 1
        return push_to_hub(self, *args, **kwargs)

    def kept_train(*args, **kwargs):
        editors.append(train_editor(*args, **kwargs))
        return editors[-1]

    loop.evaluate_edits, Editor.push_to_hub, train_pkg.train_editor = counted_evaluate, counted_push, kept_train
    rc = main(sys.argv[1:])
    digest = hashlib.sha256()
    for name, tensor in sorted(editors[0].state_dict().items()):
        digest.update(name.encode()); digest.update(tensor.contiguous().numpy().tobytes())
    state = PartialState()
    report = dict(counts, rc=rc, rank=state.process_index, world=state.num_processes, digest=digest.hexdigest(),
                  front=editors[0].settings["validation_front"])
    with open(os.path.join(os.environ["REPORT_DIR"], f"rank{state.process_index}.json"), "w") as fh:
        json.dump(report, fh)
""")


def test_two_processes_validate_and_push_once_from_the_main_process(
    tiny_adult_zoo, tiny_adult_zoo_dir, hf_api, hub_repo_id, tmp_path
):
    """A real `accelerate launch --multi_gpu --num_processes 2` on CPU (torchrun, gloo; accelerate's `--cpu`
    launcher starts one process without MPI, see tests/test_train.py) of `hubedit train --push`."""
    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    reports = tmp_path / "reports"
    reports.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, steps = tmp_path / "ddp", 4
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--main_process_port", str(port), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), "train", "--zoo", str(tiny_adult_zoo_dir), "--requirement", "prune", "--lambda", "0.1",
        "--out", str(out), "--steps", str(steps), "--models-per-step", "2", "--points-per-step", "128",
        "--hidden", "16", "--layers", "2", "--eval-every", "2", "--no-progress", "--push", hub_repo_id,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", REPORT_DIR=str(reports))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    main_rank, other = (json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main_rank["world"] == other["world"] == 2 and main_rank["rc"] == other["rc"] == 0
    # eval_every=2: at steps 0 (the untrained editor), 2 and 4
    assert (main_rank["validations"], other["validations"]) == (1 + steps // 2, 0)
    assert (main_rank["pushes"], other["pushes"]) == (1, 0)
    assert proc.stdout.count(f"published {hub_repo_id}") == 1
    # every process returns the same editor, with the validation front the main process computed
    assert main_rank["digest"] == other["digest"] and main_rank["front"] == other["front"]
    pushed = Editor.from_pretrained(hub_repo_id)
    saved = Editor.from_pretrained(out)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in pushed.state_dict().items())
    # the recorded front is what a one-process evaluation of the editor gives
    (point,) = saved.settings["validation_front"]
    graphs = [mlp_to_graph(c.to_module()) for c in tiny_adult_zoo["validation"]]
    X, y, s = tiny_adult_zoo.task.split("evaluation")
    metric, jsd = evaluate_edits(saved.metanet, saved.requirement, graphs, X, y, s, lam=0.1, lam_range=None)
    assert point["lam"] == 0.1 and point["metric"] == float(metric.mean())
    assert point["jsd"] == pytest.approx(float(jsd.mean()), rel=1e-6)  # thread counts may change the last bits


def _train_argv(zoo_dir, out, *extra) -> list[str]:
    return ["train", "--zoo", str(zoo_dir), "--requirement", "minimise", "--lambda", "0.2", "--out", str(out),
            "--steps", "2", "--models-per-step", "4", "--points-per-step", "128", "--hidden", "16", "--layers", "2",
            "--eval-every", "2", "--seed", "0", "--no-progress", *extra]


def test_training_into_an_earlier_run_without_resume_is_refused(
    tiny_adult_zoo, tiny_adult_zoo_dir, checkpointed, tmp_path, capsys, monkeypatch
):
    """Its checkpoint, log and editor are kept, and the refusal comes before anything is trained."""
    import shutil

    import hubedit.train.loop as loop

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "_graphs", no_training)
    out = shutil.copytree(checkpointed, tmp_path / "run")
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"already holds a training run's files: checkpoint/ \(a resumable run\), "
                                              r"train_log.jsonl, config.json, model.safetensors, README.md.*"
                                              r"Pass --resume \(resume=True\) to continue that run"):
        train_editor(tiny_adult_zoo, "minimise", lam=0.2, out=out, steps=2, seed=0, progress=False, **FAST)
    assert main(_train_argv(tiny_adult_zoo_dir, out)) == 2
    assert "already holds a training run's files" in capsys.readouterr().err
    shutil.rmtree(out / "checkpoint")  # an editor without its checkpoint: nothing to resume, and not overwritten
    with pytest.raises(FileExistsError, match="cannot resume in .* holds an editor .* but no checkpoint"):
        train_editor(tiny_adult_zoo, "minimise", lam=0.2, out=out, steps=2, seed=0, resume=True, progress=False,
                     **FAST)
    assert _snapshot(out) == {k: v for k, v in before.items() if k.parts[0] != "checkpoint"}
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        train_editor(tiny_adult_zoo, "minimise", lam=0.2, out=tmp_path / "a-file", steps=2, progress=False, **FAST)
    assert (tmp_path / "a-file").read_text() == "mine"


def test_resume_without_a_checkpoint_starts_afresh_with_a_note(tiny_adult_zoo_dir, tmp_path, capsys):
    out = tmp_path / "new"
    assert main(_train_argv(tiny_adult_zoo_dir, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"note: --resume: {out} holds no checkpoint" in err and "starting a fresh run" in err
    assert Editor.from_pretrained(out).settings["training"]["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [0, 1, 2]
