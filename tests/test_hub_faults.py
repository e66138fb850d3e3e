"""Hub faults, against the embedded Hub server (``fail_next``) and an endpoint that accepts connections but never
answers: LFS upload / verify failures are :class:`HubError` naming the repo; a failed publish removes the repo or
branch that the same call created, never one that existed, and says what the Hub holds; every Hub call times out
(``HUBEDIT_HUB_TIMEOUT``); a mistyped local path is a ``HubError``, not a repo-id lookup.
"""

from __future__ import annotations

import os
import time

import pytest
from huggingface_hub import HfApi

from hubedit.errors import ConfigError
from hubedit.hub import HubError, committing, describe_repo, publish_folder, snapshot

SILENT_TIMEOUT = 0.5  # HUBEDIT_HUB_TIMEOUT in the timeout tests
FAST = 10.0  # seconds one call may take at most, imports included (a hang is caught by pytest-timeout)


@pytest.fixture
def folder(tmp_path):
    """A folder to publish: a small text file and a 4 KiB binary (over the LFS threshold of ``lfs_everything``)."""
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "weights.bin").write_bytes(os.urandom(4096))
    return tmp_path


@pytest.fixture
def lfs_everything(hub_server, monkeypatch):
    """The embedded Hub asks for every file over 1 KiB to go through LFS (batch, PUT, verify)."""
    monkeypatch.setattr(hub_server, "lfs_threshold", 1024)


def _branches(hf_api, repo_id) -> dict[str, str]:
    return {b.name: b.target_commit for b in hf_api.list_repo_refs(repo_id).branches}


# --- LFS failures -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lfs_upload", "lfs_verify"])
def test_lfs_failure_is_a_hub_error_naming_the_repo(kind, hub_server, hf_api, hub_repo_id, folder, lfs_everything):
    hf_api.create_repo(hub_repo_id)
    head = hf_api.repo_info(hub_repo_id).sha
    hub_server.fail_next(kind, status=403, message=f"injected {kind} failure")  # 4xx: the client does not retry
    with pytest.raises(HubError) as info:
        publish_folder(folder, hub_repo_id, commit_message="must not land")
    message = str(info.value)
    assert hub_repo_id in message and "weights.bin" in message and f"injected {kind} failure" in message
    assert "nothing was committed, the repo is unchanged" in message
    assert hf_api.repo_info(hub_repo_id).sha == head
    assert any(r.startswith("PUT /api/lfs/upload/") for r in hub_server.request_log)  # it did go through LFS

    # `committing` (any publishing block): the same failure, the same error type
    (folder / "weights.bin").write_bytes(os.urandom(4096))  # new bytes: a stored blob would skip upload and verify
    hub_server.fail_next(kind, status=403, message=f"injected {kind} failure")
    with pytest.raises(HubError, match=f"(?s){hub_repo_id}.*nothing was committed.*injected {kind} failure"):
        with committing(describe_repo(hub_repo_id, "model", None)):
            HfApi(token="test-token").upload_folder(repo_id=hub_repo_id, folder_path=str(folder))
    assert hf_api.repo_info(hub_repo_id).sha == head


# --- nothing half-created -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,status", [("commit", 500), ("lfs_upload", 403), ("preupload", 400)])
def test_failed_publish_to_a_new_repo_removes_it(kind, status, hub_server, hf_api, hub_repo_id, folder,
                                                 lfs_everything):
    hub_server.fail_next(kind, status=status)
    with pytest.raises(HubError, match="nothing was committed, and the repo this call had created was deleted again"):
        publish_folder(folder, hub_repo_id, commit_message="must not land")
    assert not hf_api.repo_exists(hub_repo_id)
    info = publish_folder(folder, hub_repo_id, commit_message="lands")  # the next try starts from scratch
    assert hf_api.repo_info(hub_repo_id).sha == info.oid
    assert {"notes.txt", "weights.bin"} <= set(hf_api.list_repo_files(hub_repo_id))


