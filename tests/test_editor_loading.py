"""Loading editors and models: the Hub mixin's ``from_pretrained`` arguments, validated configs and weights,
and sizes checked against the safetensors header before anything is allocated."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from hubedit import MLP, MLPConfig
from hubedit.editor import Editor
from hubedit.errors import ConfigError, CorruptFileError
from hubedit.hub import HubError

NET = {"hidden": 16, "layers": 2}

pytestmark = pytest.mark.usefixtures("single_thread")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.fixture(scope="module")
def editor() -> Editor:
    torch.manual_seed(0)
    ed = Editor(requirement="prune", task="adult", lam=0.5, metanet=NET,
                training={"requirement": "prune", "variant": None, "lam": 0.5, "lam_range": None})
    with torch.no_grad():
        for p in ed.parameters():
            p.add_(torch.randn(p.shape) * 0.1)  # not the zero-initialised heads: a load must carry real values
    return ed


@pytest.fixture(scope="module")
def saved(editor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("editor") / "prune-adult"
    editor.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(saved, tmp_path):
    """A private copy of the saved editor, free to damage."""
    return shutil.copytree(saved, tmp_path / "editor")


def _edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(json.dumps(config))  # json writes inf as Infinity, as a hand-edited file may hold it


@pytest.fixture
def pushed(editor, hub_server, hub_repo_id):
    """The editor pushed to a fresh repo of the local Hub: (repo id, commit sha)."""
    return hub_repo_id, editor.push_to_hub(hub_repo_id).oid


# --- the mixin's from_pretrained arguments --------------------------------------------------------------------------
def test_cache_dir_receives_the_files_and_source_names_the_commit(editor, pushed, tmp_path):
    repo, sha = pushed
    loaded = Editor.from_pretrained(repo, cache_dir=tmp_path / "cache")
    assert _same(loaded, editor) and loaded.source == {"repo_id": repo, "revision": sha}
    cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() or p.is_symlink()}
    assert {"config.json", "model.safetensors"} <= cached


def test_force_download_refetches_a_damaged_cache(editor, pushed, tmp_path):
    repo, sha = pushed
    cache = tmp_path / "cache"
    Editor.from_pretrained(repo, cache_dir=cache)
    (weights,) = [p for p in cache.rglob("model.safetensors") if sha in str(p)]
    weights.resolve().write_bytes(b"damaged")  # the blob the snapshot links to
    with pytest.raises(CorruptFileError, match="safetensors"):
        Editor.from_pretrained(repo, cache_dir=cache)  # served from the cache
    assert _same(Editor.from_pretrained(repo, cache_dir=cache, force_download=True), editor)
    assert _same(Editor.from_pretrained(repo, cache_dir=cache), editor)  # the cache was repaired


def test_local_files_only_loads_from_the_cache_and_fails_clearly_when_not_cached(
    editor, pushed, hf_api, hub_server, tmp_path
):
    repo, sha = pushed
    cache = tmp_path / "cache"
    with pytest.raises(HubError, match=f"{repo}.*not in the local cache.*local_files_only"):
        Editor.from_pretrained(repo, cache_dir=cache, local_files_only=True)  # nothing downloaded yet
    Editor.from_pretrained(repo, cache_dir=cache)  # online: caches main's commit and where main points
    hf_api.delete_repo(repo)  # the Hub no longer has it: only the cache can serve it
    requests = len(hub_server.request_log)
    for revision in (sha, None):
        offline = Editor.from_pretrained(repo, cache_dir=cache, local_files_only=True, revision=revision)
        assert _same(offline, editor) and offline.source == {"repo_id": repo, "revision": sha}
    assert len(hub_server.request_log) == requests  # not one request


def test_map_location_is_the_device_of_the_loaded_editor(saved):
    assert {p.device.type for p in Editor.from_pretrained(saved, map_location="cpu").parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="meta.*drop the editor's weights"):
        Editor.from_pretrained(saved, map_location="meta")
    with pytest.raises(ConfigError, match="not a usable device"):
        Editor.from_pretrained(saved, map_location="no-such-device")
    if torch.cuda.is_available():
        assert {p.device.type for p in Editor.from_pretrained(saved, map_location="cuda").parameters()} == {"cuda"}
    else:
        with pytest.raises(ConfigError, match="'cuda' is not a usable device"):
            Editor.from_pretrained(saved, map_location="cuda")


def test_arguments_that_cannot_apply_are_refused(saved, tmp_path):
    with pytest.raises(HubError, match="not an existing local folder"):
        Editor.from_pretrained(tmp_path / "editors" / "prune-adult")  # mistyped path: never a repo-id lookup
    with pytest.raises(ConfigError, match="strict"):
        Editor.from_pretrained(saved, strict=False)
    with pytest.raises(ConfigError, match=r"unknown arguments \['map_locaton'\]"):
        Editor.from_pretrained(saved, map_locaton="cpu")
    with pytest.raises(ConfigError, match="'lam' from config.json .*cannot be overridden"):
        Editor.from_pretrained(saved, lam=0.9)
    with pytest.raises(ConfigError, match="revision.*local folder"):
        Editor.from_pretrained(saved, revision="main")
    assert Editor.from_pretrained(saved, lam=0.5).lam == 0.5  # the config's own value is no override


# --- config.json validated at the boundary ------------------------------------------------------------------------
def test_unknown_config_keys_are_a_config_error_listing_them(folder):
    _edit_config(folder, lamda=0.3, colour="red")
    with pytest.raises(ConfigError, match=r"unknown config keys \['colour', 'lamda'\]"):
        Editor.from_pretrained(folder)


@pytest.mark.parametrize("changes, match", [
    ({"lam": "0.5"}, "'lam' must be number"),
    ({"lam": float("inf")}, "lam must be finite"),
    ({"lam": True}, "'lam' must be"),
    ({"lam": None, "lam_range": [0.01, float("inf")]}, "lam_range must be .*finite"),
    ({"temperature": float("inf")}, "temperature must be finite"),
    ({"metanet": {"hidden": "16"}}, "metanet 'hidden' must be integer"),
    ({"metanet": {"hiden": 16}}, r"unknown metanet keys \['hiden'\]"),
    ({"metanet": {"layers": 0}}, "metanet sizes too small"),
    ({"feature_schema": {"n_features": 15}}, "feature_schema must give"),
    ({"training": {"lam": 0.7}}, "trained with lam=0.7"),
    ([1, 2], "must hold a JSON object, got list"),
])
def test_bad_config_values_are_config_errors(folder, changes, match):
    if isinstance(changes, list):
        (folder / "config.json").write_text(json.dumps(changes))
    else:
        _edit_config(folder, **changes)
    with pytest.raises((ConfigError, CorruptFileError), match=match):
        Editor.from_pretrained(folder)


@pytest.mark.parametrize("changes, match", [
    ({"requirement": "fairness", "variant": "gmn", "training": None}, "requirement: config.json says 'fairness'"),
    ({"lam": 1000.0, "training": None}, "lam: config.json says 1000.0, the weights were saved with 0.5"),
    ({"metanet": {"activation": "tanh"}}, "metanet"),  # same shapes, different function
])
def test_a_config_that_does_not_belong_to_the_weights_is_refused(folder, changes, match):
    _edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=f"does not belong to model.safetensors.*{match}"):
        Editor.from_pretrained(folder)


def test_weights_saved_without_settings_load_with_their_shapes_checked(editor, folder):
    state = load_file(str(folder / "model.safetensors"))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})  # as older hubedit saved them
    assert _same(Editor.from_pretrained(folder), editor)
    _edit_config(folder, lam=1000.0)  # the training record still tells
    with pytest.raises(ConfigError, match="lam is 1000.0, but the editor was trained with lam=0.5"):
        Editor.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64])
def test_weights_of_another_dtype_are_refused_naming_the_tensor(folder, dtype):
    path = folder / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(path))
    name = "metanet.node_feat.weight"
    state[name] = state[name].to(dtype)
    save_file(state, str(path), metadata=metadata)
    found = str(dtype).removeprefix("torch.")
    with pytest.raises(CorruptFileError, match=f"tensor '{name}' is stored as {found}, expected float32"):
        Editor.from_pretrained(folder)


# --- sizes checked against the header before anything is built -----------------------------------------------------
def _peak_growth(fn) -> tuple[float, float, Exception]:
    """(seconds, growth of the process's peak resident memory in MB) of ``fn()``, which must raise
    CorruptFileError. Linux: the peak is reset through /proc/self/clear_refs first."""

    def peak_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("peak memory cannot be reset here (/proc/self/clear_refs)")
    before, start = peak_mb(), time.perf_counter()
    with pytest.raises(CorruptFileError) as info:
        fn()
    seconds, growth = time.perf_counter() - start, peak_mb() - before
    return seconds, growth, info.value


def test_mlp_header_claiming_a_huge_model_is_refused_before_building():
    model = MLP(MLPConfig(in_features=14, hidden=(16, 16)))
    config = model.config.to_dict()
    config["hidden"] = [16000, 16000]  # 1 GB of weights, in a file of a few kB
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()},
                metadata={"format": "hubedit.mlp", "format_version": "1", "config": json.dumps(config)})
    assert len(blob) < 5000
    seconds, growth, error = _peak_growth(lambda: MLP.from_bytes(blob, source="huge.safetensors"))
    assert growth < 100 and seconds < 1.0, (growth, seconds)  # before: about 1 GB and several seconds
    assert "tensor 'layers.0.weight' is (16, 14) in the file, its config needs (16000, 14)" in str(error)
    config["hidden"] = [16] * 100_000  # a deep claim: refused before its layout is built
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()},
                metadata={"format": "hubedit.mlp", "format_version": "1", "config": json.dumps(config)})
    seconds, _, error = _peak_growth(lambda: MLP.from_bytes(blob))
    assert "100000 hidden layers" in str(error) and seconds < 1.0


@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
def test_mlp_state_layout_is_the_modules_state_dict(norm):
    from hubedit.mlp.module import state_layout

    config = MLPConfig(in_features=5, hidden=(7, 3, 4), out_features=3, norm=norm, skips=((0, 2), (0, 3), (1, 3)))
    built = [(name, (tuple(t.shape), t.dtype)) for name, t in MLP(config).state_dict().items()]
    assert list(state_layout(config).items()) == built


def test_mlp_of_another_dtype_is_refused_before_loading():
    model = MLP(MLPConfig(in_features=4, hidden=(8,)))
    state = {k: v.to(torch.int64) if k == "layers.1.weight" else v for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "hubedit.mlp", "format_version": "1", "config": model.config.to_json()})
    with pytest.raises(CorruptFileError, match="tensor 'layers.1.weight' is stored as int64, expected float32"):
        MLP.from_bytes(blob)


def test_editor_config_claiming_a_huge_metanet_is_refused_before_building(folder):
    _edit_config(folder, metanet={"hidden": 4096})
    seconds, growth, error = _peak_growth(lambda: Editor.from_pretrained(folder))
    assert growth < 100 and seconds < 2.0, (growth, seconds)  # before: the 4096-wide metanetwork was built first
    assert "metanet.node_feat.weight' is (16, 10) in the file" in str(error)
    _edit_config(folder, metanet={"hidden": 16, "layers": 100_000})
    seconds, _, error = _peak_growth(lambda: Editor.from_pretrained(folder))
    assert "a metanetwork of 100000 layers" in str(error) and seconds < 2.0
