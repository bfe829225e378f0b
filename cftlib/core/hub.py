"""Hugging Face models by local folder or hub id, failing at once with a message that says how to get
the model when it is neither on disk nor reachable (the paper profile's LLM, GroundingDINO and SAM)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cftlib.core.io import first_line

T = TypeVar("T")


class ModelUnavailable(RuntimeError):
    """A model that is not a local folder, not in the Hugging Face cache, and cannot be downloaded."""


def offline() -> bool:
    """True when the hub must not or cannot be reached: HF_HUB_OFFLINE set, or no connection in 3 s
    (transformers would otherwise retry for minutes before failing)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return False
    except OSError:
        return True


def load(name: str, what: str, loader: Callable[..., T], **kwargs) -> T:
    """`loader(name, local_files_only=..., **kwargs)` (a `from_pretrained`), turning a missing model into
    ModelUnavailable naming `what` (the params key), the model and how to fetch it."""
    local = Path(name).expanduser().is_dir()
    only_local = not local and offline()
    try:
        return loader(str(Path(name).expanduser()) if local else name, local_files_only=only_local, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        if local:  # there, but unreadable: a partial copy, a damaged weights file, another library's format
            raise ModelUnavailable(
                f"{what}: the folder {Path(name).expanduser()} is there but does not load ({first_line(e, 300)}). "
                "Save the model there again with save_pretrained, or fetch it anew "
                f"(`huggingface-cli download <hub id> --local-dir {name}`).") from e
        if not isinstance(e, OSError):
            raise
        raise ModelUnavailable(
            f"{what}: cannot load {name!r}: it is not a local folder"
            + (" and is not in the Hugging Face cache, and the hub is unreachable (or HF_HUB_OFFLINE is set)"
               if only_local else f" and loading it from the hub failed ({e})")
            + f". Fetch it once where there is network (`huggingface-cli download {name}`) or set {what} to a "
              "folder saved with save_pretrained.") from e


def missing_model(name: str, what: str, reachable: bool = False) -> str | None:
    """None when `load` gets `name` without a download: a folder holding config.json, or a hub id whose
    config.json is in the Hugging Face cache (with `reachable`, the hub answers: any hub id). Otherwise what to
    fetch, from where, and which params key (`what`) to set. Reads the cache only, never the network."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return f"{what}: folder {path} holds no config.json; save the model there with save_pretrained"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"{what}: {name!r}: no such folder (and not a Hugging Face hub id)"
    if reachable or isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    return (f"{what}: {name!r} is not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE}). "
            f"Fetch it once where there is network (`huggingface-cli download {name}`, then copy that cache here "
            f"or point HF_HOME at it), or set {what} to a folder saved with save_pretrained")
