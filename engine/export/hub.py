"""Pushing an export to the Hugging Face Hub (`tuneline export --push-to-hub`): everything that could stop the
upload is checked before anything is written or sent (offline mode, a token, the Hub answering to it)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import TunelineError


class PushRefused(TunelineError):
    """A push that cannot happen here: offline, no token, or a Hub that does not answer to the token."""


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after the library was imported."""
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES


def check_push(repo_id: str) -> str:
    """The token a push to `repo_id` uses, once the Hub has said whom it belongs to; PushRefused otherwise."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushRefused(f"--push-to-hub {repo_id!r}: not a Hub repository id, expected 'user/name' ({exc})") from None
    if offline():
        raise PushRefused(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing is uploaded: unset it on a "
                          "machine with network to push")
    token = get_token()
    if not token:
        raise PushRefused(f"--push-to-hub {repo_id}: no Hugging Face token (expected HF_TOKEN, or `hf auth login`): "
                          "nothing is uploaded")
    try:
        HfApi(token=token).whoami()
    except Exception as exc:  # no network, a proxy, a revoked token: whichever, nothing is uploaded
        raise PushRefused(f"--push-to-hub {repo_id}: the Hub did not accept the token ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}): nothing is uploaded") from None
    return token


def push(folder: Path, repo_id: str, token: str) -> str:
    """The export folder uploaded to a model repository (made if missing); returns the commit's URL."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message="tuneline export")
    except Exception as exc:  # the network or the Hub failing halfway: the export itself is complete
        raise PushRefused(f"--push-to-hub {repo_id}: the upload failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); the export is complete at "
                          f"{folder}: push it again with `hf upload {repo_id} {folder}`") from None
    return commit.commit_url
