"""Thin layer over ``huggingface_hub`` shared by zoos, editors and edited models.

It does three things the client does not:

* turns Hub errors into :class:`HubError` messages that say which repo, revision and endpoint were asked for
  and what state the Hub is left in;
* publishes a prepared folder in exactly one commit (all files or none), and when the commit fails removes
  the repo or branch that the same call created (never one that existed before);
* bounds every request hubedit sends with a timeout (:func:`hub_timeout`, env ``HUBEDIT_HUB_TIMEOUT``), so an
  endpoint that accepts connections but never answers cannot hang a download or a push.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, HubeditError

TIMEOUT_ENV = "HUBEDIT_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds a request may wait for the endpoint to connect, answer, or take the next bytes


class HubError(HubeditError, RuntimeError):
    """A Hub request failed (repo or revision not found, server error, offline without a cached copy)."""


class HubNotFoundError(HubError, LookupError):
    """The repo, revision or file does not exist on the endpoint."""


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def describe_repo(repo_id: str, repo_type: str, revision: str | None) -> str:
    """``"model repo 'org/name' (revision main) on https://..."``: how hubedit's Hub errors name a repo."""
    return f"{repo_type} repo {repo_id!r} (revision {revision or 'main'}) on {endpoint()}"


# --- timeouts ------------------------------------------------------------------------------------------------
def hub_timeout() -> float | None:
    """Seconds a Hub request may wait -- to connect, for the answer to start, for the next bytes either way --
    before it fails: env ``HUBEDIT_HUB_TIMEOUT`` (default 60; ``none`` or ``0``: no limit).

    It is a per-operation limit, not a total one: a large upload or download that keeps moving is never cut off
    for being large. Raises :class:`~hubedit.errors.ConfigError` for a value that is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    if raw.lower() in ("none", "off", "0"):
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0 (e.g. 60), or 'none' for no limit")
    return seconds


_timeout_lock = threading.Lock()
_calls_in_flight = 0  # hubedit Hub calls running now (any thread); the hook below acts only while one is
_timeout_in_force: float | None = DEFAULT_TIMEOUT


def _fill_timeout(request) -> None:
    """An ``httpx2`` request hook: give every phase the request left unbounded (``None``) hubedit's limit.

    Limits the client set itself (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) are kept. Outside
    hubedit's calls the hook does nothing, so other users of the shared client see the client as it was."""
    seconds = _timeout_in_force
    if _calls_in_flight == 0 or seconds is None:
        return
    current = request.extensions.get("timeout") or {}
    filled = {phase: seconds if current.get(phase) is None else current[phase]
              for phase in ("connect", "read", "write", "pool")}
    request.extensions = {**request.extensions, "timeout": filled}


