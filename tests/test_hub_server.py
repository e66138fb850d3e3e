"""The local Hub server (`hubedit.testing.HubServer`) against the real huggingface_hub client and datasets."""

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    file_exists,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session

from hubedit.testing import HubServer

BIG = 10 * 1024 * 1024 + 4096  # just over the LFS threshold


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def big_blob():
    return os.urandom(BIG)


def test_endpoint_comes_from_conftest(hub_server, hf_api):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub_server.url == hf_api.endpoint == os.environ["HF_ENDPOINT"]


def test_create_exists_delete(hf_api, hub_repo_id):
    url = hf_api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id and url.repo_type == "model"
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_repo(hub_repo_id)
    assert err.value.response.status_code == 409
    assert hf_api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id
    assert hf_api.repo_exists(hub_repo_id)
    assert not hf_api.repo_exists(hub_repo_id, repo_type="dataset")  # types are separate namespaces
    assert hf_api.list_repo_files(hub_repo_id) == [".gitattributes"]  # initial commit, as on the Hub
    hf_api.delete_repo(hub_repo_id)
    assert not hf_api.repo_exists(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_api.delete_repo(hub_repo_id)
    hf_api.delete_repo(hub_repo_id, missing_ok=True)


def test_upload_download_round_trip(hf_api, hub_repo_id, tmp_path):
    hf_api.create_repo(hub_repo_id, private=True)
    payload = bytes(range(256)) * 7  # binary, not a multiple of anything
    folder = tmp_path / "folder"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "deeper" / "w.bin").write_bytes(payload)
    hf_api.upload_folder(folder_path=folder, repo_id=hub_repo_id, commit_message="folder")
    hf_api.upload_file(path_or_fileobj=b"", path_in_repo="empty.txt", repo_id=hub_repo_id)

    assert sorted(hf_api.list_repo_files(hub_repo_id)) == [
        ".gitattributes", "config.json", "empty.txt", "sub/deeper/w.bin"]
    top = {e.path: type(e).__name__ for e in hf_api.list_repo_tree(hub_repo_id)}
    assert top == {".gitattributes": "RepoFile", "config.json": "RepoFile", "empty.txt": "RepoFile",
                   "sub": "RepoFolder"}
    assert [e.path for e in hf_api.list_repo_tree(hub_repo_id, "sub")] == ["sub/deeper"]
    assert [e.path for e in hf_api.list_repo_tree(hub_repo_id, "sub", recursive=True)] == [
        "sub/deeper", "sub/deeper/w.bin"]

    path = hf_hub_download(hub_repo_id, "sub/deeper/w.bin")
    assert _read(path) == payload
    assert _read(hf_hub_download(hub_repo_id, "empty.txt")) == b""
    snapshot = snapshot_download(hub_repo_id)
    assert _read(os.path.join(snapshot, "config.json")) == b'{"a": 1}'

    info = hf_api.model_info(hub_repo_id, files_metadata=True)
    assert info.private is True and info.sha == hf_api.list_repo_refs(hub_repo_id).branches[0].target_commit
    sibling = {s.rfilename: s for s in info.siblings}["sub/deeper/w.bin"]
    assert sibling.size == len(payload) and sibling.lfs is None
    assert sibling.blob_id == hashlib.sha1(b"blob %d\0" % len(payload) + payload).hexdigest()  # git oid
    assert file_exists(hub_repo_id, "config.json") and not file_exists(hub_repo_id, "nope.json")
    infos = hf_api.get_paths_info(hub_repo_id, ["config.json", "sub", "missing"], expand=True)
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "config.json"), ("RepoFolder", "sub")]
    assert {i.last_commit.title for i in infos} == {"folder"}

    # deleting: a file and a folder, in one commit
    hf_api.create_commit(hub_repo_id, [CommitOperationDelete("config.json"), CommitOperationDelete("sub/")],
                         commit_message="prune")
    assert sorted(hf_api.list_repo_files(hub_repo_id)) == [".gitattributes", "empty.txt"]