def test_failed_publish_to_a_new_branch_removes_only_the_branch(hub_server, hf_api, hub_repo_id, folder):
    first = publish_folder(folder, hub_repo_id, commit_message="main").oid
    (folder / "notes.txt").write_text("changed\n")  # an unchanged folder would skip the (empty) commit
    hub_server.fail_next("commit", status=500)
    with pytest.raises(HubError, match="branch 'feature' this call had created was deleted again: the repo is "
                                       "unchanged"):
        publish_folder(folder, hub_repo_id, revision="feature", create_branch=True, commit_message="must not land")
    assert _branches(hf_api, hub_repo_id) == {"main": first}


def test_failed_publish_never_removes_what_existed(hub_server, hf_api, hub_repo_id, folder):
    first = publish_folder(folder, hub_repo_id, commit_message="main").oid
    hf_api.create_branch(hub_repo_id, branch="dev")
    (folder / "notes.txt").write_text("changed\n")  # an unchanged folder would skip the (empty) commit
    for revision in ("main", "dev"):
        hub_server.fail_next("commit", status=500)
        with pytest.raises(HubError, match="nothing was committed, the repo is unchanged"):
            publish_folder(folder, hub_repo_id, revision=revision, create_branch=True, commit_message="must not land")
        assert _branches(hf_api, hub_repo_id) == {"main": first, "dev": first}


def test_failed_edited_model_push_to_a_new_repo_leaves_nothing(hub_server, hf_api, hub_repo_id):
    """``EditedMLP.push_to_hub`` publishes through ``hub.publish_folder``: a failed commit removes the new repo."""
    from hubedit.editor import EditedMLP
    from hubedit.mlp import MLP, MLPConfig
    from hubedit.tasks import load_task

    task = load_task("adult")
    edited = EditedMLP.wrap(MLP(MLPConfig(in_features=task.n_features, hidden=(4,))),
                            {"requirement": "prune", "task": "adult", "lam": 0.5})
    hub_server.fail_next("commit", status=500)
    with pytest.raises(HubError, match="(?s)repo this call had created was deleted again.*kept at ") as info:
        edited.push_to_hub(hub_repo_id, compute_baselines=False, onnx=False)
    assert not hf_api.repo_exists(hub_repo_id)
    kept = str(info.value).rsplit("kept at ", 1)[1]
    assert os.path.isfile(os.path.join(kept, "model.safetensors"))  # the prepared folder is not lost


# --- timeouts -------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_downloads_from_a_silent_endpoint_time_out(silent_endpoint):
    from hubedit.publish import load_edited

    for load in (lambda: snapshot("org/never-cached-zoo", repo_type="dataset"),
                 lambda: load_edited("org/never-cached-model")):
        start = time.monotonic()
        with pytest.raises(HubError, match=f"did not answer within {SILENT_TIMEOUT:g} s.*not in the local cache"):
            load()
        assert time.monotonic() - start < FAST


@pytest.mark.timeout(60)
def test_pushes_to_a_silent_endpoint_time_out(silent_endpoint, folder, tmp_path):
    from hubedit.publish import publish_edited_folder

    start = time.monotonic()
    with pytest.raises(HubError, match=f"(?s)org/never-answered.*did not answer within {SILENT_TIMEOUT:g} s"
                                       ".*request to create the repo got no answer, so it may now exist"):
        publish_folder(folder, "org/never-answered", commit_message="x")
    assert time.monotonic() - start < FAST

    start = time.monotonic()  # any publishing block inside `committing`
    with pytest.raises(HubError, match="did not answer within"):
        with committing(describe_repo("org/never-answered", "model", None)):
            HfApi().create_repo("org/never-answered", exist_ok=True)
    assert time.monotonic() - start < FAST

    prepared = tmp_path / "prepared"  # an edited-model folder: its card is validated with the endpoint first
    prepared.mkdir()
    (prepared / "README.md").write_text("---\nlibrary_name: hubedit\n---\n\n# an edited model\n")
    (prepared / "config.json").write_text("{}")
    (prepared / "model.safetensors").write_bytes(b"not read before the upload")
    start = time.monotonic()
    with pytest.raises(HubError, match="(?s)could not validate the card.*ReadTimeout.*nothing was uploaded"):
        publish_edited_folder(prepared, "org/never-answered")
    assert time.monotonic() - start < FAST


