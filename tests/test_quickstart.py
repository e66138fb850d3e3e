"""``hubedit quickstart`` end to end: in a fresh process with nothing set up (embedded Hub), timed; then the
same flow pointed at another Hub (the session's test server) with ``--endpoint``/``--token``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from huggingface_hub import HfApi, ModelCard

from hubedit.cards import validate_card

pytestmark = pytest.mark.slow

LIMIT_S = 600  # the bound: 10 minutes on 2 cores (a run takes 1-3 minutes here, up to ~6 when the machine is shared)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """``python -m hubedit quickstart --out OUT`` in a clean environment: no endpoint, token or HF_HOME."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hubedit", "quickstart", "--out", str(out), "--no-progress"],
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
    for line in ("[1/6] Hub", "[2/6] Zoo", "[3/6] Editor", "[4/6] Editor", "[5/6] Edit", "[6/6] Publish",
                 "hubedit quickstart finished in", "Published (one commit each):", "Where to look:"):
        assert line in stdout, line
    for name in ("zoo", "editor", "edited"):
        assert re.fullmatch(r"[0-9a-f]{40}", summary["repos"][name]["commit"])
        assert summary["repos"][name]["commit"][:10] in stdout
    edited = summary["edited"]
    assert edited["onnx"]["test_max_abs_diff"] < 1e-4 and edited["onnx"]["test_rows"] == 16281
    assert 0 < edited["after"]["weights_kept"] < 1
    assert sorted(p.name for p in (out / "edited").iterdir()) == sorted(
        ["README.md", "config.json", "metrics.json", "model.onnx", "model.safetensors", "pareto.png"])
    card = ModelCard.load(out / "edited" / "README.md")
    validate_card(card)
    assert card.data.license == "cc-by-4.0" and card.data.model_name == "adult-mlp-pruned"
    assert summary["repos"]["zoo"]["repo_id"] in card.text  # the original's zoo, with its commit
    assert summary["repos"]["editor"]["commit"] in card.text
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


def test_quickstart_against_another_hub(quickstart, hub_server, hf_api, monkeypatch, capsys):
    """``--endpoint URL --token T``: the same flow on that Hub (here the session's test server), in-process
    because huggingface_hub already points there; the zoo build resumes from the first run."""
    import hubedit.quickstart as qs

    out, _, _ = quickstart
    monkeypatch.setenv("HF_TOKEN", "test-token")  # restored afterwards
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setitem(qs.QUICKSTART, "editor", {**qs.QUICKSTART["editor"], "steps": 8, "eval_every": 8})
    summary = qs.run(out, endpoint=hub_server.url, namespace="qs-remote", progress=False)
    assert not summary["embedded"] and summary["endpoint"] == hub_server.url
    text = capsys.readouterr().out
    assert f"Hub at {hub_server.url}" in text and "qs-remote/adult-mlp-pruned" in text
    assert hf_api.repo_info("qs-remote/adult-mlp-pruned").private  # demo repos on a real Hub are private
    assert hf_api.repo_info("qs-remote/adult-mlp-pruned").sha == summary["repos"]["edited"]["commit"]
    assert hf_api.repo_info("qs-remote/adult-tiny-zoo", repo_type="dataset").sha == summary["repos"]["zoo"]["commit"]


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