def test_pinned_revisions_tags_and_history(hf_api, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    v1 = hf_api.upload_file(path_or_fileobj=b"version 1", path_in_repo="f.txt", repo_id=hub_repo_id).oid
    hf_api.create_tag(hub_repo_id, tag="v1.0", revision=v1, tag_message="first")
    v2 = hf_api.upload_file(path_or_fileobj=b"version 2", path_in_repo="f.txt", repo_id=hub_repo_id,
                            commit_message="second", commit_description="longer text").oid
    assert v1 != v2 and len(v2) == 40

    assert _read(hf_hub_download(hub_repo_id, "f.txt")) == b"version 2"
    assert _read(hf_hub_download(hub_repo_id, "f.txt", revision=v1)) == b"version 1"
    assert _read(hf_hub_download(hub_repo_id, "f.txt", revision="v1.0")) == b"version 1"
    assert _read(hf_hub_download(hub_repo_id, "f.txt", revision=v2)) == b"version 2"
    assert hf_api.model_info(hub_repo_id, revision="v1.0").sha == v1

    commits = hf_api.list_repo_commits(hub_repo_id)
    assert [c.commit_id for c in commits[:2]] == [v2, v1] and len(commits) == 3
    assert (commits[0].title, commits[0].message) == ("second", "longer text")
    assert commits[-1].title == "initial commit"
    assert [c.commit_id for c in hf_api.list_repo_commits(hub_repo_id, revision="v1.0")][0] == v1

    refs = hf_api.list_repo_refs(hub_repo_id)
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", v1)]
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_tag(hub_repo_id, tag="v1.0")
    assert err.value.response.status_code == 409
    hf_api.create_tag(hub_repo_id, tag="v1.0", exist_ok=True)
    hf_api.delete_tag(hub_repo_id, tag="v1.0")
    assert hf_api.list_repo_refs(hub_repo_id).tags == []
    with pytest.raises(RevisionNotFoundError):
        hf_api.model_info(hub_repo_id, revision="v1.0")


def test_branches(hf_api, hub_repo_id):
    hf_api.create_repo(hub_repo_id, repo_type="dataset")
    base = hf_api.upload_file(path_or_fileobj=b"base", path_in_repo="f.txt", repo_id=hub_repo_id,
                              repo_type="dataset").oid
    for branch in ("dev", "feature/x"):  # a "/" in a branch name travels URL-encoded
        hf_api.create_branch(hub_repo_id, branch=branch, repo_type="dataset")
        sha = hf_api.upload_file(path_or_fileobj=branch.encode(), path_in_repo="f.txt", repo_id=hub_repo_id,
                                 repo_type="dataset", revision=branch).oid
        assert _read(hf_hub_download(hub_repo_id, "f.txt", repo_type="dataset", revision=branch)) == branch.encode()
        assert hf_api.dataset_info(hub_repo_id, revision=branch).sha == sha
        assert [e.path for e in hf_api.list_repo_tree(hub_repo_id, repo_type="dataset", revision=branch)] == [
            ".gitattributes", "f.txt"]
    assert _read(hf_hub_download(hub_repo_id, "f.txt", repo_type="dataset")) == b"base"  # main untouched
    hf_api.create_branch(hub_repo_id, branch="from-initial", repo_type="dataset",
                         revision=hf_api.list_repo_commits(hub_repo_id, repo_type="dataset")[-1].commit_id)
    branches = {b.name: b.target_commit for b in hf_api.list_repo_refs(hub_repo_id, repo_type="dataset").branches}
    assert set(branches) == {"main", "dev", "feature/x", "from-initial"} and branches["main"] == base
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_branch(hub_repo_id, branch="dev", repo_type="dataset")
    assert err.value.response.status_code == 409
    hf_api.create_branch(hub_repo_id, branch="dev", repo_type="dataset", exist_ok=True)
    hf_api.delete_branch(hub_repo_id, branch="feature/x", repo_type="dataset")
    assert "feature/x" not in {b.name for b in hf_api.list_repo_refs(hub_repo_id, repo_type="dataset").branches}
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, "f.txt", repo_type="dataset", revision="feature/x")


