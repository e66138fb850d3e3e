"""The evaluation protocol spread over processes (hubedit.distributed): ``workers=2`` (this process and a helper in
a gloo group) and a real two-process launch (``accelerate launch --multi_gpu --num_processes 2``, gloo on CPU) of
``hubedit pareto`` give the numbers of a one-process run; the work is shared, rank 0 alone prints and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hubedit import distributed
from hubedit.editor import Editor
from hubedit.evaluation import protocol
from hubedit.evaluation.protocol import run_protocol
from hubedit.zoo import Zoo

pytestmark = pytest.mark.usefixtures("single_thread")

# timings and the run's own facts differ from run to run; everything else must be equal
RUN_FACTS = ("seconds", "method_seconds", "editor_batched_seconds_per_model", "machine", "finished", "processes")


def comparable(result: dict) -> dict:
    d = json.loads(json.dumps(result, default=str))
    d.pop("timing")
    d.pop("timing_notes")
    for key in RUN_FACTS:
        d["info"].pop(key, None)
    d["info"]["config"].pop("workers")
    return d


def seeded_editor(seed: int, **kwargs) -> Editor:
    torch.manual_seed(seed)
    return Editor(requirement="prune", task="adult", metanet={"hidden": 16, "layers": 2}, **kwargs).eval()


@pytest.fixture(scope="module")
def zoo(tiny_adult_zoo_dir):
    return Zoo.load(tiny_adult_zoo_dir)


@pytest.fixture(scope="module")
def editor_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("editors")
    seeded_editor(0, lam=0.1).save_pretrained(base / "per-lambda")
    seeded_editor(1, lam_range=[0.01, 1.0]).save_pretrained(base / "conditioned")
    return [base / "per-lambda", base / "conditioned"]


OPTIONS = dict(baselines=["magnitude", "lottery-ticket"], max_models=2, prune_keeps=(0.5, 0.1), lottery_epochs=1,
               lottery_iterations=1, lambda_grid=(0.05, 0.5), edit_batch_size=1, timing_models=1, progress=False)


def test_workers_share_the_units_and_give_the_one_process_numbers(zoo, editor_dirs, monkeypatch):
    editors = [Editor.from_pretrained(d) for d in editor_dirs]
    one = run_protocol(zoo, "prune", editors, workers=1, **OPTIONS)
    here = []
    evaluate = protocol._evaluate_unit
    monkeypatch.setattr(protocol, "_evaluate_unit", lambda work, unit: here.append(unit) or evaluate(work, unit))
    two = run_protocol(zoo, "prune", editors, workers=2, **OPTIONS)
    # units: 3 editor runs x 2 splits x 2 batches of one model, 2 baselines x 2 splits x 2 models
    assert len(here) == 10 and {u.kind for u in here} == {"editor", "baseline"}  # this process did half of 20
    assert two.info["processes"] == 2 and one.info["processes"] == 1
    assert comparable(two.to_dict()) == comparable(one.to_dict())
    assert list(two.methods) == ["GMN - Prune & Edit", "GMN - Prune & Edit (λ-cond.)", "Magnitude", "Lottery Ticket"]
    assert set(two.timing) == set(two.methods)  # timed in this process


def test_workers_are_checked(zoo, monkeypatch):
    with pytest.raises(ValueError, match="workers must be a whole number"):
        run_protocol(zoo, "prune", [], baselines=["magnitude"], workers=0, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher: the launched processes share the work
    with pytest.raises(ValueError, match="under a launcher of 2 processes"):
        run_protocol(zoo, "prune", [], baselines=["magnitude"], workers=2, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be a whole number"):
        distributed.launched_world_size()


def test_share_and_single_process_env():
    shares = [distributed.share(11, r, 3) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(11)) and shares[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="rank must be in"):
        distributed.share(4, 2, 2)
    env = distributed.single_process_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_PORT": "1",
                                          "PATH": "/bin"})
    assert env == {"PATH": "/bin"} and distributed.launched_world_size(env) == 1


def _failing_helper(message: str) -> None:
    distributed.all_gather(None)  # the parent's first collective
    raise RuntimeError(message)


def test_a_failing_helper_raises_its_error_in_the_caller():
    from torch.multiprocessing.spawn import ProcessRaisedException

    with pytest.raises(ProcessRaisedException, match="helper broke on purpose"):
        with distributed.local_processes(2, _failing_helper, ("helper broke on purpose",)):
            assert distributed.world() == (0, 2)
            distributed.all_gather(None)
            distributed.barrier()  # the helper is gone: this fails, and the helper's error is raised
    assert distributed.world() == (0, 1)  # no group left behind


def _pareto_args(zoo_dir, editor_dirs, out) -> list[str]:
    return ["pareto", "--zoo", str(zoo_dir), *[a for d in editor_dirs for a in ("--editor", str(d))],
            "--lambda-grid", "0.05,0.5", "--baselines", "magnitude", "lottery-ticket", "--max-models", "2",
            "--prune-keeps", "0.5,0.1", "--lottery-epochs", "1", "--timing-models", "1", "--threads", "1",
            "--out", str(out), "--no-progress"]


def test_accelerate_launch_two_processes_gives_the_one_process_results(tiny_adult_zoo_dir, editor_dirs, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (accelerate's `--cpu` launcher starts one process without
    MPI; `--multi_gpu` runs torchrun, which without GPUs is gloo on CPU)."""
    from hubedit.cli import main

    assert main(_pareto_args(tiny_adult_zoo_dir, editor_dirs, tmp_path / "one")) == 0
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(distributed.free_port()), "-m", "hubedit",
           *_pareto_args(tiny_adult_zoo_dir, editor_dirs, tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("results.json") == 1, proc.stdout  # rank 0 alone prints (and writes)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["info"]["processes"] == 2
    assert comparable(two) == comparable(one)
    assert set(two["timing"]) == set(two["methods"])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HUBEDIT_LONG_TESTS") != "1",
                    reason="40 s on 2 cores; the protocol's own launch test covers ranks (HUBEDIT_LONG_TESTS=1 runs it)")