def test_hub_timeout_comes_from_the_environment(monkeypatch):
    from hubedit.hub import hub_timeout

    monkeypatch.delenv("HUBEDIT_HUB_TIMEOUT", raising=False)
    assert hub_timeout() == 60.0
    monkeypatch.setenv("HUBEDIT_HUB_TIMEOUT", "2.5")
    assert hub_timeout() == 2.5
    for off in ("none", "0"):
        monkeypatch.setenv("HUBEDIT_HUB_TIMEOUT", off)
        assert hub_timeout() is None
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("HUBEDIT_HUB_TIMEOUT", bad)
        with pytest.raises(ConfigError, match=f"HUBEDIT_HUB_TIMEOUT='{bad}': expected a number of seconds"):
            hub_timeout()


# --- a mistyped local path is not a repo id ---------------------------------------------------------------------
def test_mistyped_paths_and_bad_repo_ids_are_hub_errors(hub_server, tmp_path, folder):
    from hubedit.publish import load_edited

    before = len(hub_server.request_log)
    with pytest.raises(HubError, match="not an existing local folder, and not a Hub repo id"):
        load_edited(str(tmp_path / "edited" / "typo"))
    with pytest.raises(HubError, match="not an existing local folder, and not a Hub repo id"):
        load_edited("./edited-typo")
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        snapshot("org/too/deep")
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        publish_folder(folder, "org/bad name", commit_message="x")
    assert len(hub_server.request_log) == before  # nothing was asked of the Hub


def test_cli_card_with_a_mistyped_editor_path(tmp_path, capsys):
    from hubedit.cli import main
    from hubedit.editor import EditedMLP
    from hubedit.mlp import MLP, MLPConfig
    from hubedit.tasks import load_task

    task = load_task("adult")
    model = MLP(MLPConfig(in_features=task.n_features, hidden=(4,)))
    EditedMLP.wrap(model, {"requirement": "prune", "task": "adult", "lam": 0.5}).save_pretrained(
        tmp_path / "edited", compute_baselines=False, onnx=False)
    model.save(tmp_path / "original.safetensors")
    rc = main(["card", str(tmp_path / "edited"), "--reference", str(tmp_path / "original.safetensors"),
               "--no-baselines", "--editor", str(tmp_path / "editors" / "prune")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "editor" in err and "is not an existing local folder, and not a Hub repo id" in err


def test_a_cleanup_that_fails_is_reported(hub_server, hf_api, hub_repo_id, folder):
    hub_server.fail_next("commit", status=500)
    hub_server.fail_next("delete_repo", status=500, message="injected delete failure")
    with pytest.raises(HubError, match="(?s)nothing was committed, but the empty repo this call created is still there"
                                       ".*injected delete failure.*delete it or push again"):
        publish_folder(folder, hub_repo_id, commit_message="must not land")
    assert hf_api.list_repo_files(hub_repo_id) == [".gitattributes"]  # left empty, as the message says
    hf_api.delete_repo(hub_repo_id)


def test_a_repo_id_whose_namespace_is_a_folder_here(tmp_path, monkeypatch):
    """``ns/name`` with a folder ``ns`` in the working directory reads as a mistyped local path -- unless a revision
    is given, which only Hub repos have (the quickstart's default output folder is named like its namespace)."""
    from hubedit.hub import local_folder_or_repo_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ns").mkdir()
    with pytest.raises(HubError, match="is not an existing local folder, and not a Hub repo id"):
        local_folder_or_repo_id("ns/editor", "editor")
    assert local_folder_or_repo_id("ns/editor", "editor", revision="a" * 40) is None
    assert local_folder_or_repo_id("other/editor", "editor") is None  # no such folder here: a repo id
    (tmp_path / "ns" / "editor").mkdir()
    assert local_folder_or_repo_id("ns/editor", "editor", revision="main").resolve() == tmp_path / "ns" / "editor"
    with pytest.raises(HubError, match="not an existing local folder"):
        local_folder_or_repo_id("./ns/missing", "editor", revision="main")  # path-like spellings stay local