def _install_timeout_hook() -> None:
    """Wrap ``huggingface_hub``'s client factory (the user's, if one was set) so that its shared client runs
    :func:`_fill_timeout` on every request. Done once; again only if someone replaced the factory since."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    current = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
    if getattr(current, "_hubedit_timeouts", False):
        return

    def client_with_timeouts():
        client = current()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _fill_timeout]}
        return client

    client_with_timeouts._hubedit_timeouts = True
    set_client_factory(client_with_timeouts)  # closes the shared client; the next request builds one with the hook


@contextmanager
def timeouts() -> Iterator[float | None]:
    """Bound every Hub request sent inside the block, from any thread, by :func:`hub_timeout` seconds (yielded).

    Every Hub call hubedit makes runs inside it (:func:`reading` -- :func:`snapshot` and editor loading --,
    :func:`publish_folder`, :func:`committing`, card validation, the quickstart's calls). A request that runs
    out of time raises the client's ``httpx2.TimeoutException``, which those callers turn into a
    :class:`HubError`."""
    global _calls_in_flight, _timeout_in_force
    seconds = hub_timeout()
    with _timeout_lock:
        _install_timeout_hook()
        _calls_in_flight += 1
        _timeout_in_force = seconds
    try:
        yield seconds
    finally:
        with _timeout_lock:
            _calls_in_flight -= 1


# --- reading the client's errors -----------------------------------------------------------------------------
def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _hub_failure(exc: BaseException) -> BaseException | None:
    """The Hub's answer or the transport failure behind ``exc`` -- ``exc`` itself, or what the client wrapped in
    its own ``RuntimeError`` (an LFS upload or verify) -- else ``None``: not the Hub's doing."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    for err in _chain(exc):
        if isinstance(err, (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError)):
            return err
    return None


def _transport_problem(err: BaseException) -> str:
    """``the endpoint is unreachable (ConnectError: ...)`` / ``the endpoint did not answer within 60 s (...)``."""
    import httpx2

    if isinstance(err, httpx2.TimeoutException):
        limit = _timeout_in_force
        within = f"within {limit:g} s" if limit is not None else "in time"
        return (f"the endpoint did not answer {within} ({type(err).__name__}: {err}; "
                f"{TIMEOUT_ENV} sets the limit)")
    return f"the endpoint is unreachable ({type(err).__name__}: {err})"


def _unanswered_write(exc: BaseException) -> str | None:
    """What was asked when ``exc`` means a request that changes the repo went out but no answer came back
    (so it may have been applied): ``"create"``, ``"branch"`` or ``"commit"``; else ``None``."""
    import httpx2

    err = _hub_failure(exc)
    if not isinstance(err, (httpx2.ReadTimeout, httpx2.ReadError, httpx2.RemoteProtocolError)):
        return None  # connect errors and write timeouts: the request never (fully) reached the server
    try:
        request = err.request
    except RuntimeError:  # raised without a request
        return None
    path = request.url.path
    if request.method != "POST":
        return None
    if path.endswith("/api/repos/create"):
        return "create"
    if "/branch/" in path:
        return "branch"
    if "/commit/" in path:
        return "commit"
    return None


def _as_hub_error(exc: BaseException, what: str, outcome: str) -> HubError | None:
    """``exc`` (raised by the client while publishing to ``what``) as a :class:`HubError` that ends with
    ``outcome`` (the state the Hub is in); ``None`` when ``exc`` is not the Hub's doing."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    err = _hub_failure(exc)
    if err is None:
        if isinstance(exc, ValueError) and str(exc).startswith("LFS batch API returned errors"):
            return HubError(f"publishing to {what} failed, {outcome}: the Hub refused the large-file (LFS) "
                            f"upload: {exc}")
        return None
    step = f" ({exc})" if err is not exc else ""  # the client's wrapper says which file it was uploading
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"cannot publish to {what}: HF_HUB_OFFLINE is set ({err}); {outcome}")
    if isinstance(err, HfHubHTTPError):
        return HubError(f"publishing to {what} failed{step}, {outcome}: {err}")
    return HubError(f"publishing to {what} failed{step}, {_transport_problem(err)}; {outcome}")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id (``name`` or ``namespace/name``), else a :class:`HubError` saying
    so -- instead of the client's ``HFValidationError`` deep inside a call."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id (expected 'name' or 'namespace/name'): {exc}") from exc
    return repo_id


# --- downloads -----------------------------------------------------------------------------------------------
@contextmanager
def reading(what: str, file: str | None = None) -> Iterator[float | None]:
    """Run a download from the Hub (``snapshot_download``, ``hf_hub_download``, the hub mixin's loading) with
    :func:`timeouts` -- it yields the limit, to pass on as ``etag_timeout`` -- raising the client's failures as
    :class:`HubError` naming ``what`` (see :func:`describe_repo`) and ``file`` when one file is fetched.

    A missing repo or revision is a :class:`HubNotFoundError`, and so is a missing ``file`` (callers that know
    what a missing file means -- not an editor, say -- catch the client's ``RemoteEntryNotFoundError`` inside
    the block). Nothing cached while downloading is off (``local_files_only=True``, ``HF_HUB_OFFLINE=1``), an
    endpoint that cannot be reached or does not answer in time, an invalid repo id, a gated repo and any other
    error answer are :class:`HubError`. Errors that are not the Hub's doing pass unchanged."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with timeouts() as seconds:
        try:
            yield seconds
        except HubeditError:  # hubedit's own (e.g. raised from a client error it explains): not to be re-read
            raise
        except HFValidationError as exc:
            raise HubError(f"{what}: not a valid Hub repo id (expected 'name' or 'namespace/name', or an existing "
                           f"local folder): {exc}") from exc
        except GatedRepoError as exc:  # before RepositoryNotFoundError, its base
            raise HubError(f"{what}: the repo is gated: accept its conditions on the Hub and pass a token of that "
                           f"account ({exc})") from exc
        except RepositoryNotFoundError as exc:
            raise HubNotFoundError(f"{what}: no such repo (check the id, and a token for private repos)") from exc
        except RevisionNotFoundError as exc:
            raise HubNotFoundError(f"{what}: no such revision (branch, tag or commit)") from exc
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:  # before EntryNotFoundError, a base
            raise HubError(_not_cached(exc, what, file)) from exc
        except EntryNotFoundError as exc:
            missing = f"no file {file!r}" if file else "a requested file is not"
            raise HubNotFoundError(f"{what}: {missing} in the repo ({exc})") from exc
        except HfHubHTTPError as exc:
            raise HubError(f"{what}: the Hub answered with an error: {exc}") from exc
        except httpx2.TransportError as exc:  # a download that stalled or broke after the metadata
            raise HubError(f"{what}: {_transport_problem(exc)}") from exc
        except Exception as exc:  # the client's wrappers (e.g. "Force download failed") around one of the above
            err = _hub_failure(exc)
            if err is None:
                raise
            problem = _transport_problem(err) if isinstance(err, httpx2.TransportError) else str(err)
            raise HubError(f"{what}: {problem} ({type(exc).__name__}: {exc})") from exc


def _not_cached(exc: BaseException, what: str, file: str | None) -> str:
    """Why a download that fell back on the cache found nothing there: the endpoint could not be reached (and
    how), or downloading is off."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    cause = next((e for e in _chain(exc.__cause__) if isinstance(e, httpx2.TransportError)), None)
    if cause is not None:
        return f"{what}: {_transport_problem(cause)}, not reachable and not in the local cache ({exc})"
    offline = any(isinstance(e, OfflineModeIsEnabled) for e in _chain(exc))
    if offline or exc.__cause__ is None:  # the client raises it bare for local_files_only
        thing = file or "it"
        return (f"{what}: {thing} is not in the local cache, and downloading is off (local_files_only=True or "
                f"HF_HUB_OFFLINE=1); load it once online first ({exc})")
    return f"{what}: not reachable and not in the local cache ({exc})"


def snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> tuple[Path, str]:
    """Download (or, offline, find in the cache) a repo snapshot; returns ``(folder, commit_sha)``.

    ``cache_dir``, ``force_download`` and ``local_files_only`` are the client's. The revision is resolved by one
    request that is not retried; an endpoint that cannot be reached (or does not answer in time) falls back on
    the cache. Every failure is a :class:`HubError` (:class:`HubNotFoundError` for a missing repo or revision)
    naming the repo, revision and endpoint -- including an invalid repo id and an endpoint that does not answer
    within :func:`hub_timeout` seconds (see :func:`reading`)."""
    from huggingface_hub import snapshot_download

    with reading(describe_repo(repo_id, repo_type, revision)) as seconds:
        limits = {"etag_timeout": seconds} if seconds is not None else {}  # the file-metadata requests too
        folder = Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns, token=token,
                cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only,
                library_name="hubedit", **limits,
            )
        )
    # snapshot folders are named by commit sha in the cache layout
    return folder, folder.name


# --- publishing ----------------------------------------------------------------------------------------------
def publish_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    commit_message: str,
    token: str | bool | None = None,
    private: bool | None = None,
    create_branch: bool = False,
):
    """Create the repo if needed and upload every file of ``folder`` as ONE commit; return the ``CommitInfo``.

    The Hub applies a commit atomically, so a failed upload commits nothing. When it fails, the repo -- or, in
    an existing repo, the branch ``revision`` (``create_branch``) -- that THIS call created is deleted again
    (one that existed before is never touched), and the :class:`HubError` says what state the Hub is in: the
    repo unchanged, the new repo or branch removed (or, if removing it failed, left empty), or -- when a request
    that changes the repo got no answer -- unknown, to be checked before pushing again.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token)
    what = describe_repo(repo_id, repo_type, revision)
    branch = revision if revision and create_branch else None
    created: list[str] = []  # what this call created, in order: "repo", "branch"
    repo_known = False  # the repo exists (made or found by this call)
    with timeouts():
        try:
            is_new, repo_id = _create_repo(api, repo_id, repo_type, private)
            if is_new:
                created.append("repo")
            repo_known = True
            if branch is not None and _create_branch(api, repo_id, repo_type, branch):
                created.append("branch")
            return api.upload_folder(
                repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), revision=revision,
                commit_message=commit_message,
            )
        except Exception as exc:
            unanswered = _unanswered_write(exc)
            if unanswered == "commit":
                outcome = ("the commit request got no answer, so it may or may not have been applied: look at the "
                           f"repo before pushing again{_left_in_place(created, branch)}")
            elif unanswered == "create":  # the creation may have been applied: nothing to undo safely
                outcome = ("nothing was committed; the request to create the repo got no answer, so it may now "
                           "exist, empty")
            elif not repo_known:  # creating the repo failed before the Hub made it (an error answer, no connection)
                outcome = "nothing was committed and no repo was created"
            elif unanswered == "branch" and "repo" not in created:  # in a repo that existed: nothing to undo safely
                outcome = (f"nothing was committed; the request to create branch {branch!r} got no answer, so it may "
                           "now exist, at main's commit; the rest of the repo is unchanged")
            else:  # a new repo (with whatever branch it got) goes as a whole
                outcome = _undo(api, repo_id, repo_type, branch, created)
            error = _as_hub_error(exc, what, outcome)
            if error is None:  # not the Hub's doing (a local file, a bug): keep the error, say what the Hub holds
                exc.add_note(f"hubedit: publishing to {what} failed: {outcome}")
                raise
            raise error from exc


