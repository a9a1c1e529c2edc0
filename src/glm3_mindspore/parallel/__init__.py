"""Scale-out: data parallelism under ``msrun``, and (on Ascend/GPU) model and pipeline parallel layouts.

* :class:`ParallelContext` - what the trainer asks of a job, with :class:`SingleProcess`;
  :class:`DataParallel` / :func:`parallel_from_environment` - what ``glm3 finetune``
  uses under ``msrun`` (``glm3 launch``); runs on CPU as on clusters;
  :class:`SemiAutoParallel` - the same job with ``model_parallel`` /
  ``pipeline_stage`` > 1 (SEMI_AUTO_PARALLEL; Ascend/GPU);
* :mod:`.layout` - ``parallel_config`` checked against the model, per-parameter
  placement (pure Python); :mod:`.strategy` - operator shard strategies and
  pipeline stages (applied on Ascend/GPU only); :mod:`.memory` / :mod:`.plan` -
  ``glm3 parallel plan``;
* :mod:`.fused_step` - the whole train step as one graph, as SEMI_AUTO_PARALLEL compiles it.

The files of sharded runs (strategy files, per-rank slices, merge and reshard,
``glm3 ckpt``) are :mod:`glm3_mindspore.checkpoints.distributed`; run YAMLs are
read by :mod:`glm3_mindspore.mindformers`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from .context import ParallelContext, SingleProcess, SlicedParallelContext
from .data_parallel import DataParallel, launched_by_msrun
from .layout import Layout, LayoutError, ParallelConfig, build_layout, check_layout
from .semi_auto import SemiAutoParallel
from .strategy import ParallelDeviceError, apply_shard_strategies, operator_strategies, require_parallel_device

logger = logging.getLogger(__name__)


def parallel_from_environment(parallel_config: Optional[Mapping[str, Any]] = None, model_config=None,
                              peft=None) -> ParallelContext:
    """What ``glm3 finetune`` trains with, decided before the model is built.

    Model or pipeline parallelism (``model_parallel`` or ``pipeline_stage`` > 1)
    is checked in full against the model and the process count, then runs as
    :class:`SemiAutoParallel` (Ascend/GPU; a clear error elsewhere). Otherwise
    :class:`DataParallel` in processes ``msrun`` started (its scheduler never
    returns from here), else single-process; ``data_parallel`` different from
    the number of processes is logged, not an error: data parallelism follows
    the launch.
    """
    config = ParallelConfig.from_dict(parallel_config or {})
    distributed = launched_by_msrun()
    if config.model_parallel > 1 or config.pipeline_stage > 1:
        if model_config is not None:
            check_layout(model_config, config, _launched_world_size() if distributed else None)
        require_parallel_device(f"parallel_config {config.describe()}")
        if not distributed:
            raise ParallelDeviceError(f"parallel_config {config.describe()} needs {config.world_size} processes: "
                                      f"start them with glm3 launch --nproc {config.world_size} (msrun)")
        return SemiAutoParallel(config, model_config, peft)
    parallel = DataParallel() if distributed else SingleProcess()
    if parallel_config and config.data_parallel != parallel.world_size:
        world = parallel.world_size
        logger.warning("parallel_config.data_parallel is %d; this job has %d process%s, so it trains %d-way "
                       "data parallel%s", config.data_parallel, world, "es" if world > 1 else "", world,
                       "" if distributed else " (start several with glm3 launch --nproc N)")
    return parallel


def _launched_world_size() -> Optional[int]:
    """The number of workers ``msrun`` started, from its environment (before any process group exists)."""
    import os

    value = os.environ.get("MS_WORKER_NUM") or os.environ.get("RANK_SIZE") or ""
    return int(value) if value.isdigit() else None


__all__ = [
    "DataParallel", "Layout", "LayoutError", "ParallelConfig", "ParallelContext", "ParallelDeviceError",
    "SemiAutoParallel", "SingleProcess", "SlicedParallelContext", "apply_shard_strategies", "build_layout",
    "check_layout", "launched_by_msrun", "operator_strategies", "parallel_from_environment",
    "require_parallel_device",
]
