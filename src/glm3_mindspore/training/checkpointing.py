"""Trainer checkpoints: written atomically, kept to the last K, found again on resume.

A checkpoint is a folder ``checkpoint-<step>`` holding the model (or adapter)
files, ``optimizer.safetensors`` and ``trainer_state.json`` (step, data
position, loss scale, training arguments, log history; no random state: the
data order follows from ``args.seed`` and the epoch). It is assembled in a hidden
``.checkpoint-<step>.partial-*`` folder and renamed into place only when
complete, so a crash or kill during a save leaves the previous checkpoints as
they were; partial folders are ignored and removed on the next save.

A model-parallel run (every rank holds slices) stages in one folder all ranks
know (:func:`begin_checkpoint` with ``shared``): each rank adds its
``rank_<r>/`` slices (model and optimizer state), then rank 0 commits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..checkpoints.safetensors_io import load_safetensors, save_safetensors
from ..fileio import atomic_write_text, read_json_object

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointNotFoundError(FileNotFoundError):
    """No complete checkpoint where one was asked for."""


def checkpoint_dirs(output_dir: Path) -> List[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """``"latest"`` / ``True`` -> newest complete checkpoint (None if there is none); a path -> that path."""
    if resume in (None, False, ""):
        return None
    if resume in (True, "latest", "last", "true", "True"):
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointNotFoundError(f"{path} is not a complete trainer checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(
    output_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    optimizer_state: Optional[Dict[str, np.ndarray]],
    trainer_state: Dict[str, Any],
    keep_last: Optional[int],
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then drop the oldest beyond ``keep_last``."""
    staging = begin_checkpoint(output_dir, step)
    try:
        write_model(staging)
        return commit_checkpoint(output_dir, staging, step, optimizer_state, trainer_state, keep_last)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def begin_checkpoint(output_dir: Path, step: int, shared: bool = False) -> Path:
    """A fresh hidden staging folder for ``checkpoint-<step>``; ``shared``: a name every rank can compute."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_partials(output_dir)
    if shared:
        staging = shared_staging(output_dir, step)
        staging.mkdir()
        return staging
    return Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.partial-", dir=output_dir))


def shared_staging(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f".checkpoint-{step}.partial-shared"


def commit_checkpoint(output_dir: Path, staging: Path, step: int, optimizer_state: Optional[Dict[str, np.ndarray]],
                      trainer_state: Dict[str, Any], keep_last: Optional[int]) -> Path:
    """Add the optimizer and trainer state to ``staging`` and rename it into place (old checkpoints untouched
    until then); then drop the oldest beyond ``keep_last``."""
    output_dir = Path(output_dir)
    target = output_dir / f"checkpoint-{step}"
    if optimizer_state is not None:
        save_safetensors(staging / OPTIMIZER_FILE, optimizer_state, {"format": "glm3-mindspore-optimizer"})
    atomic_write_text(staging / STATE_FILE, json.dumps(trainer_state, indent=2, ensure_ascii=False) + "\n")
    _fsync_dir(staging)
    if target.exists():  # re-saving a step: move the old one aside first, never delete before replacing
        old = output_dir / f".checkpoint-{step}.replaced-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    _fsync_dir(output_dir)
    if keep_last:
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_trainer_state(checkpoint: Path) -> Dict[str, Any]:
    return read_json_object(Path(checkpoint) / STATE_FILE)


def load_optimizer_file(checkpoint: Path) -> Optional[Dict[str, np.ndarray]]:
    path = Path(checkpoint) / OPTIMIZER_FILE
    return {k: np.array(v) for k, v in load_safetensors(path).items()} if path.is_file() else None


def _remove_partials(output_dir: Path) -> None:
    for path in output_dir.glob(".checkpoint-*.partial-*"):
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