def _create_repo(api, repo_id: str, repo_type: str, private: bool | None) -> tuple[bool, str]:
    """Create the repo; return (whether this call created it, its full id). It existed when the Hub answered
    409, or refused the creation for lack of rights on a repo that exists -- as ``create_repo(exist_ok=True)``
    does. The full id is the one the Hub answered with: a bare ``name`` lands in the token's namespace."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return True, _answered_repo_id(api.create_repo(repo_id, repo_type=repo_type, private=private,
                                                       exist_ok=False), repo_id)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 409:
            try:
                body = exc.response.json()
            except ValueError:  # not JSON
                body = None
            url = body.get("url") if isinstance(body, dict) else None
            return False, _answered_repo_id(url, repo_id)
        if status in (401, 402, 403) and api.repo_exists(repo_id, repo_type=repo_type):
            return False, repo_id
        raise


def _answered_repo_id(url, asked: str) -> str:
    """The repo id in the Hub's answer ``url`` (a ``RepoUrl`` or its text), else ``asked``."""
    from huggingface_hub import RepoUrl

    if not url:
        return asked
    try:
        answered = url.repo_id if isinstance(url, RepoUrl) else RepoUrl(url, endpoint=endpoint()).repo_id
    except Exception:  # noqa: BLE001 -- an answer without a usable URL: keep the id that was asked for
        return asked
    same_name = bool(answered) and answered.rsplit("/", 1)[-1] == asked.rsplit("/", 1)[-1]
    return answered if same_name else asked


