"""Thin layer over ``huggingface_hub`` shared by zoos, editors and edited models.

It does two things the client does not: turns Hub errors into messages that say which repo, revision
and endpoint were asked for, and publishes a prepared folder in exactly one commit (all files or none).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import HubeditError


class HubError(HubeditError, RuntimeError):
    """A Hub request failed (repo or revision not found, server error, offline without a cached copy)."""


class HubNotFoundError(HubError, LookupError):
    """The repo, revision or file does not exist on the endpoint."""


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def describe_repo(repo_id: str, repo_type: str, revision: str | None) -> str:
    return f"{repo_type} repo {repo_id!r} (revision {revision or 'main'}) on {endpoint()}"


def snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    token: str | bool | None = None,
) -> tuple[Path, str]:
    """Download (or, offline, find in the cache) a repo snapshot; returns ``(folder, commit_sha)``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = describe_repo(repo_id, repo_type, revision)
    try:
        folder = Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns, token=token,
                library_name="hubedit",
            )
        )
    except RepositoryNotFoundError as exc:
        raise HubNotFoundError(f"{what}: no such repo (check the id, and a token for private repos)") from exc
    except RevisionNotFoundError as exc:
        raise HubNotFoundError(f"{what}: no such revision (branch, tag or commit)") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise HubError(f"{what}: not reachable and not in the local cache ({exc})") from exc
    except HfHubHTTPError as exc:
        raise HubError(f"{what}: the Hub answered with an error: {exc}") from exc
    # snapshot folders are named by commit sha in the cache layout
    return folder, folder.name


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
    """Create the repo if needed and upload every file of ``folder`` as ONE commit.

    The Hub applies a commit atomically, so an interrupted or failed upload leaves the repo as it was:
    nothing is half-published. Returns the client's ``CommitInfo``.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with committing(describe_repo(repo_id, repo_type, revision)):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision and create_branch:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), revision=revision,
            commit_message=commit_message,
        )


@contextmanager
def committing(what: str) -> Iterator[None]:
    """Raise the Hub's failures inside the block -- HTTP errors, offline mode, connection errors -- as
    :class:`HubError` saying that publishing to ``what`` (see :func:`describe_repo`) committed nothing. A Hub
    commit is atomic, so a failed upload leaves the repo as it was."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except HfHubHTTPError as exc:
        raise HubError(f"publishing to {what} failed, nothing was committed, the repo is unchanged: {exc}") from exc
    except OfflineModeIsEnabled as exc:
        raise HubError(f"cannot publish to {what}: HF_HUB_OFFLINE is set ({exc})") from exc
    except httpx2.TransportError as exc:  # connection refused, DNS, timeouts: the client's transport errors
        raise HubError(f"publishing to {what} failed, the endpoint is unreachable ({type(exc).__name__}: {exc}); "
                       "nothing was committed") from exc


def local_folder_or_repo_id(name_or_path: str | os.PathLike, what: str) -> Path | None:
    """Tell a local folder from a Hub repo id before anything is downloaded.

    Returns the folder when ``name_or_path`` is an existing directory, ``None`` when it is a valid repo id
    (``name`` or ``namespace/name``) that does not exist locally. Anything else -- a mistyped path such as
    ``./editors/prune`` or ``/tmp/x/y/z``, an existing *file* -- raises :class:`HubError` naming both readings,
    instead of the client's ``HFValidationError`` traceback. ``what`` names the object ("editor", "zoo", ...).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise HubError(f"{what} {text!r} is a file; expected a folder, or a Hub repo id ('namespace/name')")
    # a path-like spelling, or a parent folder that exists here: a mistyped local path, not a repo id
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or (
        "/" in text and path.parent.is_dir())
    try:
        validate_repo_id(text)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise HubError(
            f"{what} {text!r} is not an existing local folder, and not a Hub repo id either "
            "(expected a folder, or 'namespace/name')"
        )
    return None