def test_lfs_upload_of_a_large_file(hf_api, hub_server, hub_repo_id, big_blob):
    hf_api.create_repo(hub_repo_id)
    hub_server.request_log.clear()
    hf_api.upload_file(path_or_fileobj=big_blob, path_in_repo="weights/big.bin", repo_id=hub_repo_id)
    assert any(r.startswith(f"POST /{hub_repo_id}.git/info/lfs/objects/batch") for r in hub_server.request_log)
    assert any(r.startswith("PUT /api/lfs/upload/") for r in hub_server.request_log)

    sha256 = hashlib.sha256(big_blob).hexdigest()
    meta = get_hf_file_metadata(hf_hub_url(hub_repo_id, "weights/big.bin"))
    assert (meta.etag, meta.size) == (sha256, len(big_blob))
    assert _read(hf_hub_download(hub_repo_id, "weights/big.bin")) == big_blob
    (entry,) = hf_api.get_paths_info(hub_repo_id, ["weights/big.bin"])
    assert entry.lfs.sha256 == sha256 and entry.lfs.size == len(big_blob)
    sibling = {s.rfilename: s for s in hf_api.model_info(hub_repo_id, files_metadata=True).siblings}
    assert sibling["weights/big.bin"].lfs.sha256 == sha256

    # same content again: the batch answers "already stored", no second PUT, and the no-op commit is skipped
    hub_server.request_log.clear()
    head = hf_api.model_info(hub_repo_id).sha
    hf_api.upload_file(path_or_fileobj=big_blob, path_in_repo="weights/big.bin", repo_id=hub_repo_id)
    assert not any(r.startswith("PUT ") for r in hub_server.request_log)
    assert hf_api.model_info(hub_repo_id).sha == head

    # a ranged read of an LFS file
    response = get_session().get(hf_hub_url(hub_repo_id, "weights/big.bin"), headers={"Range": "bytes=100-199"})
    assert response.status_code == 206 and response.content == big_blob[100:200]
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(big_blob)}"


def test_not_found_errors(hf_api, hub_repo_id):
    with pytest.raises(RepositoryNotFoundError):
        hf_api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "f.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_api.upload_file(path_or_fileobj=b"x", path_in_repo="f.txt", repo_id="nobody/nothing")
    hf_api.create_repo(hub_repo_id)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_api.list_repo_commits(hub_repo_id, revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub_repo_id, "missing.txt")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_api.delete_file("missing.txt", repo_id=hub_repo_id)
    with pytest.raises(RemoteEntryNotFoundError):
        list(hf_api.list_repo_tree(hub_repo_id, "no-folder"))
    assert hf_api.get_paths_info(hub_repo_id, ["missing.txt"]) == []


def test_parent_commit_mismatch_is_rejected(hf_api, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    old = hf_api.model_info(hub_repo_id).sha
    head = hf_api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=hub_repo_id).oid
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_commit(hub_repo_id, [CommitOperationAdd("b.txt", b"2")], commit_message="stale",
                             parent_commit=old)
    assert err.value.response.status_code == 412
    assert hf_api.model_info(hub_repo_id).sha == head and not hf_api.file_exists(hub_repo_id, "b.txt")
    new = hf_api.create_commit(hub_repo_id, [CommitOperationAdd("b.txt", b"2")], commit_message="fresh",
                               parent_commit=head).oid
    assert hf_api.list_repo_commits(hub_repo_id)[0].commit_id == new


