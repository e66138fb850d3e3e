"""Publishing through the real clients (huggingface_hub, datasets) against the local Hub server.

Zoo push + ``load_dataset``; editor push + ``from_pretrained`` at a pinned revision; edited-model push with
card + ONNX in one commit; offline reload from the cache (subprocess, ``HF_HUB_OFFLINE=1``); a failed upload
leaving the repo unchanged; a card failure raising before any request; 404s turned into clear errors;
``hubedit edit --push``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard

from hubedit.editor import EditedMLP, Editor
from hubedit.graph import mlps_to_batch
from hubedit.hub import HubError, HubNotFoundError
from hubedit.publish import PublishError, load_edited, publish_edited_folder, push_edited
from hubedit.zoo import Zoo

NET = {"hidden": 16, "layers": 2}
EDITED_FILES = {".gitattributes", "README.md", "config.json", "metrics.json", "model.onnx", "model.safetensors",
                "pareto.png"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def zoo(tiny_adult_zoo):
    return tiny_adult_zoo


@pytest.fixture(scope="module")
def model(zoo):
    return zoo["test"][0].to_module()


@pytest.fixture(scope="module")
def editor(model):
    """A pruning editor whose heads are randomised and whose edge-mask head drops about half of the weights."""
    editor = Editor(requirement="prune", variant="prune-edit", task="adult", lam=0.5, metanet=NET)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in editor.named_parameters():
            if "heads" in name or "classifier" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        out = editor.metanet(mlps_to_batch([model]))
        editor.metanet.edge_classifier[-1].bias[1] -= (out.edge_logits[:, 1] - out.edge_logits[:, 0]).median()
    editor.settings["validation_front"] = [{"lam": 0.5, "metric": 0.5, "jsd": 0.02}]
    return editor.eval()


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_zoo_push_and_load_dataset(zoo, hub_server, hub_repo_id):
    import datasets

    info = zoo.push_to_hub(hub_repo_id)
    ds = datasets.load_dataset(hub_repo_id, revision=info.oid)
    assert {k: len(v) for k, v in ds.items()} == {s: len(zoo[s]) for s in ("train", "validation", "test")}
    back = Zoo.from_hub(hub_repo_id, revision=info.oid)
    assert back.source == {"repo_id": hub_repo_id, "revision": info.oid}
    assert [c.model_id for c in back["test"]] == [c.model_id for c in zoo["test"]]
    assert EditedMLP.from_bytes(ds["test"][0]["weights"]).config == zoo["test"][0].to_module().config


def test_editor_push_and_from_pretrained_at_pinned_revision(editor, hf_api, hub_repo_id):
    first = editor.push_to_hub(hub_repo_id, model_card_kwargs={"repo_id": hub_repo_id}).oid
    files = set(hf_api.list_repo_files(hub_repo_id))
    assert {"README.md", "config.json", "model.safetensors", "pareto.png"} <= files
    changed = Editor.from_pretrained(hub_repo_id)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    second = changed.push_to_hub(hub_repo_id).oid
    assert second != first
    pinned = Editor.from_pretrained(hub_repo_id, revision=first)
    assert _same(pinned, editor) and pinned.source == {"repo_id": hub_repo_id, "revision": first}
    assert _same(Editor.from_pretrained(hub_repo_id), changed)
    card = ModelCard.load(hub_repo_id)
    assert "## Validation Pareto points" in card.text and card.data.library_name == "hubedit"


def test_edited_push_one_commit_with_card_and_onnx(editor, model, zoo, hf_api, hub_repo_id):
    edited = editor.edit(model)
    edited.push_to_hub(hub_repo_id, reference=model, editor=editor)  # creates the repo
    commits_before = len(hf_api.list_repo_commits(hub_repo_id))
    edited2 = editor.edit(zoo["test"][1].to_module())
    info = push_edited(edited2, hub_repo_id, reference=zoo["test"][1].to_module(), editor=editor)
    assert len(hf_api.list_repo_commits(hub_repo_id)) == commits_before + 1  # all files in ONE commit
    assert set(hf_api.list_repo_files(hub_repo_id, revision=info.oid)) == EDITED_FILES
    assert _same(load_edited(hub_repo_id, revision=info.oid), edited2)
    first = hf_api.list_repo_commits(hub_repo_id)[1].commit_id
    assert _same(load_edited(hub_repo_id, revision=first), edited)  # pinned to the earlier commit
    card = ModelCard.load(hub_repo_id)
    assert card.data.model_name == hub_repo_id.split("/")[-1]
    assert {r.metric_type for r in card.data.eval_results} >= {"accuracy", "jsd", "weights_kept"}
    assert f'hf_hub_download("{hub_repo_id}", "model.onnx")' in card.text
    assert "![Pareto position of this model](pareto.png)" in card.text


def test_push_to_a_branch(editor, model, hf_api, hub_repo_id):
    info = editor.edit(model).push_to_hub(hub_repo_id, reference=model, editor=editor, revision="v1",
                                          compute_baselines=False)
    refs = hf_api.list_repo_refs(hub_repo_id)
    assert {b.name: b.target_commit for b in refs.branches}["v1"] == info.oid
    assert "model.onnx" not in hf_api.list_repo_files(hub_repo_id)  # main is untouched
    from huggingface_hub import hf_hub_download

    assert 'revision="v1"' in ModelCard.load(hf_hub_download(hub_repo_id, "README.md", revision="v1")).text


def test_offline_reload_from_the_cache(editor, model, hub_server, hub_repo_id):
    editor_repo, edited_repo = hub_repo_id + "-editor", hub_repo_id + "-edited"
    editor_sha = editor.push_to_hub(editor_repo).oid
    edited = editor.edit(model)
    edited_sha = push_edited(edited, edited_repo, reference=model, compute_baselines=False).oid
    Editor.from_pretrained(editor_repo, revision=editor_sha)  # online: fills the cache
    load_edited(edited_repo)
    script = textwrap.dedent(f"""
        import hashlib
        from hubedit.editor import Editor
        from hubedit.hub import HubError
        from hubedit.publish import load_edited

        def digest(m):
            h = hashlib.sha256()
            for k, v in sorted(m.state_dict().items()):
                h.update(k.encode()); h.update(v.contiguous().numpy().tobytes())
            return h.hexdigest()

        e = Editor.from_pretrained({editor_repo!r}, revision={editor_sha!r})
        print(digest(e), e.source["revision"])
        m = load_edited({edited_repo!r})
        print(digest(m), m.source["revision"])
        print(digest(load_edited({edited_repo!r}, revision={edited_sha!r})))
        try:
            load_edited({hub_repo_id + "-never-downloaded"!r})
        except HubError as exc:
            print("HubError", "not in the local cache" in str(exc))
        """)
    before = len(hub_server.request_log)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # same HF_HOME / HF_ENDPOINT as this process
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{_digest(editor)} {editor_sha}"
    assert lines[1] == f"{_digest(edited)} {edited_sha}"
    assert lines[2] == _digest(edited)
    assert lines[3] == "HubError True"
    assert len(hub_server.request_log) == before  # nothing reached the server


def test_failed_upload_leaves_the_repo_unchanged(editor, model, hub_server, hf_api, hub_repo_id):
    edited = editor.edit(model)
    first = push_edited(edited, hub_repo_id, reference=model, compute_baselines=False).oid
    files = set(hf_api.list_repo_files(hub_repo_id))
    hub_server.fail_next("commit", status=500)
    with pytest.raises(HubError, match="(?s)repo is unchanged.*kept at ") as info:
        push_edited(editor.edit(model), hub_repo_id, reference=model, compute_baselines=False,
                    commit_message="should not land")
    kept = str(info.value).rsplit("kept at ", 1)[1]
    assert os.path.isfile(os.path.join(kept, "model.safetensors"))  # the weights are not lost
    shutil.rmtree(kept)
    assert hf_api.repo_info(hub_repo_id).sha == first
    assert set(hf_api.list_repo_files(hub_repo_id)) == files
    assert "should not land" not in [c.title for c in hf_api.list_repo_commits(hub_repo_id)]


def test_unreachable_endpoint_is_a_hub_error_and_keeps_the_weights(editor, model, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="(?s)unreachable.*ConnectError.*kept at ") as info:
        push_edited(editor.edit(model), "org/never-published", reference=model, compute_baselines=False)
    kept = str(info.value).rsplit("kept at ", 1)[1]
    assert os.path.isfile(os.path.join(kept, "model.safetensors"))
    # the upload itself (card validation skipped) fails the same way
    with pytest.raises(HubError, match="(?s)endpoint is unreachable.*nothing was committed.*kept at "):
        publish_edited_folder(kept, "org/never-published", validate_remote=False)
    shutil.rmtree(kept)


def test_editor_push_failures_are_hub_errors(editor, hub_server, hf_api, hub_repo_id, monkeypatch):
    import socket

    from huggingface_hub import constants

    hub_server.fail_next("commit", status=500)
    with pytest.raises(HubError, match=f"(?s){hub_repo_id}.*nothing was committed.*500"):
        editor.push_to_hub(hub_repo_id)
    assert not hf_api.repo_exists(hub_repo_id)  # the repo this push created was deleted again
    editor.push_to_hub(hub_repo_id)  # the next try lands
    assert {"config.json", "model.safetensors"} <= set(hf_api.list_repo_files(hub_repo_id))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="ConnectError"):
        editor.push_to_hub(hub_repo_id)


def test_card_failure_raises_before_any_request(editor, model, hub_server, hf_api, hub_repo_id, tmp_path, monkeypatch):
    import hubedit.cards.edited_card as edited_card

    def broken(*a, **k):
        raise ValueError("bad card")

    monkeypatch.setattr(edited_card, "edited_model_card", broken)
    before = len(hub_server.request_log)
    edited = editor.edit(model)
    with pytest.raises(PublishError, match="the weights and config are safe in") as info:
        edited.push_to_hub(hub_repo_id, reference=model, compute_baselines=False, folder=tmp_path / "prepared")
    assert info.value.folder == tmp_path / "prepared"
    assert _same(EditedMLP.from_bytes((tmp_path / "prepared" / "model.safetensors").read_bytes()), edited)
    assert len(hub_server.request_log) == before
    assert not hf_api.repo_exists(hub_repo_id)


def test_card_rejected_by_the_hub_validator_uploads_nothing(editor, model, hub_server, hf_api, hub_repo_id):
    hub_server.fail_next("validate_yaml", status=400, message="invalid metadata")
    with pytest.raises(PublishError, match="did not validate.*nothing was uploaded") as info:
        editor.edit(model).push_to_hub(hub_repo_id, reference=model, compute_baselines=False)
    assert not hf_api.repo_exists(hub_repo_id)
    assert (info.value.folder / "model.safetensors").is_file()  # the prepared folder is kept (and named)
    shutil.rmtree(info.value.folder)


def test_404s_are_clear_errors(editor, hf_api, hub_repo_id):
    missing = hub_repo_id + "-missing"
    with pytest.raises(HubNotFoundError, match=f"{missing}.*no such repo"):
        load_edited(missing)
    with pytest.raises(HubNotFoundError, match="no such repo"):
        Editor.from_pretrained(missing)
    editor.push_to_hub(hub_repo_id)
    with pytest.raises(HubNotFoundError, match="no-such-branch.*no such revision"):
        Editor.from_pretrained(hub_repo_id, revision="no-such-branch")
    with pytest.raises(HubNotFoundError, match="no such revision"):
        load_edited(hub_repo_id, revision="0" * 40)


def test_cli_edit_push(editor, model, hf_api, hub_repo_id, tmp_path, capsys):
    from hubedit.cli import main

    editor.save_pretrained(tmp_path / "editor")
    model.save(tmp_path / "model.safetensors")
    rc = main(["edit", "--editor", str(tmp_path / "editor"), "--model", str(tmp_path / "model.safetensors"),
               "--out", str(tmp_path / "out"), "--push", hub_repo_id])
    assert rc == 0
    out = capsys.readouterr().out
    sha = hf_api.repo_info(hub_repo_id).sha
    assert f"published {hub_repo_id} at commit {sha}" in out
    assert set(hf_api.list_repo_files(hub_repo_id)) == EDITED_FILES
    pushed = load_edited(hub_repo_id, revision=sha)
    assert _same(pushed, EditedMLP.from_bytes((tmp_path / "out" / "model.safetensors").read_bytes()))
    assert pushed.record["editor"] == {"path": str(tmp_path / "editor")}
