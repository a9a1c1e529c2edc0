"""Scale-out: data parallelism under ``msrun``, and (on Ascend/GPU) model and pipeline parallel layouts.

* :class:`DataParallel` / :func:`parallel_from_environment` - what ``glm3 finetune``
  uses under ``msrun`` (``glm3 launch``); runs on CPU as on clusters;
* :mod:`.layout` - ``parallel_config`` checked against the model, per-parameter
  placement (pure Python); :mod:`.strategy` - operator shard strategies and
  pipeline stages (applied on Ascend/GPU only); :mod:`.memory` / :mod:`.plan` -
  ``glm3 parallel plan``;
* :mod:`.checkpoints` - strategy files, per-rank slices, merge and reshard
  (``glm3 ckpt``); :mod:`.mindformers` - MindFormers LoRA checkpoint names.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from .data_parallel import DataParallel, launched_by_msrun
from .layout import Layout, LayoutError, ParallelConfig, build_layout, check_layout
from .strategy import ParallelDeviceError, apply_shard_strategies, operator_strategies, require_parallel_device

logger = logging.getLogger(__name__)


def parallel_from_environment(parallel_config: Optional[Mapping[str, Any]] = None, model_config=None):
    """:class:`DataParallel` in processes ``msrun`` started (its scheduler never returns from here), else
    single-process; then the run config's ``parallel_config`` is checked against it (see :func:`check_training_layout`)."""
    from ..training.trainer import SingleProcess

    parallel = DataParallel() if launched_by_msrun() else SingleProcess()
    if parallel_config:
        check_training_layout(parallel_config, model_config, parallel.world_size, launched_by_msrun())
    return parallel


def check_training_layout(parallel_config: Mapping[str, Any], model_config, world_size: int,
                          distributed: bool) -> ParallelConfig:
    """What ``glm3 finetune`` can run of a ``parallel_config``, decided before the model is built.

    Data parallelism follows the launch (``data_parallel`` different from the
    number of processes is logged, not an error). Model or pipeline parallelism
    (``model_parallel`` or ``pipeline_stage`` > 1) is checked in full against the
    model and the process count, and then needs Ascend or GPU.
    """
    config = ParallelConfig.from_dict(parallel_config)
    if config.model_parallel == 1 and config.pipeline_stage == 1:
        if config.data_parallel != world_size:
            logger.warning("parallel_config.data_parallel is %d; this job has %d process%s, so it trains %d-way "
                           "data parallel%s", config.data_parallel, world_size, "es" if world_size > 1 else "",
                           world_size, "" if distributed else " (start several with glm3 launch --nproc N)")
        return config
    if model_config is not None:
        check_layout(model_config, config, world_size)
    require_parallel_device(f"parallel_config {config.describe()}")
    raise ParallelDeviceError(
        f"parallel_config {config.describe()}: glm3 finetune trains data parallel only; on Ascend/GPU build the "
        "sharded network with glm3_mindspore.parallel.apply_shard_strategies and "
        "glm3_mindspore.parallel.strategy.build_parallel_network (see README, Scale-out)")


__all__ = [
    "DataParallel", "Layout", "LayoutError", "ParallelConfig", "ParallelDeviceError", "apply_shard_strategies",
    "build_layout", "check_layout", "check_training_layout", "launched_by_msrun", "operator_strategies",
    "parallel_from_environment", "require_parallel_device",
]
