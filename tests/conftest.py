"""Test set-up. Hub variables are read when huggingface_hub is imported, so they are set here, first."""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="hubedit-test-hf-home-")
os.environ["HF_HOME"] = _HF_HOME  # never the user's real cache
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ["HUBEDIT_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="hubedit-test-kernels-")  # trainer kernels built per run
os.environ.pop("HF_HUB_OFFLINE", None)  # tests talk to the local Hub server below, never to huggingface.co

# --- local Hub server -------------------------------------------------------------------------------------
# HF_ENDPOINT is read when huggingface_hub (and datasets) are imported, so the port is chosen now, at import
# time: bind port 0, read the port, release it; the session fixture `hub_server` then serves on that port.
import socket  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
HUB_ENDPOINT = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_ENDPOINT"] = HUB_ENDPOINT


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A `hubedit.testing.HubServer` on HF_ENDPOINT (port chosen at conftest import), storage in a temp folder."""
    from hubedit.testing import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub-server"), port=HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hf_api(hub_server):
    """`huggingface_hub.HfApi` pointed at the local Hub server, with a dummy token."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token="test-token")


@pytest.fixture
def hub_repo_id(request):
    """A fresh, not yet created repo id (`hubedit-test/<test name>-<random>`)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60].strip("-")
    return f"hubedit-test/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module: several times faster than two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _tiny_adult_build(tmp_path_factory):
    from hubedit.zoo.build import build_zoo

    out = tmp_path_factory.mktemp("zoo") / "adult-tiny"
    return out, build_zoo("adult", "tiny", out, seed=0, progress=False, n_configs=9, epochs=2)


@pytest.fixture(scope="session")
def tiny_adult_zoo(_tiny_adult_build):
    """A tiny Adult zoo (9 configurations x 2 epochs), built once per test session."""
    return _tiny_adult_build[1]


@pytest.fixture(scope="session")
def tiny_adult_zoo_dir(_tiny_adult_build):
    """The folder :func:`tiny_adult_zoo` is saved in (read-only for tests)."""
    return _tiny_adult_build[0]


@pytest.fixture
def silent_endpoint(monkeypatch):
    """An endpoint on 127.0.0.1 that accepts every connection and never sends a byte; hubedit's Hub timeout
    (``HUBEDIT_HUB_TIMEOUT``) 0.5 s. Yields its URL."""
    import threading

    from huggingface_hub import constants as hf_constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    # hf_hub_download builds file URLs from a template the client fixed when it was imported
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HUBEDIT_HUB_TIMEOUT", "0.5")
    yield url
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()