def _create_branch(api, repo_id: str, repo_type: str, branch: str) -> bool:
    """Create ``branch`` from main; ``True`` if this call created it, ``False`` if it existed."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_branch(repo_id, repo_type=repo_type, branch=branch, exist_ok=False)
        return True
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 409:
            return False
        if status == 403:
            refs = api.list_repo_refs(repo_id, repo_type=repo_type)
            if branch in {ref.name for ref in refs.branches}:
                return False
        raise


def _left_in_place(created: list[str], branch: str | None) -> str:
    if "repo" in created:
        return "; the repo was created by this call and is left as it is"
    if "branch" in created:
        return f"; branch {branch!r} was created by this call and is left as it is"
    return ""


def _undo(api, repo_id: str, repo_type: str, branch: str | None, created: list[str]) -> str:
    """Delete what this call created (the repo, else the branch); return the sentence that says what state the
    Hub is left in."""
    if "repo" in created:
        try:
            api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True)
        except Exception as exc:  # noqa: BLE001 -- reported in the message, the original error is raised
            return (f"nothing was committed, but the empty repo this call created is still there (deleting it "
                    f"failed: {type(exc).__name__}: {exc}); delete it or push again")
        return "nothing was committed, and the repo this call had created was deleted again: the Hub is as before"
    if "branch" in created:
        try:
            api.delete_branch(repo_id, repo_type=repo_type, branch=branch)
        except Exception as exc:  # noqa: BLE001
            return (f"nothing was committed, but the branch {branch!r} this call created is still there, at main's "
                    f"commit (deleting it failed: {type(exc).__name__}: {exc}); the rest of the repo is unchanged")
        return (f"nothing was committed, and the branch {branch!r} this call had created was deleted again: "
                "the repo is unchanged")
    return "nothing was committed, the repo is unchanged"


@contextmanager
def committing(what: str) -> Iterator[None]:
    """Run a publish (e.g. a hub mixin's ``push_to_hub``) with :func:`timeouts`, raising the Hub's failures
    inside the block -- HTTP errors, LFS upload or verify failures, offline mode, connection errors and timeouts
    -- as a :class:`HubError` that names ``what`` (see :func:`describe_repo`) and says nothing was committed.

    It cannot know whether the block created the repo or a branch before failing: :func:`publish_folder` does,
    and removes them again."""
    with timeouts():
        try:
            yield
        except Exception as exc:
            outcome = "nothing was committed"
            if _unanswered_write(exc) == "commit":
                outcome = "the commit request got no answer, so it may or may not have been applied"
            error = _as_hub_error(exc, what, outcome)
            if error is None:
                raise
            raise error from exc


def local_folder_or_repo_id(name_or_path: str | os.PathLike, what: str, *, revision: str | None = None) -> Path | None:
    """Tell a local folder from a Hub repo id before anything is downloaded.

    Returns the folder when ``name_or_path`` is an existing directory, ``None`` when it is a valid repo id
    (``name`` or ``namespace/name``) that does not exist locally. Anything else -- a mistyped path such as
    ``./editors/prune`` or ``/tmp/x/y/z``, an existing *file* -- raises :class:`HubError` naming both readings,
    instead of the client's ``HFValidationError`` traceback. ``what`` names the object ("editor", "zoo", ...).
    ``namespace/name`` where a folder ``namespace`` exists here reads as a mistyped local path, unless a
    ``revision`` is given: only Hub repos have revisions.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise HubError(f"{what} {text!r} is a file; expected a folder, or a Hub repo id ('namespace/name')")
    # a path-like spelling, or a parent folder that exists here: a mistyped local path, not a repo id
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or (
        "/" in text and path.parent.is_dir() and revision is None)
    try:
        check_repo_id(text)
    except HubError:
        looks_local = True
    if looks_local:
        raise HubError(
            f"{what} {text!r} is not an existing local folder, and not a Hub repo id either "
            "(expected a folder, or 'namespace/name')"
        )
    return None
