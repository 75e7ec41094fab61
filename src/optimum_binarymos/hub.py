"""Sharing BinaryMoS and ternary models: saving and pushing with their model card.

transformers' own ``model.save_pretrained`` and ``model.push_to_hub`` work unchanged on these models (packed
weights, ``config.json``; a push tags the repo ``binarymos`` / ``ternary``, the tags the quantizer adds with
``model.add_model_tags``). This module's functions do more, for the same arguments:

* :func:`save_pretrained` writes the model card (``README.md``, from
  :func:`~optimum_binarymos.model_card.render_model_card`), saves through a staging folder so that an interrupted
  save leaves the older model whole, and removes weight files of an earlier save that this one did not replace;
* :func:`push_to_hub` uploads the weights and the card, in one commit, and keeps a hand-written card on the Hub.

A ``README.md`` without the marker comment of these cards (:data:`CARD_MARKER`, right after the metadata) was
written by hand: it is never overwritten (a push only adds the tags). Delete the marker line from a generated card
to keep your edits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn

from .model_card import (
    CARD_MARKER,
    CARD_RECORD_KEY,
    CARD_TAGS,
    LICENSE_FIELDS,
    TERNARY_CARD_TAGS,
    all_tags,
    card_method,
    card_record,
    license_fields,
    record_base_model,
    record_evaluation,
    remember_float_source,
    render_model_card,
)

__all__ = [
    "CARD_MARKER",
    "CARD_RECORD_KEY",
    "CARD_TAGS",
    "DEFAULT_HUB_TIMEOUT",
    "LICENSE_FIELDS",
    "TERNARY_CARD_TAGS",
    "card_record",
    "hub_timeout",
    "push_to_hub",
    "record_base_model",
    "record_evaluation",
    "remember_float_source",
    "render_model_card",
    "save_pretrained",
    "write_model_card",
]

logger = logging.getLogger(__name__)

#: Seconds a push waits for the Hub to connect, or to send the next bytes of an answer, before giving up.
DEFAULT_HUB_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------------------------
# Writing the card on save_pretrained and push_to_hub.
# --------------------------------------------------------------------------------------------------------------


def write_model_card(
    model: nn.Module,
    folder: str | os.PathLike,
    model_id: str | None = None,
    tags: Iterable[str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write ``README.md`` into ``folder``, unless a hand-written one is there. Returns its path if written.

    The arguments after ``folder`` are those of :func:`render_model_card`.
    """
    path = Path(folder, "README.md")
    if path.is_file() and CARD_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        logger.info("Keeping the hand-written %s", path)
        return None
    card = render_model_card(model, model_id, tags=tags, extra_metadata=extra_metadata)
    path.write_text(card, encoding="utf-8")
    return path


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *args, **kwargs) -> None:
    """``model.save_pretrained(save_directory, ...)`` that also writes the model card (``README.md``), never
    leaves a half-written model over an older one, and removes the older save's weight files it did not replace.

    Takes every argument of transformers' ``save_pretrained``; with ``push_to_hub=True`` the saved files and the
    card are uploaded to ``repo_id`` (default: the folder's name), with :func:`push_to_hub`'s ``timeout``.

    Example::

        from optimum_binarymos import save_pretrained

        save_pretrained(model, "smollm2-binarymos")   # weights, config.json and README.md
    """
    push = kwargs.pop("push_to_hub", False)
    is_main_process = kwargs.get("is_main_process", args[0] if args else True)
    hub_kwargs = {
        name: kwargs.pop(name)
        for name in ("repo_id", "commit_message", "create_pr", "private", "timeout")
        if name in kwargs
    }
    if not is_main_process:  # other ranks write nothing
        model.save_pretrained(save_directory, *args, **kwargs)
        return
    before = _timestamps(save_directory)
    with _staging_folder(Path(save_directory)) as staging:
        model.save_pretrained(staging, *args, **kwargs)
    if getattr(model, "_hf_peft_config_loaded", False):
        return  # an adapter folder is not this model
    _remove_stale_weights(Path(save_directory), before)
    if not push:
        write_model_card(model, save_directory, model_id=str(save_directory))
        return
    api = _api()
    token = kwargs.get("token")
    with hub_timeout(hub_kwargs.get("timeout", DEFAULT_HUB_TIMEOUT)):
        repo_id = hub_kwargs.get("repo_id") or Path(save_directory).name
        repo_id = api.create_repo(repo_id, private=hub_kwargs.get("private"), token=token, exist_ok=True).repo_id
        extra = _license_from_base_model(model, token)
        write_model_card(model, save_directory, model_id=repo_id, extra_metadata=extra)
        changed = [name for name, stamp in _timestamps(save_directory).items() if before.get(name) != stamp]
        _commit_files(
            api,
            Path(save_directory),
            changed,
            repo_id,
            commit_message=hub_kwargs.get("commit_message") or _default_commit_message(model),
            token=token,
            create_pr=hub_kwargs.get("create_pr", False),
        )


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    timeout: float | None = DEFAULT_HUB_TIMEOUT,
):
    """Upload a BinaryMoS or ternary model (packed safetensors, ``config.json``) and its model card to the Hub.

    Same arguments and result (a ``CommitInfo``) as transformers' ``model.push_to_hub``, plus the card: it
    replaces a card generated earlier; a hand-written one on the Hub is kept and only gets the tags. ``timeout``:
    seconds to wait for the Hub to connect or to send the next bytes of an answer (:data:`DEFAULT_HUB_TIMEOUT`;
    ``None`` waits forever); a Hub that goes silent raises ``TimeoutError`` instead of hanging.

    Example::

        from optimum_binarymos import push_to_hub

        push_to_hub(model, "your-name/smollm2-binarymos")
    """
    with hub_timeout(timeout):
        return _push(model, repo_id, commit_message, commit_description, private, token, revision, create_pr,
                     max_shard_size, tags)  # fmt: skip