def test_failed_commit_leaves_repo_unchanged(hf_api, hub_server, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    head = hf_api.upload_file(path_or_fileobj=b"keep", path_in_repo="a.txt", repo_id=hub_repo_id).oid
    hub_server.fail_next("commit", status=500)
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_commit(hub_repo_id, [CommitOperationAdd("a.txt", b"lost"), CommitOperationDelete(".gitattributes"),
                                           CommitOperationAdd("b.txt", b"lost")], commit_message="doomed")
    assert err.value.response.status_code == 500
    assert hf_api.model_info(hub_repo_id).sha == head
    assert sorted(hf_api.list_repo_files(hub_repo_id)) == [".gitattributes", "a.txt"]
    assert _read(hf_hub_download(hub_repo_id, "a.txt")) == b"keep"
    # the fault is spent: the same commit now goes through
    hf_api.create_commit(hub_repo_id, [CommitOperationAdd("b.txt", b"ok")], commit_message="fine")
    assert hf_api.file_exists(hub_repo_id, "b.txt")


def test_failed_lfs_upload_leaves_repo_unchanged(hf_api, hub_server, hub_repo_id, big_blob):
    kw = {"repo_id": hub_repo_id, "repo_type": "dataset"}  # LFS batch under the datasets/ prefix
    hf_api.create_repo(**kw)
    head = hf_api.dataset_info(hub_repo_id).sha
    blob = big_blob[::-1]  # content the server has never seen
    hub_server.fail_next("lfs_upload", status=403)  # 4xx: the client does not retry
    with pytest.raises(RuntimeError, match="Error while uploading 'big.bin'") as err:
        hf_api.create_commit(operations=[CommitOperationAdd("big.bin", blob), CommitOperationAdd("small.txt", b"s")],
                             commit_message="interrupted", **kw)
    assert isinstance(err.value.__cause__, HfHubHTTPError) and err.value.__cause__.response.status_code == 403
    assert hf_api.dataset_info(hub_repo_id).sha == head and hf_api.list_repo_files(**kw) == [".gitattributes"]
    # a transient 5xx is retried by the client (after a 1 s back-off) and the upload succeeds
    hub_server.fail_next("lfs_upload", status=503)
    hf_api.upload_file(path_or_fileobj=blob, path_in_repo="big.bin", **kw)
    assert _read(hf_hub_download(filename="big.bin", **kw)) == blob
    assert any(r.startswith(f"POST /datasets/{hub_repo_id}.git/info/lfs/objects/batch") for r in hub_server.request_log)


def test_commit_referencing_a_missing_lfs_object_is_atomic(hf_api, hub_server, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    head = hf_api.model_info(hub_repo_id).sha
    lines = [{"key": "header", "value": {"summary": "half", "description": ""}},
             {"key": "file", "value": {"path": "ok.txt", "content": "b2s=", "encoding": "base64"}},
             {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}}]
    response = get_session().post(f"{hub_server.url}/api/models/{hub_repo_id}/commit/main",
                                  content=b"".join(json.dumps(x).encode() + b"\n" for x in lines),
                                  headers={"Content-Type": "application/x-ndjson"})
    assert 400 <= response.status_code < 500 and "never uploaded" in response.json()["error"]
    assert hf_api.model_info(hub_repo_id).sha == head and hf_api.list_repo_files(hub_repo_id) == [".gitattributes"]
    # an LFS upload whose bytes do not match the announced sha256 is refused and not stored
    bad = get_session().put(f"{hub_server.url}/api/lfs/upload/{'cd' * 32}/3", content=b"abc")
    assert bad.status_code == 400
    # the connection stays usable after errors (bodies are always read)
    assert get_session().get(f"{hub_server.url}/api/models/{hub_repo_id}").status_code == 200


def test_readme_card_data_and_yaml_validation(hf_api, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    card = "---\nlicense: mit\nlibrary_name: hubedit\ntags:\n- tabular\n---\n# Model\n"
    hf_api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=hub_repo_id)
    info = hf_api.model_info(hub_repo_id)
    assert info.card_data.license == "mit" and info.library_name == "hubedit" and "tabular" in info.tags
    with pytest.raises(ValueError, match="Invalid metadata"):
        hf_api.upload_file(path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md",
                           repo_id=hub_repo_id)
    assert _read(hf_hub_download(hub_repo_id, "README.md")) == card.encode()


def test_ranges_on_regular_files(hf_api, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    hf_api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=hub_repo_id)
    url = hf_hub_url(hub_repo_id, "digits.txt")
    session = get_session()
    assert session.get(url, headers={"Range": "bytes=2-4"}).content == b"234"
    assert session.get(url, headers={"Range": "bytes=7-"}).content == b"789"
    assert session.get(url, headers={"Range": "bytes=-3"}).content == b"789"
    assert session.get(url, headers={"Range": "bytes=10-"}).status_code == 416
    head = session.head(url)
    assert head.headers["Content-Length"] == "10" and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["X-Repo-Commit"] == hf_api.model_info(hub_repo_id).sha


def test_load_dataset_from_parquet_repo(hf_api, hub_repo_id):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(values):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"x": values, "y": [v * 0.5 for v in values]}), buffer)
        return buffer.getvalue()

    readme = textwrap.dedent("""\
        ---
        configs:
        - config_name: default
          data_files:
          - split: train
            path: data/train-*.parquet
          - split: test
            path: data/test-*.parquet
        ---
        # A tiny zoo
        """)
    hf_api.create_repo(hub_repo_id, repo_type="dataset")
    hf_api.create_commit(hub_repo_id, repo_type="dataset", commit_message="data", operations=[
        CommitOperationAdd("README.md", readme.encode()),
        CommitOperationAdd("data/train-00000-of-00001.parquet", parquet(list(range(20)))),
        CommitOperationAdd("data/test-00000-of-00001.parquet", parquet([100, 101, 102]))])
    ds = datasets.load_dataset(hub_repo_id)
    assert set(ds) == {"train", "test"}
    assert list(ds["train"]["x"]) == list(range(20)) and list(ds["test"]["y"]) == [50.0, 50.5, 51.0]
    streamed = datasets.load_dataset(hub_repo_id, split="test", streaming=True)
    assert [row["x"] for row in streamed] == [100, 101, 102]


def test_offline_mode_reads_the_cache(hf_api, hub_server, hub_repo_id):
    hf_api.create_repo(hub_repo_id)
    hf_api.upload_file(path_or_fileobj=b"cached bytes", path_in_repo="c.txt", repo_id=hub_repo_id)
    hf_api.upload_file(path_or_fileobj=b"never fetched", path_in_repo="d.txt", repo_id=hub_repo_id)
    assert _read(hf_hub_download(hub_repo_id, "c.txt")) == b"cached bytes"
    script = textwrap.dedent(f"""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        print(open(hf_hub_download({hub_repo_id!r}, "c.txt"), "rb").read().decode())
        try:
            hf_hub_download({hub_repo_id!r}, "d.txt")
        except LocalEntryNotFoundError:
            print("not cached")
        """)
    before = len(hub_server.request_log)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # same HF_HOME / HF_HUB_CACHE / HF_ENDPOINT
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["cached bytes", "not cached"]
    assert len(hub_server.request_log) == before  # nothing reached the server


def test_storage_survives_restart(tmp_path, big_blob):
    with HubServer(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url, token="t")
        api.create_repo("org/persist")
        first = api.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id="org/persist").oid
        api.create_tag("org/persist", tag="v1")
        api.upload_file(path_or_fileobj=big_blob, path_in_repo="big.bin", repo_id="org/persist")
        refs = api.list_repo_refs("org/persist")
    with HubServer(tmp_path / "hub") as hub:  # a new server, a new port, the same root
        api = HfApi(endpoint=hub.url, token="t")
        assert api.list_repo_refs("org/persist") == refs
        assert api.list_repo_refs("org/persist").tags[0].target_commit == first
        url = hf_hub_url("org/persist", "big.bin", endpoint=hub.url)
        assert get_session().get(url).content == big_blob
        with pytest.raises(ValueError):
            hub.fail_next("no-such-endpoint")


def test_command_line_server(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hubedit.testing.hub_server", "--root", str(tmp_path), "--port",
                             "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        api = HfApi(endpoint=url, token=False)
        api.create_repo("cli/repo", repo_type="dataset")
        assert api.dataset_info("cli/repo").id == "cli/repo"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / "repos" / "dataset" / "cli" / "repo" / "repo.json").is_file()
