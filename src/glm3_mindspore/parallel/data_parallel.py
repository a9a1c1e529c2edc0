"""Data parallelism with MindSpore's collective communication (``msrun``).

Every process holds the whole model, trains on its own slice of each global
batch, and averages gradients with an all-reduce before the optimiser step, so
all replicas stay identical. Works on CPU (2 processes on one machine, MindSpore's
``mccl`` backend, chosen by ``mindspore.communication.init()`` from the device) as
on Ascend (``hccl``) and GPU (``nccl``) clusters.

``msrun`` starts one scheduler process and ``--worker_num`` workers, all running
the same command with ``MS_ROLE`` set to ``MS_SCHED`` or ``MS_WORKER``. The
scheduler must call ``init()`` too: there it serves the cluster until the
workers are done and then ends the process, so nothing after ``init()`` runs in
it (it never loads a model or writes a file).
"""

from __future__ import annotations

import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from .context import ParallelContext

MSRUN_ROLES = ("MS_WORKER", "MS_SCHED")


def launched_by_msrun() -> bool:
    """True in the processes ``msrun`` (or a hand-made dynamic cluster: ``MS_ROLE`` etc.) starts."""
    return os.environ.get("MS_ROLE") in MSRUN_ROLES


def msrun_rank_hint() -> Optional[int]:
    """This worker's rank from msrun's environment, before ``init()`` (None outside msrun)."""
    for key in ("RANK_ID", "MS_NODE_ID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return None


_mean = ops.MultitypeFuncGraph("mean")


@_mean.register("Function", "Number", "Tensor")
def _mean_tensor(all_reduce, world_size, grad):
    return all_reduce(grad) / world_size


class DataParallel(ParallelContext):
    """Rank, world size and the collectives of an ``msrun``-launched process group (a :class:`ParallelContext`).

    The :class:`~glm3_mindspore.training.Trainer` uses ``data_rank`` /
    ``data_world_size`` to take its slice of every global batch, ``grad_reducer`` to average
    gradients, ``mean`` for the logged loss, ``any`` so that every rank takes the
    same decision (stop, save, evaluate) when a callback on one rank asks for it,
    ``same`` to check that all ranks resume from the same checkpoint, and
    ``barrier`` around rank 0's writes.
    """

    sliced_parameters = False  # every process holds the whole model

    def __init__(self) -> None:
        from mindspore.communication import get_group_size, get_rank, init

        init()  # the scheduler process serves the cluster here and exits when the job ends
        self.rank = get_rank()
        self.world_size = get_group_size()
        self.data_rank, self.data_world_size = self.rank, self.world_size  # whose share of each batch this reads
        self._all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self._hyper_map = ops.HyperMap()
        self._reduce = ms.jit(self._reduce_impl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _reduce_impl(self, grads):
        return self._hyper_map(ops.partial(_mean, self._all_reduce, self.world_size), grads)

    def grad_reducer(self, grads):
        """Mean of each gradient over all processes."""
        return self._reduce(ms.mutable(tuple(grads)))

    def mean(self, value: float) -> float:
        return float(self._all_reduce(Tensor(np.float32(value))).asnumpy()) / self.world_size

    def any(self, *flags: bool) -> tuple:
        """For each flag: whether any rank has it set (one all-reduce for all of them)."""
        values = self._all_reduce(Tensor(np.array([bool(f) for f in flags], np.float32))).asnumpy()
        return tuple(bool(v > 0) for v in values)

    def gather(self, value: int) -> list:
        """Every rank's integer ``value`` (0 <= value < 2**36), in rank order, on every rank."""
        if not 0 <= value < 1 << 36:
            raise ValueError(f"gather() takes integers in [0, 2**36), got {value}")
        parts = np.zeros((self.world_size, 3), np.float32)  # CPU all-reduce only sums: one row per rank,
        parts[self.rank] = (value >> 24, (value >> 12) & 0xFFF, value & 0xFFF)  # 12-bit pieces stay exact
        summed = self._all_reduce(Tensor(parts)).asnumpy().astype(np.int64)
        return [int(hi << 24 | mid << 12 | lo) for hi, mid, lo in summed]

    def same(self, value: int, what: str) -> int:
        """``value`` if every rank has the same one, else a ``RuntimeError`` on every rank naming ``what``."""
        values = self.gather(value)
        if len(set(values)) > 1:
            raise RuntimeError(f"ranks disagree on {what}: {values} (rank order); is the output directory "
                               "shared by all nodes?")
        return value

    def barrier(self) -> None:
        self._all_reduce(Tensor(np.zeros(1, np.float32))).asnumpy()

