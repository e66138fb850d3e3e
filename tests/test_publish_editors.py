"""``hubedit publish-editors FOLDER --org ORG``: every editor folder under FOLDER to ``ORG/<folder name>``, one
repo and one commit each, against the session's embedded Hub; names and editors are checked before any push."""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pytest
import torch

from hubedit import cli
from hubedit.editor import Editor
from hubedit.errors import ConfigError, CorruptFileError
from hubedit.publish_editors import PublishEditorsError, find_editor_folders, publish_editors

pytestmark = pytest.mark.usefixtures("single_thread")

EDITOR_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "pareto.png"}
TINY = {"hidden": 8, "layers": 1}


def _randomised(editor: Editor, seed: int) -> Editor:
    """A fresh editor is the identity (zero-initialised heads): give it weights that tell two editors apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in editor.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return editor


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def editors_folder(tmp_path_factory):
    """Two tiny editors (one lambda, one target-conditioned) next to a zoo card folder, an edited-model folder
    (a config.json without a 'requirement') and a plain file, as in ``model_cards/``."""
    root = tmp_path_factory.mktemp("model_cards")
    front = [{"lam": 0.1, "metric": 0.4, "jsd": 0.01}]  # so that the card has its Pareto plot
    _randomised(Editor(requirement="prune", task="adult", lam=0.1, metanet=TINY, validation_front=front),
                1).save_pretrained(root / "prune-edit-adult")
    front = [{"target": t, "metric": t, "jsd": 0.05 - t / 20} for t in (0.1, 0.5)]
    _randomised(Editor(requirement="prune", task="adult", target_range=[0.05, 0.8], metanet=TINY,
                       validation_front=front), 2).save_pretrained(root / "prune-target-adult")
    (root / "zoo").mkdir()
    (root / "zoo" / "README.md").write_text("# a zoo's card\n")
    (root / "edited-model").mkdir()
    (root / "edited-model" / "config.json").write_text(json.dumps({"format": "hubedit.edited-mlp", "edit_record": {}}))
    (root / "README.md").write_text("# example cards\n")
    return root


@pytest.fixture
def org() -> str:
    return f"pe-{uuid.uuid4().hex[:10]}"


def _copy(editors_folder, tmp_path):
    return shutil.copytree(editors_folder, tmp_path / "cards")


def test_finds_the_editor_folders_and_says_why_others_are_skipped(editors_folder):
    editors, skipped = find_editor_folders(editors_folder)
    assert [p.name for p in editors] == ["prune-edit-adult", "prune-target-adult"]
    reasons = {s.folder.name: s.reason for s in skipped}
    assert reasons == {"edited-model": "config.json names no 'requirement' (not an editor)", "zoo": "no config.json"}


def test_publishes_each_editor_to_its_own_repo_in_one_commit(editors_folder, hub_server, hf_api, org, capsys):
    assert cli.main(["publish-editors", str(editors_folder), "--org", org]) == 0
    out = capsys.readouterr().out
    for name in ("prune-edit-adult", "prune-target-adult"):
        repo_id = f"{org}/{name}"
        sha = hf_api.repo_info(repo_id).sha
        assert re.search(rf"published {name}\s+{repo_id} @ {sha}\n", out), out
        assert set(hf_api.list_repo_files(repo_id)) == EDITOR_FILES
        assert len(hf_api.list_repo_commits(repo_id)) == 2  # the repo's initial commit, then all files at once
        loaded = Editor.from_pretrained(repo_id)
        local = Editor.from_pretrained(editors_folder / name)
        assert _same(loaded, local) and loaded.settings == local.settings
        assert loaded.source == {"repo_id": repo_id, "revision": sha}
        card = hf_api.hf_hub_download(repo_id, "README.md")
        assert f'from_pretrained("{repo_id}")' in open(card).read()  # the card names its own repo
    assert Editor.from_pretrained(f"{org}/prune-target-adult").target_range == (0.05, 0.8)
    assert re.search(r"skipped\s+edited-model\s+config.json names no 'requirement'", out)
    assert re.search(r"skipped\s+zoo\s+no config.json", out)
    assert "2 editor(s) published" in out
    for other in ("zoo", "edited-model", "README.md"):
        assert not hf_api.repo_exists(f"{org}/{other}")


def test_only_and_revision(editors_folder, hf_api, org):
    report = publish_editors(editors_folder, org, only=["prune-target-adult"], revision="v1")
    (item,) = report.editors
    repo_id = f"{org}/prune-target-adult"
    assert item.repo_id == repo_id and item.name == "prune-target-adult"
    branches = {b.name: b.target_commit for b in hf_api.list_repo_refs(repo_id).branches}
    assert branches["v1"] == item.commit and branches["main"] != item.commit  # main holds only the initial commit
    assert _same(Editor.from_pretrained(repo_id, revision="v1"), Editor.from_pretrained(editors_folder / item.name))
    assert not hf_api.repo_exists(f"{org}/prune-edit-adult")
    with pytest.raises(ConfigError, match="--only prune-bank: not an editor folder.*: prune-edit-adult, prune-target"):
        publish_editors(editors_folder, org, only=["prune-bank"])


@pytest.mark.parametrize("bad_org", ["bad org", "org/sub", "org..x", ""])
def test_a_bad_org_is_an_error_before_any_request(editors_folder, hub_server, bad_org, capsys):
    before = len(hub_server.request_log)
    assert cli.main(["publish-editors", str(editors_folder), "--org", bad_org]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubedit: error: ") and repr(bad_org) in lines[0], lines
    assert len(hub_server.request_log) == before


def test_a_bad_folder_name_or_a_broken_editor_publishes_nothing(editors_folder, tmp_path, hub_server, hf_api, org):
    """Every repo id is checked and every editor loaded before the first push: the good editor that sorts first
    is not published either."""
    cards = _copy(editors_folder, tmp_path)
    shutil.copytree(cards / "prune-target-adult", cards / "prune bank")  # a space: not a valid repo name
    before = len(hub_server.request_log)
    with pytest.raises(ConfigError, match=f"'prune bank' gives the repo id '{org}/prune bank'"):
        publish_editors(cards, org)
    shutil.rmtree(cards / "prune bank")
    config = json.loads((cards / "prune-target-adult" / "config.json").read_text())
    config["metanet"]["hidden"] = 16  # no longer the shape of its weights
    (cards / "prune-target-adult" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="prune-target-adult"):
        publish_editors(cards, org)
    assert len(hub_server.request_log) == before
    assert not hf_api.repo_exists(f"{org}/prune-edit-adult")


def test_an_editor_config_without_weights_is_an_error_not_a_skip(editors_folder, tmp_path, org):
    cards = _copy(editors_folder, tmp_path)
    (cards / "prune-edit-adult" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="prune-edit-adult: config.json describes an editor .* no model.safetensors"):
        publish_editors(cards, org, dry_run=True)


def test_dry_run_checks_and_lists_but_pushes_nothing(editors_folder, hub_server, hf_api, org, capsys):
    before = len(hub_server.request_log)
    assert cli.main(["publish-editors", str(editors_folder), "--org", org, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert len(hub_server.request_log) == before
    assert re.search(rf"would publish prune-edit-adult\s+-> {org}/prune-edit-adult: prune / prune-edit on adult, "
                     r"lam 0.1", out), out
    assert re.search(rf"would publish prune-target-adult\s+-> {org}/prune-target-adult: .*target_range \[0.05, 0.8\]",
                     out)
    assert "dry run: 2 editor(s) checked, nothing published" in out
    assert not hf_api.repo_exists(f"{org}/prune-edit-adult")


def test_a_failed_push_names_the_editor_and_what_was_published(editors_folder, hub_server, hf_api, org, capsys):
    # the second push fails: armed once the first is committed
    with pytest.raises(PublishEditorsError) as info:
        publish_editors(editors_folder, org, on_published=lambda item: hub_server.fail_next("commit", status=500))
    err = info.value
    assert err.name == "prune-target-adult" and [p.name for p in err.published] == ["prune-edit-adult"]
    first = hf_api.repo_info(f"{org}/prune-edit-adult").sha
    assert f"published before it: {org}/prune-edit-adult @ {first[:10]}" in str(err)
    assert not hf_api.repo_exists(f"{org}/prune-target-adult")  # the failed push removed the repo it created
    # from the command line: one error line naming the editor, exit status 2
    hub_server.fail_next("commit", status=500, message="injected commit failure")
    other = f"{org}-cli"
    assert cli.main(["publish-editors", str(editors_folder), "--org", other]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubedit: error: publishing editor 'prune-edit-adult'"), lines
    assert "injected commit failure" in lines[0] and "not attempted: prune-target-adult" in lines[0]
    assert not hf_api.repo_exists(f"{other}/prune-edit-adult")


def test_a_folder_without_editors_is_an_error(tmp_path, org):
    (tmp_path / "zoo").mkdir()
    with pytest.raises(ConfigError, match=r"no editor folder under .*skipped: zoo \(no config.json\)"):
        publish_editors(tmp_path, org)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        publish_editors(tmp_path / "missing", org)
