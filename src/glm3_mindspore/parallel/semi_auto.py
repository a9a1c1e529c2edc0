"""Model and pipeline parallel training: the :class:`~glm3_mindspore.training.Trainer` under SEMI_AUTO_PARALLEL.

What ``glm3 finetune`` uses when ``parallel_config`` asks for ``model_parallel``
or ``pipeline_stage`` > 1 (Ascend or GPU, started by ``msrun``):

* the model gets the layout's operator strategies and pipeline stages
  (:func:`~.strategy.apply_shard_strategies`);
* the whole optimisation step is one graph (:class:`~.fused_step.FusedTrainStep`,
  inside ``Pipeline`` micro-batches and a ``PipelineGradReducer`` when
  pipelined) wrapped in ``AutoParallel``, which inserts the collectives,
  shards the optimizer state with ``optimizer_shard`` and writes the parameter
  strategy file of every rank (all parameters, so LoRA runs merge);
* rows are dealt by data-parallel index: the ``mp`` ranks of one replica and the
  stages of one pipeline read the same rows;
* every rank saves its own slices (``rank_<r>/``) next to the strategy files, the
  layout ``glm3 ckpt merge`` reads; the final model is merged by rank 0 into the
  hub layout.

MindSpore's compiler refuses SEMI_AUTO_PARALLEL on CPU ("Invalid communication
backend: CPU for semi_auto_parallel/auto_parallel mode"), so building this raises
:class:`~.strategy.ParallelDeviceError` there before any process group starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from mindspore import Tensor

from .data_parallel import DataParallel
from .fused_step import FusedTrainDriver, FusedTrainStep
from .layout import Layout, ParallelConfig, build_layout
from .strategy import apply_shard_strategies, causal_lm_loss_cell, require_parallel_device


def data_coordinates(layout: Layout, rank: int) -> tuple:
    """``(data-parallel index, data-parallel size)`` of global ``rank``: which share of each global batch it reads.

    Inside a stage the device matrix is ``[dp, mp]`` row-major, so the ``mp``
    ranks of one replica are adjacent and read the same rows; so do the ranks
    at the same place in every stage.
    """
    return layout.local_rank(rank) // layout.config.model_parallel, layout.config.data_parallel


class SemiAutoParallel(DataParallel):
    """Rank, data share, collectives and the sharded train step of a model/pipeline parallel job."""

    sliced_parameters = True

    def __init__(self, config: ParallelConfig, model_config, peft=None) -> None:
        import mindspore as ms

        require_parallel_device(f"parallel_config {config.describe()}")
        ms.set_context(mode=ms.GRAPH_MODE)  # AutoParallel applies its settings only to graph-mode cells
        super().__init__()
        self.layout = build_layout(model_config, config, self.world_size, peft=peft)
        self.stage = self.layout.stage_of_rank(self.rank)
        self.data_rank, self.data_world_size = data_coordinates(self.layout, self.rank)
        self.is_last_stage = self.stage == self.layout.num_stages - 1
        self.grad_reducer = None  # the compiler reduces gradients over the data-parallel axis
        self.network = None

    # ------------------------------------------------------------------ model
    def prepare_model(self, model) -> None:
        """Shard strategies on the model's operators, pipeline stages on its cells."""
        apply_shard_strategies(model, self.layout)

    def build_train_step(self, model, optimizer, args, strategy_dir: Path, loss_scaler=None):
        """``AutoParallel`` around the fused step; the strategy file goes to ``strategy_dir``."""
        from mindspore.parallel.auto_parallel import AutoParallel

        if args.gradient_accumulation_steps != 1:
            raise ValueError("gradient_accumulation_steps must be 1 with model or pipeline parallelism: "
                             "set parallel_config.micro_batch_num (pipeline micro-batches) instead")
        cfg = self.layout.config
        network, reducer = causal_lm_loss_cell(model), None
        if cfg.pipeline_stage > 1:
            from mindspore.parallel.nn import Pipeline, PipelineGradReducer

            network = Pipeline(network, cfg.micro_batch_num)  # stages: set on the cells by prepare_model
            reducer = PipelineGradReducer(optimizer.parameters, opt_shard=cfg.optimizer_shard)
        step = FusedTrainStep(network, optimizer, args.max_grad_norm, reducer)
        parallel = AutoParallel(step, parallel_mode="sharding_propagation")
        strategy_dir.mkdir(parents=True, exist_ok=True)
        parallel.save_param_strategy_file(str(strategy_dir / f"ckpt_strategy_rank_{self.rank}.ckpt"))
        parallel.disable_strategy_file_only_for_trainable_params()
        parallel.dataset_strategy("data_parallel")
        if cfg.optimizer_shard:
            parallel.hsdp(threshold=cfg.optimizer_shard_threshold_kb)
        if cfg.pipeline_stage > 1:
            parallel.pipeline(stages=cfg.pipeline_stage)
        self.network = parallel
        return FusedTrainDriver(step, parallel, loss_scaler)

    # ------------------------------------------------------------ collectives
    def mean(self, value: float) -> float:
        """The loss as the last pipeline stage computed it (other stages hold no loss), averaged there."""
        share = np.array([value if self.is_last_stage else 0.0, 1.0 if self.is_last_stage else 0.0], np.float32)
        total, count = self._all_reduce(Tensor(share)).asnumpy()
        return float(total / max(count, 1.0))

    # ------------------------------------------------------------ checkpoints
    def slice_file(self, folder: Path, prefix: str = "glm3") -> Path:
        """Where this rank's slices live: ``folder/rank_<r>/<prefix>_rank_<r>.ckpt`` (``glm3 ckpt merge``'s layout)."""
        return Path(folder) / f"rank_{self.rank}" / f"{prefix}_rank_{self.rank}.ckpt"

    def save_slices(self, cell, folder: Path, prefix: str = "glm3") -> Path:
        """This rank's slices of ``cell``'s parameters, at :meth:`slice_file`."""
        import mindspore as ms

        path = self.slice_file(folder, prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(cell, str(path), integrated_save=False)
        return path

    def load_slices(self, cell, folder: Path, prefix: str = "glm3") -> None:
        import mindspore as ms

        path = self.slice_file(folder, prefix)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the slice of rank {self.rank} is missing (same layout as the run "
                                    "that saved it? use glm3 ckpt reshard to change layouts)")
        not_loaded, _ = ms.load_param_into_net(cell, ms.load_checkpoint(str(path)), strict_load=True)
        if not_loaded:
            raise ValueError(f"{path} lacks {len(not_loaded)} parameters, e.g. {not_loaded[:3]}")

    def merge_slices(self, folder: Path, strategy_dir: Path, names_in_model) -> Dict[str, np.ndarray]:
        """Full tensors of the model parameters from every rank's slices (rank 0, after a barrier)."""
        from ..checkpoints.distributed import merged_tensors, rank_checkpoint_files, read_strategy

        wanted = set(names_in_model)
        return {name: array for name, array in merged_tensors(read_strategy(strategy_dir), rank_checkpoint_files(folder))
                if name in wanted}


__all__ = ["SemiAutoParallel", "data_coordinates"]
