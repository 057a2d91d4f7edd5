"""Fail fast on a hub id that cannot be fetched: before a loader asks the Hugging Face hub (whose client retries
for about a minute when there is no connection), check that the model is in the local cache or that the hub
answers within a few seconds; if neither, raise :class:`ModelLoadError` with the family's local-path hint."""

from __future__ import annotations

import os
from functools import lru_cache

from .errors import ModelLoadError

PROBE_TIMEOUT_S = 3.0


def _is_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:
        return False


@lru_cache(maxsize=1)
def offline_reason() -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE``, no connection), or None when it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import constants, get_session

        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # DNS failure, refused, timeout, proxy error...
        return f"no connection to the hub: {type(e).__name__}: {str(e)[:120]}"
    return None


def require_hub(repo_id: str | None, what: str, hint: str) -> None:
    """Return when ``repo_id`` (None: any hub download) can be loaded; else raise with ``hint``.

    ``what`` names the model (``"transformers CLIP 'openai/clip-vit-large-patch14'"``); ``hint`` says how to
    pass a local copy in that family's spec (``"pass 'pickscore:FOLDER'"``).
    """
    if repo_id and _is_cached(repo_id):
        return
    reason = offline_reason()
    if reason:
        raise ModelLoadError(f"could not fetch {what} ({reason}); the model hub cannot be reached (offline?). "
                             f"Download it where you have internet and {hint}")


def looks_like_path(s: str) -> bool:
    """Whether a model argument is meant as a local path rather than a hub id."""
    return s.startswith(("/", "./", "../", "~")) or s.endswith((".safetensors", ".pt", ".pth", ".bin"))


def model_source(arg: str, what: str, family: str) -> str:
    """What ``from_pretrained`` should load for ``arg``: a local transformers folder (``assets/...`` found as
    :func:`~mmreward.assets.resolve_asset` finds it) or a hub id that can be fetched. A missing folder, a folder
    without ``config.json`` or an unreachable hub raises :class:`ModelLoadError`; ``what`` names the model
    kind and ``family`` the spec family in the hints."""
    from .assets import missing_asset_hint, resolve_asset

    path = resolve_asset(arg)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(f"{path!r} is a folder but has no config.json (not a transformers model folder)")
        return path
    if looks_like_path(arg) or arg.startswith("assets/") or arg.count("/") > 1:
        raise ModelLoadError(f"{what} folder not found: {arg!r}{missing_asset_hint(arg)}")
    require_hub(arg, repr(arg), f"pass '{family}:/path/to/folder' (e.g. after `hf download {arg} --local-dir FOLDER`)")
    return arg