def _push(model, repo_id, commit_message, commit_description, private, token, revision, create_pr, max_shard_size,
          tags):  # fmt: skip
    api = _api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    remote_card = _hand_written_remote_card(repo_id, revision, token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if remote_card is not None:
            remote_card.data.tags = list(
                dict.fromkeys([*(remote_card.data.tags or []), *all_tags(model, tags)])
            )
            remote_card.save(Path(folder, "README.md"))
        else:
            extra = _license_from_base_model(model, token)
            Path(folder, "README.md").write_text(
                render_model_card(model, repo_id, tags=tags, extra_metadata=extra), encoding="utf-8"
            )
        files = [
            path.relative_to(folder).as_posix() for path in sorted(Path(folder).rglob("*")) if path.is_file()
        ]
        return _commit_files(
            api,
            Path(folder),
            files,
            repo_id,
            commit_message=commit_message or _default_commit_message(model),
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


@contextlib.contextmanager
def hub_timeout(seconds: float | None) -> Iterator[None]:
    """Inside this block, requests to the Hub (huggingface_hub's shared session) give up after ``seconds`` of
    silence and raise ``TimeoutError`` saying what was and was not uploaded. ``None`` changes nothing.

    The session is shared by the process: other threads' Hub requests get the same timeout meanwhile.
    """
    if seconds is None:
        yield
        return
    import httpx2
    from huggingface_hub import get_session

    session = get_session()
    previous = session.timeout
    session.timeout = seconds
    try:
        yield
    except httpx2.TimeoutException as error:
        raise TimeoutError(
            f"The Hub did not answer for {seconds:g} s ({type(error).__name__}); the push stopped. A commit is "
            "all or nothing: the repository holds either the whole new model or none of it. Try again, or pass "
            "a larger timeout."
        ) from error
    finally:
        session.timeout = previous


def _default_commit_message(model: nn.Module) -> str:
    return f"Upload {card_method(model)[0].name} model"


def _api() -> HfApi:
    try:
        version = importlib_metadata.version("optimum-binarymos")
    except importlib_metadata.PackageNotFoundError:
        version = None
    return HfApi(library_name="optimum-binarymos", library_version=version)


_STAGING_PREFIX = ".saving-"


@contextlib.contextmanager
def _staging_folder(target: Path) -> Iterator[Path]:
    """A private folder beside ``target`` to save into; on success its files move into ``target``.

    A save killed half way (SIGKILL, a full disk) then leaves ``target`` as it was, the older model whole, and
    only a hidden ``.saving-<pid>-*`` folder beside it, which the next save into ``target``'s parent removes
    once its process is gone. Each move is a rename within one file system.
    """
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(parent)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-{target.name}-", dir=parent))
    except OSError:  # a parent we may not write in (saving into "/" or a read-only mount point): save in place
        yield target
        return
    try:
        yield staging
        target.mkdir(exist_ok=True)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                destination = target / path.relative_to(staging)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned_staging(parent: Path) -> None:
    for folder in parent.glob(f"{_STAGING_PREFIX}*"):
        pid = folder.name[len(_STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            logger.info("Removing %s, left by a save that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def _remove_stale_weights(folder: Path, before: dict[str, float]) -> None:
    """Delete weight files this save did not write, so that the folder holds one model, the new one.

    transformers' cleanup keeps a ``model.safetensors`` beside a new sharded save (and loading would then read
    the old single file); any ``model*.safetensors`` or index that is older than the save is removed.
    """
    after = _timestamps(folder)
    written = {name for name, stamp in after.items() if before.get(name) != stamp}
    if not any(_WEIGHT_FILE.fullmatch(name) for name in written):
        return  # nothing of ours was saved here (another writer's files are not ours to judge)
    for name in after:
        if "/" not in name and _WEIGHT_FILE.fullmatch(name) and name not in written:
            logger.info("Removing %s, left in %s by an earlier save", name, folder)
            (folder / name).unlink()


def _timestamps(folder: str | os.PathLike) -> dict[str, float]:
    root = Path(folder)
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path.stat().st_mtime for path in root.rglob("*") if path.is_file()
    }


def _hand_written_remote_card(repo_id: str, revision: str | None, token) -> ModelCard | None:
    """The repo's README.md when a person wrote it (no generator marker); ``None`` when absent or generated."""
    try:
        path = hf_hub_download(repo_id, "README.md", revision=revision, token=token)
    except (RemoteEntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
        return None  # the Hub answered: there is no card to keep
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        # A 5xx, a 429 or no connection: a card may exist, and uploading ours would overwrite it.
        raise OSError(
            f"push_to_hub could not read the README.md of {repo_id} to keep a hand-written card, so nothing was "
            f"uploaded; try again when the Hub answers ({error})"
        ) from error
    card = ModelCard.load(path, ignore_metadata_errors=True)
    return None if CARD_MARKER in card.content else card


def _license_from_base_model(model: nn.Module, token) -> dict[str, str]:
    """The base model's license from its card on the Hub, when conversion found none on disk."""
    record = card_record(model)
    if not record.get("base_model") or any(record.get(key) for key in LICENSE_FIELDS):
        return {}
    try:
        path = hf_hub_download(record["base_model"], "README.md", token=token)
        return license_fields(Path(path))
    except Exception as error:  # best effort: a gated or missing base card must not stop the upload
        logger.info("No license found on the card of %s: %s", record["base_model"], error)
        return {}


def _commit_files(
    api: HfApi,
    folder: Path,
    files: list[str],
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token=None,
    revision: str | None = None,
    create_pr: bool = False,
):
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )
