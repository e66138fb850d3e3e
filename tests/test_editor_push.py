"""``Editor.push_to_hub`` publishes through ``hub.publish_folder`` (one commit; a failed push removes the repo or
branch it created, never one that existed), and ``Editor.from_pretrained`` is bounded by ``HUBEDIT_HUB_TIMEOUT``."""

from __future__ import annotations

import time

import pytest
import torch

from hubedit.editor import Editor
from hubedit.errors import ConfigError
from hubedit.hub import HubError

pytestmark = pytest.mark.usefixtures("single_thread")

EDITOR_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "pareto.png"}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def editor() -> Editor:
    torch.manual_seed(0)
    ed = Editor(requirement="prune", task="adult", lam=0.5, metanet={"hidden": 16, "layers": 2},
                validation_front=[{"lam": 0.5, "metric": 0.4, "jsd": 0.01}])
    with torch.no_grad():
        for p in ed.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return ed


def _changed(editor: Editor) -> Editor:
    other = Editor(**editor.settings)
    other.load_state_dict(editor.state_dict())
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    return other


def _branches(hf_api, repo_id) -> dict[str, str]:
    return {b.name: b.target_commit for b in hf_api.list_repo_refs(repo_id).branches}


def test_a_failed_push_to_a_new_repo_leaves_no_repo(editor, hub_server, hf_api, hub_repo_id):
    hub_server.fail_next("commit", status=500, message="injected commit failure")
    with pytest.raises(HubError, match=f"(?s){hub_repo_id}.*nothing was committed, and the repo this call had created "
                                       "was deleted again: the Hub is as before.*injected commit failure"):
        editor.push_to_hub(hub_repo_id)
    assert not hf_api.repo_exists(hub_repo_id)
    info = editor.push_to_hub(hub_repo_id)  # the next try starts from scratch
    assert hf_api.repo_info(hub_repo_id).sha == info.oid


def test_a_failed_push_never_deletes_an_existing_repo_or_branch(editor, hub_server, hf_api, hub_repo_id):
    first = editor.push_to_hub(hub_repo_id).oid
    hf_api.create_branch(hub_repo_id, branch="dev")
    changed = _changed(editor)
    for branch in (None, "dev"):  # main and a branch that existed: left as they were
        hub_server.fail_next("commit", status=500)
        with pytest.raises(HubError, match="nothing was committed, the repo is unchanged"):
            changed.push_to_hub(hub_repo_id, branch=branch)
        assert _branches(hf_api, hub_repo_id) == {"main": first, "dev": first}
    hub_server.fail_next("commit", status=500)  # a branch this push creates goes again; the repo stays
    with pytest.raises(HubError, match="branch 'feature' this call had created was deleted again: the repo is "
                                       "unchanged"):
        changed.push_to_hub(hub_repo_id, branch="feature")
    assert _branches(hf_api, hub_repo_id) == {"main": first, "dev": first}
    assert _same(Editor.from_pretrained(hub_repo_id), editor)


def test_a_push_is_one_commit_that_loads_back(editor, hf_api, hub_repo_id):
    info = editor.push_to_hub(hub_repo_id, model_card_kwargs={"repo_id": hub_repo_id})
    assert [c.commit_id for c in hf_api.list_repo_commits(hub_repo_id)][0] == info.oid
    assert len(hf_api.list_repo_commits(hub_repo_id)) == 2  # the repo's initial commit, then all files at once
    assert set(hf_api.list_repo_files(hub_repo_id)) == EDITOR_FILES
    loaded = Editor.from_pretrained(hub_repo_id)
    assert _same(loaded, editor) and loaded.source == {"repo_id": hub_repo_id, "revision": info.oid}
    assert loaded.settings == editor.settings
    changed = _changed(editor)  # to a new branch: created from main, main untouched
    on_branch = changed.push_to_hub(hub_repo_id, branch="v2", commit_message="second editor").oid
    assert _branches(hf_api, hub_repo_id) == {"main": info.oid, "v2": on_branch}
    assert _same(Editor.from_pretrained(hub_repo_id, revision="v2"), changed)
    assert _same(Editor.from_pretrained(hub_repo_id), editor)


def test_a_bare_repo_name_lands_in_the_token_namespace(editor, hf_api, hub_repo_id):
    """As the mixin's push did: the Hub puts ``name`` under the token's user, and the commit goes there."""
    name = hub_repo_id.split("/")[1]
    info = editor.push_to_hub(name)
    user = hf_api.whoami()["name"]
    assert hf_api.repo_info(f"{user}/{name}").sha == info.oid
    assert _same(Editor.from_pretrained(f"{user}/{name}"), editor)


def test_options_the_push_cannot_honour_are_refused_before_any_request(editor, hub_server, hf_api, hub_repo_id):
    before = len(hub_server.request_log)
    with pytest.raises(ConfigError, match="create_pr, delete_patterns are not supported"):
        editor.push_to_hub(hub_repo_id, create_pr=True, delete_patterns=["*.bin"])
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['privat'\]"):
        editor.push_to_hub(hub_repo_id, privat=True)
    assert len(hub_server.request_log) == before
    assert not hf_api.repo_exists(hub_repo_id)


@pytest.mark.timeout(60)
def test_loading_an_editor_from_a_silent_endpoint_times_out(silent_endpoint, tmp_path):
    """The metadata request of every file the load fetches -- the mixin's included -- is bounded by hubedit's
    timeout, not the client's 10 s default."""
    start = time.monotonic()
    with pytest.raises(HubError, match="(?s)org/never-cached-editor.*did not answer within 0.5 s"):
        Editor.from_pretrained("org/never-cached-editor", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 5.0
