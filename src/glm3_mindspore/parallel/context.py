"""What the :class:`~glm3_mindspore.training.Trainer` asks of a parallel job, and the single-process answer.

The trainer never looks at how a job is parallel: it reads which share of
every global batch this process takes, reduces gradients, agrees with the
other processes on decisions, and lets the context prepare the model and, when
the parallel compiler needs the whole step as one graph, build that step.
:class:`ParallelContext` writes that down; :class:`SingleProcess` is the
answer for one process, :class:`~glm3_mindspore.parallel.DataParallel` and
:class:`~glm3_mindspore.parallel.SemiAutoParallel` the ones for ``msrun`` jobs.

A context whose processes hold slices of the parameters (``sliced_parameters``)
also saves, loads and merges them: :class:`SlicedParallelContext`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Protocol, Sequence

import numpy as np


class ParallelContext(Protocol):
    """The processes of one training job, as the trainer sees them.

    ``prepare_model`` and ``build_train_step`` have defaults (nothing to change,
    the trainer's own step) that implementations inherit by subclassing.
    """

    rank: int  # this process among all of them
    world_size: int
    data_rank: int  # whose share of each global batch this process reads
    data_world_size: int  # how many shares a global batch is dealt into
    sliced_parameters: bool  # True: each process holds slices of the parameters (SlicedParallelContext)
    grad_reducer: Optional[Callable[[Sequence[Any]], Sequence[Any]]]  # gradients averaged over processes, or None

    @property
    def is_main(self) -> bool:
        """The process that writes logs, metrics and checkpoints."""

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes (the logged loss)."""

    def any(self, *flags: bool) -> tuple:
        """For each flag, whether any process has it set: every process then takes the same decision."""

    def same(self, value: int, what: str) -> int:
        """``value`` when every process has the same one, else an error naming ``what``."""

    def barrier(self) -> None:
        """Wait for every process (around the main process's writes)."""

    def prepare_model(self, model) -> None:
        """Change the built model before any graph is compiled (shard strategies, pipeline stages); default none."""
        return None

    def build_train_step(self, model, optimizer, args, strategy_dir: Path, loss_scaler=None):
        """The whole train step as one graph this context compiles, or None (default): the trainer's own step,
        with ``grad_reducer`` between the gradients and the update."""
        return None


class SlicedParallelContext(ParallelContext, Protocol):
    """A context whose processes hold parameter slices: checkpoints are slices, merged for the final model."""

    def save_slices(self, cell, folder: Path, prefix: str = "glm3") -> Path:
        """This process's slices of ``cell``'s parameters under ``folder/rank_<r>/``."""

    def load_slices(self, cell, folder: Path, prefix: str = "glm3") -> None:
        """This process's slices back from :meth:`save_slices`'s file."""

    def merge_slices(self, folder: Path, strategy_dir: Path, names_in_model: Iterable[str]) -> Dict[str, np.ndarray]:
        """Full tensors of the named parameters from every process's slices."""


class SingleProcess(ParallelContext):
    """No parallelism: one process reads every row, holds every parameter and decides alone."""

    rank = 0
    world_size = 1
    data_rank = 0
    data_world_size = 1
    grad_reducer = None
    sliced_parameters = False

    @property
    def is_main(self) -> bool:
        return True

    def mean(self, value: float) -> float:
        return value

    def any(self, *flags: bool) -> tuple:
        return tuple(bool(f) for f in flags)

    def same(self, value: int, what: str) -> int:
        return value

    def barrier(self) -> None:
        pass


__all__ = ["ParallelContext", "SingleProcess", "SlicedParallelContext"]