def test_reproduce_under_torchrun_equals_one_process(tmp_path):
    """scripts/reproduce.py under `torchrun --nproc_per_node 2`: the editors are shared out (one each, trained alone),
    the protocol's units and the matched comparison too; rank 0 alone logs and writes; the editors' weights, the
    evaluation and the matched comparison equal a one-process run's (`--threads 1`, as the launcher's processes)."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    args = ["--preset", "tiny", "--quick", "--settings", "prune-bank", "--skip", "composition,sample-efficiency",
            "--variants", "main", "--steps", "4", "--max-models", "2", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")

    def run(prefix: list[str], name: str) -> str:
        cmd = [*prefix, str(root / "scripts" / "reproduce.py"), *args, "--work", str(tmp_path / name / "work"),
               "--results", str(tmp_path / name / "results")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    one_out = run([sys.executable], "one")
    shutil.copytree(tmp_path / "one" / "work" / "zoos", tmp_path / "two" / "work" / "zoos")  # the same zoo, not rebuilt
    two_out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(distributed.free_port())], "two")
    assert "2 processes" in two_out and two_out.count("wrote ") == 1  # rank 0 alone logs
    assert "(process 0 of 2)" in two_out and "(process 1 of 2)" in two_out  # each trained an editor
    editors = sorted((tmp_path / "one" / "work" / "editors").rglob("model.safetensors"))
    assert len(editors) == 2
    for path in editors:
        mine = load_file(str(path))
        theirs = load_file(str(tmp_path / "two" / path.relative_to(tmp_path / "one")))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    def evaluation(name: str) -> dict:
        d = json.loads((tmp_path / name / "work" / "eval" / "prune-bank.json").read_text().replace(str(tmp_path / name), "RUN"))
        return comparable(d)

    assert evaluation("two") == evaluation("one")
    matched = [json.loads((tmp_path / n / "work" / "eval" / "prune-bank-matched.json").read_text())["rows"]
               for n in ("one", "two")]
    assert matched[0] == matched[1]
    assert (tmp_path / "two" / "results" / "REPORT.md").is_file()
    assert "trained" in one_out
