"""Finding model files: a local folder or a Hugging Face hub repository.

Only data files are ever fetched (configs, tokenizer, weights); no code is
downloaded or run. Hub access goes through ``huggingface_hub``, so its cache,
``HF_ENDPOINT`` mirrors, tokens and ``HF_HUB_OFFLINE`` all apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


# A path with one of these suffixes is one weight file, not a folder or a config.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class ModelFileNotFoundError(FileNotFoundError):
    """A required model file is neither in the folder nor on the hub."""


@dataclass(frozen=True)
class HubOptions:
    """The download options every ``from_pretrained`` accepts."""

    revision: Optional[str] = None
    cache_dir: Optional[PathLike] = None
    local_files_only: bool = False
    token: Union[str, bool, None] = None

    @classmethod
    def pop_from(cls, kwargs: dict) -> "HubOptions":
        """Take the hub options out of a ``from_pretrained`` kwargs dict."""
        return cls(
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.pop("cache_dir", None),
            local_files_only=kwargs.pop("local_files_only", False),
            token=kwargs.pop("token", kwargs.pop("use_auth_token", None)),
        )


def is_local(name_or_path: PathLike) -> bool:
    return Path(name_or_path).expanduser().exists()


def is_weight_file(name_or_path: PathLike) -> bool:
    """An existing single weight file (``.safetensors``, ``.bin``, ``.ckpt`` ...)."""
    path = Path(name_or_path).expanduser()
    return path.suffix in WEIGHT_FILE_SUFFIXES and path.is_file()


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in name


def resolve_file(
    name_or_path: PathLike,
    filename: str,
    options: HubOptions = HubOptions(),
    *,
    required: bool = True,
) -> Optional[Path]:
    """Path of ``filename`` in a local folder or hub repo; ``None`` if optional and absent."""
    if is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        candidate = folder / filename if folder.is_dir() else None
        if candidate is not None and candidate.is_file():
            return candidate
        if required:
            raise ModelFileNotFoundError(f"{filename!r} not found in {folder}")
        return None
    return _hub_file(str(name_or_path), filename, options, required)


def _hub_file(repo_id: str, filename: str, options: HubOptions, required: bool) -> Optional[Path]:
    if not _looks_like_repo_id(repo_id):
        raise ModelFileNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a hub repository id (like 'THUDM/chatglm3-6b')"
        )
    import huggingface_hub
    from huggingface_hub import errors

    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=options.revision,
            cache_dir=options.cache_dir,
            local_files_only=options.local_files_only,
            token=options.token,
        )
        return Path(path)
    except errors.LocalEntryNotFoundError as exc:  # offline, or the network failed: cache only
        if not required:
            return None
        raise ModelFileNotFoundError(
            f"could not get {filename!r} of hub repository {repo_id!r} ({exc}). Offline "
            "(HF_HUB_OFFLINE=1 or local_files_only=True) only files already in the hub cache can be "
            "used; otherwise check the network or set HF_ENDPOINT to a mirror."
        ) from None
    except errors.EntryNotFoundError:  # file absent from the repo (or from the offline cache)
        if required:
            raise ModelFileNotFoundError(f"{filename!r} not found in hub repository {repo_id!r}") from None
        return None
    except errors.RepositoryNotFoundError:
        raise ModelFileNotFoundError(
            f"hub repository {repo_id!r} does not exist or needs a token (pass token=...)"
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelFileNotFoundError(f"revision {options.revision!r} not found in {repo_id!r}") from None
    except OSError as exc:  # network or disk failure while downloading
        raise ModelFileNotFoundError(f"could not download {filename!r} from {repo_id!r}: {exc}") from None
