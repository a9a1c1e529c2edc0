"""Data parallelism with MindSpore's collective communication (``msrun``).

Every process holds the whole model, trains on its own slice of each global
batch, and averages gradients with an all-reduce before the optimiser step, so
all replicas stay identical. Works on CPU (2 processes on one machine) as on
Ascend/GPU clusters.
"""

from __future__ import annotations

import os

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops


def launched_by_msrun() -> bool:
    return os.environ.get("MS_ROLE") == "MS_WORKER" and int(os.environ.get("MS_WORKER_NUM", "1")) > 1


_mean = ops.MultitypeFuncGraph("mean")


@_mean.register("Function", "Number", "Tensor")
def _mean_tensor(all_reduce, world_size, grad):
    return all_reduce(grad) / world_size


class DataParallel:
    """Rank, world size and the gradient all-reduce of an ``msrun``-launched process group."""

    def __init__(self) -> None:
        from mindspore.communication import get_group_size, get_rank, init

        init()
        self.rank = get_rank()
        self.world_size = get_group_size()
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

    def barrier(self) -> None:
        self._all_reduce(Tensor(np.zeros(1, np.float32))).asnumpy()
