"""``hubedit quickstart`` end to end: in a fresh process with nothing set up (embedded Hub), timed, editing with
the reference editor this installation ships (or, without one, the demo editor it trains); then the same flow
pointed at another Hub (the session's test server) with ``--endpoint``/``--token``, with a tiny stand-in
reference editor that it publishes and edits with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from hubedit import reference
from hubedit.cards import validate_card

pytestmark = pytest.mark.slow

LIMIT_S = 600  # the bound: 10 minutes on 2 cores (a run takes 1-3 minutes here, up to ~6 when the machine is shared)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """``python -m hubedit quickstart`` as the README runs it, in a clean environment (no endpoint, token or
    HF_HOME): default output folder ``hubedit-quickstart/`` in the working directory, the same name as the
    namespace its repos are published under (a folder ``hubedit-quickstart`` existing here must not turn the repo
    id ``hubedit-quickstart/<name>`` into a mistyped local path)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    out = cwd / "hubedit-quickstart"
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hubedit", "quickstart", "--no-progress"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=LIMIT_S + 60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, wall


def test_quickstart_end_to_end(quickstart):
    out, stdout, wall = quickstart
    print(f"hubedit quickstart wall time: {wall:.1f} s")
    assert wall < LIMIT_S
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["embedded"] and summary["endpoint"].startswith("http://127.0.0.1:")
    assert summary["hf_home"] == str(out / "hf-home")  # the user's cache is never touched
    shipped = reference.editor_folder() is not None  # the installation's reference editor, if any
    if shipped:
        lines = ["[1/7] Hub", "[2/7] Zoo", "[3/7] Editor", "[4/7] Editor", "[5/7] Reference editor", "[6/7] Edit",
                 "[7/7] Publish", "edited by the reference editor hubedit-quickstart/prune-edit-adult"]
    else:
        lines = ["note: no reference editor in this installation", "[1/6] Hub", "[2/6] Zoo", "[3/6] Editor",
                 "[4/6] Editor", "[5/6] Edit", "[6/6] Publish", "edited by the demo editor"]
    for line in (*lines, "hubedit quickstart finished in", "Published (one commit each):", "Where to look:"):
        assert line in stdout, line
    names = ("zoo", "editor", "edited", *(["reference_editor"] if shipped else []))
    assert sorted(summary["repos"]) == sorted(names)
    for name in names:
        assert re.fullmatch(r"[0-9a-f]{40}", summary["repos"][name]["commit"])
        assert summary["repos"][name]["commit"][:10] in stdout
    edited = summary["edited"]
    used = edited["editor"]  # which editor edited the model
    assert used["which"] == ("reference" if shipped else "demo")
    assert used["commit"] == summary["repos"]["reference_editor" if shipped else "editor"]["commit"]
    record = json.loads((out / "edited" / "config.json").read_text())["edit_record"]
    assert record["editor"] == {"repo_id": used["repo_id"], "revision": used["commit"]}
    assert record["target"] == used["target"]
    assert edited["onnx"]["test_max_abs_diff"] < 1e-4 and edited["onnx"]["test_rows"] == 16281
    assert 0 < edited["after"]["weights_kept"] < 1
    assert sorted(p.name for p in (out / "edited").iterdir()) == sorted(
        ["README.md", "config.json", "metrics.json", "model.onnx", "model.safetensors", "pareto.png"])
    card = ModelCard.load(out / "edited" / "README.md")
    validate_card(card)
    assert card.data.license == "cc-by-4.0" and card.data.model_name == "adult-mlp-pruned"
    assert summary["repos"]["zoo"]["repo_id"] in card.text  # the original's zoo, with its commit
    assert used["commit"] in card.text  # the editor that made the edit, at its commit
    assert (out / "editor" / "pareto.png").is_file()


def test_quickstart_published_everything_to_its_hub_storage(quickstart):
    """The embedded Hub's storage persists: serve it again and read the three repos at their commits."""
    from hubedit.testing import HubServer

    out, _, _ = quickstart
    summary = json.loads((out / "quickstart.json").read_text())
    with HubServer(out / "hub") as hub:
        api = HfApi(endpoint=hub.url, token="t")
        repos = summary["repos"]
        zoo_files = set(api.list_repo_files(repos["zoo"]["repo_id"], repo_type="dataset",
                                            revision=repos["zoo"]["commit"]))
        assert {"README.md", "zoo.json"} <= zoo_files and any(f.startswith("data/test-") for f in zoo_files)
        assert {"README.md", "config.json", "model.safetensors", "pareto.png"} <= set(
            api.list_repo_files(repos["editor"]["repo_id"], revision=repos["editor"]["commit"]))
        assert set(api.list_repo_files(repos["edited"]["repo_id"], revision=repos["edited"]["commit"])) == {
            ".gitattributes", "README.md", "config.json", "metrics.json", "model.onnx", "model.safetensors",
            "pareto.png"}
        assert api.repo_info(repos["edited"]["repo_id"]).sha == repos["edited"]["commit"]


def test_quickstart_against_another_hub(quickstart, hub_server, hf_api, monkeypatch, capsys, tmp_path):
    """``--endpoint URL --token T``: the same flow on that Hub (here the session's test server), in-process
    because huggingface_hub already points there; the zoo build resumes from the first run."""
    import hubedit.quickstart as qs

    out, _, _ = quickstart
    monkeypatch.setenv("HF_TOKEN", "test-token")  # restored afterwards
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setitem(qs.QUICKSTART, "editor", {**qs.QUICKSTART["editor"], "steps": 8, "eval_every": 8})
    stand_in = _stand_in_reference(tmp_path, monkeypatch)
    summary = qs.run(out, endpoint=hub_server.url, namespace="qs-remote", progress=False)
    assert not summary["embedded"] and summary["endpoint"] == hub_server.url
    text = capsys.readouterr().out
    assert f"Hub at {hub_server.url}" in text and "qs-remote/adult-mlp-pruned" in text
    assert hf_api.repo_info("qs-remote/adult-mlp-pruned").private  # demo repos on a real Hub are private
    assert hf_api.repo_info("qs-remote/adult-mlp-pruned").sha == summary["repos"]["edited"]["commit"]
    assert hf_api.repo_info("qs-remote/adult-tiny-zoo", repo_type="dataset").sha == summary["repos"]["zoo"]["commit"]

    # the stand-in reference editor was published, loaded back from the Hub, and edited the model at target 0.2
    ref_repo = "qs-remote/prune-edit-adult"
    ref_commit = summary["repos"]["reference_editor"]["commit"]
    assert hf_api.repo_info(ref_repo).sha == ref_commit and hf_api.repo_info(ref_repo).private
    assert {"README.md", "config.json", "model.safetensors"} <= set(hf_api.list_repo_files(ref_repo))
    assert summary["edited"]["editor"] == {"which": "reference", "repo_id": ref_repo, "commit": ref_commit,
                                           "target": 0.2, "target_range": [0.05, 0.8]}
    assert "[5/7] Reference editor" in text and f"edited by the reference editor {ref_repo} at target 0.2" in text
    from hubedit.editor import Editor
    from hubedit.publish import load_edited
    from hubedit.zoo import Zoo

    assert all(torch.equal(a, b) for a, b in zip(Editor.from_pretrained(ref_repo).state_dict().values(),
                                                 stand_in.state_dict().values()))
    published = load_edited("qs-remote/adult-mlp-pruned", revision=summary["repos"]["edited"]["commit"])
    zoo = Zoo.from_hub("qs-remote/adult-tiny-zoo", revision=summary["repos"]["zoo"]["commit"])
    original = zoo["test"].stage("final")[0].to_module()
    expected = stand_in.edit(original, target=0.2)  # the published model is the stand-in's edit, weight for weight
    assert published.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(published.state_dict()[k], expected.state_dict()[k]) for k in expected.state_dict())
    metrics = json.loads(Path(hf_api.hf_hub_download("qs-remote/adult-mlp-pruned", "metrics.json",
                                                     revision=summary["repos"]["edited"]["commit"])).read_text())
    kept = metrics["after"]["weights_kept"]
    assert abs(kept - 0.2) <= 1 / metrics["after"]["n_weights"] + 1e-9  # the target is met (top-k of the weights)
    assert metrics["pareto"]["point"] == [kept, metrics["after"]["jsd"]]  # its Pareto position, on the card
    assert summary["edited"]["pareto"] == metrics["pareto"]["sentence"]
    assert ref_commit in (out / "edited" / "README.md").read_text()


def _stand_in_reference(tmp_path, monkeypatch):
    """A tiny target-conditioned pruning editor in place of the shipped reference editor; returns it."""
    from hubedit.editor import Editor

    torch.manual_seed(0)
    stand_in = Editor(requirement="prune", task="adult", target_range=[0.05, 0.8], metanet={"hidden": 8, "layers": 1},
                      validation_front=[{"target": 0.2, "metric": 0.2, "jsd": 0.01}])
    with torch.no_grad():  # not the identity: its edit must be told apart from the original
        for p in stand_in.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    stand_in.save_pretrained(tmp_path / "reference" / reference.QUICKSTART_EDITOR)
    monkeypatch.setattr(reference, "REFERENCE_DIR", tmp_path / "reference")
    return stand_in


def test_run_reexecs_when_the_client_points_elsewhere(tmp_path, monkeypatch):
    """In a process whose huggingface_hub was imported with another endpoint, run() starts a fresh process
    whose environment names the embedded server's port from the start."""
    import hubedit.quickstart as qs

    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        (tmp_path / "quickstart.json").write_text(json.dumps({"ok": True}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(qs.subprocess, "run", fake_run)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    assert qs.run(tmp_path, port=12345, progress=False) == {"ok": True}
    assert seen["cmd"][1:4] == ["-m", "hubedit", "quickstart"] and "--port" in seen["cmd"]
    assert seen["env"]["HF_ENDPOINT"] == "http://127.0.0.1:12345"
    assert seen["env"]["HF_HUB_DISABLE_XET"] == "1"
