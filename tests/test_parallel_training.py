"""Model/pipeline-parallel training, everything but MindSpore's SEMI_AUTO_PARALLEL compile, on one CPU process.

On a cluster ``glm3 finetune`` trains with :class:`SemiAutoParallel`: strategies
on the model, the whole step as one :class:`FusedTrainStep` graph compiled by
``AutoParallel``, rows dealt by data-parallel index, per-rank slices in the
checkpoints, the final model merged by rank 0. MindSpore refuses that compile on
CPU, so here a one-device ``SemiAutoParallel`` (layout 1 x 1 x 1) runs the same
fused step under ``mindspore.jit`` and writes the strategy file ``AutoParallel``
would. What these tests prove: the fused step is the same optimisation as the
data-parallel step; sliced checkpoints resume exactly and merge into a model
``from_pretrained`` loads; the data share and the device checks are right.
"""

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.configuration import ChatGLM3Config
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
from glm3_mindspore.parallel import ParallelDeviceError, SemiAutoParallel, SingleProcess, parallel_from_environment
from glm3_mindspore.checkpoints.distributed import write_strategy_files
from glm3_mindspore.parallel.fused_step import FusedTrainDriver, FusedTrainStep
from glm3_mindspore.parallel.layout import LayoutError, ParallelConfig, build_layout
from glm3_mindspore.parallel.semi_auto import data_coordinates
from glm3_mindspore.parallel.strategy import apply_shard_strategies, causal_lm_loss_cell
from glm3_mindspore.training import Trainer, checkpoint_dirs
from conftest import TINY
from test_trainer import fixture_rows, losses, upstream_args

SCHEDULE = dict(learning_rate=3e-3, lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=0.5, max_steps=4,
                per_device_train_batch_size=2)


class OneDeviceSemiAuto(SingleProcess, SemiAutoParallel):
    """:class:`SemiAutoParallel` on a process group of one (so :class:`SingleProcess`'s collectives), with
    ``jit`` where a cluster has ``AutoParallel``."""

    sliced_parameters = True

    def __init__(self, model_config) -> None:  # no process group: nothing to initialise
        self.layout = build_layout(model_config, ParallelConfig(), 1)
        self.stage, self.is_last_stage = 0, True
        self.data_rank, self.data_world_size = data_coordinates(self.layout, 0)
        self.network = None

    def prepare_model(self, model) -> None:
        apply_shard_strategies(model, self.layout, check_device=False)

    def build_train_step(self, model, optimizer, args, strategy_dir, loss_scaler=None):
        step = FusedTrainStep(causal_lm_loss_cell(model), optimizer, args.max_grad_norm)
        write_strategy_files(self.layout, strategy_dir, names="hub")  # what AutoParallel writes when it compiles
        return FusedTrainDriver(step, ms.jit(step.construct), loss_scaler)


def tiny_model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


def weights(model):
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}


def split_and_fused(tmp_path, rows, **overrides):
    """The same run trained by the data-parallel (split) step and by the fused step; both trainers."""
    split = Trainer(tiny_model(), upstream_args(tmp_path / "split", **overrides), train_dataset=rows)
    split.train()
    model = tiny_model()
    fused = Trainer(model, upstream_args(tmp_path / "fused", **overrides), train_dataset=rows,
                    parallel=OneDeviceSemiAuto(model.config))
    fused.train()
    return split, fused


def assert_same_weights(model, reference, atol):
    expected = weights(reference)
    for name, value in weights(model).items():
        np.testing.assert_allclose(value, expected[name], atol=atol, err_msg=name)


def test_fused_step_is_the_same_optimisation_as_the_split_step(tmp_path, expected_train):
    split, fused = split_and_fused(tmp_path, fixture_rows(expected_train), **SCHEDULE)
    np.testing.assert_allclose(losses(fused), losses(split), atol=1e-6)
    norms = [[r["grad_norm"] for r in t.state.log_history if "grad_norm" in r] for t in (fused, split)]
    np.testing.assert_allclose(norms[0], norms[1], atol=5e-5)  # in-graph fp32 sum vs host fp64: ~1e-5 apart
    assert max(norms[1]) > SCHEDULE["max_grad_norm"]  # clipping was exercised
    # the clip factors differ by those ~1e-5 (relative); Adam's normalised updates carry that into weights
    # whose gradients are near zero: <= 6e-6 after 4 steps of lr 3e-3
    assert_same_weights(fused.model, split.model, atol=2e-5)


def test_fused_step_scales_fp16_losses_and_skips_overflows_like_the_split_step(tmp_path, expected_train):
    # a first scale of 2**24 overflows fp16 gradients: both halve it and skip, then train with the same scale
    split, fused = split_and_fused(tmp_path, fixture_rows(expected_train),
                                   **dict(SCHEDULE, fp16=True, loss_scale=2.0 ** 24, max_steps=3))
    assert fused.loss_scaler.scale == split.loss_scaler.scale < 2.0 ** 24  # at least one overflow skipped
    np.testing.assert_allclose(losses(fused), losses(split), atol=1e-3)  # fp16 compute
    assert_same_weights(fused.model, split.model, atol=1e-4)


def test_sliced_checkpoints_resume_exactly_and_merge_into_a_loadable_model(tmp_path, expected_train):
    rows = fixture_rows(expected_train)
    model = tiny_model()
    args = upstream_args(tmp_path, save_strategy="steps", save_steps=2, **SCHEDULE)
    reference = Trainer(model, args, train_dataset=rows, parallel=OneDeviceSemiAuto(model.config))
    reference.train()
    reference.save_model()
    run = tmp_path / "run"
    assert [p.name for p in checkpoint_dirs(run)] == ["checkpoint-2", "checkpoint-4"]
    checkpoint = run / "checkpoint-2"
    assert (checkpoint / "rank_0" / "glm3_rank_0.ckpt").is_file() and (checkpoint / "strategy").is_dir()
    assert not any(p.name.startswith(".checkpoint-") for p in run.iterdir())  # staging committed

    # the merged hub folder is the trained model
    assert_same_weights(ChatGLM3ForConditionalGeneration.from_pretrained(run, ms_dtype=ms.float32), reference.model, 0)
    # any checkpoint exports with glm3 ckpt merge (its optimizer state left out)
    assert main(["ckpt", "merge", "--strategy", str(run / "checkpoint-4" / "strategy"), "--src", str(run / "checkpoint-4"),
                 "--dst", str(tmp_path / "exported"), "--to", "safetensors", "--config", str(TINY)]) == 0
    exported = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "exported", ms_dtype=ms.float32)
    assert_same_weights(exported, reference.model, 0)

    # a new job resumes from step 2's slices (model and optimizer) and ends where the uninterrupted run did
    (run / "checkpoint-4").rename(run / "not-a-checkpoint-4")
    model = tiny_model()
    resumed = Trainer(model, upstream_args(tmp_path, save_strategy="steps", save_steps=2, **SCHEDULE),
                      train_dataset=rows, parallel=OneDeviceSemiAuto(model.config))
    resumed.train(resume_from_checkpoint="latest")
    np.testing.assert_allclose(losses(resumed)[-2:], losses(reference)[-2:], atol=1e-6)
    assert_same_weights(resumed.model, reference.model, atol=1e-6)


def test_rows_are_dealt_by_data_parallel_index():
    config = ChatGLM3Config.from_pretrained(TINY)
    layout = build_layout(config, ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2,
                                                 micro_batch_num=2), 8)
    # device matrix [dp, mp] per stage: the mp ranks of a replica, and the same place in each stage, share rows
    assert [data_coordinates(layout, r) for r in range(8)] == [(0, 2), (0, 2), (1, 2), (1, 2)] * 2


def test_model_parallel_needs_a_parallel_device_and_a_launch():
    config = ChatGLM3Config.from_pretrained(TINY)
    with pytest.raises(LayoutError, match="devices"):  # checked against the model before anything else
        parallel_from_environment({"model_parallel": 3}, config)
    with pytest.raises(ParallelDeviceError, match="needs Ascend or GPU"):
        parallel_from_environment({"model_parallel": 2}, config)
    with pytest.raises(ParallelDeviceError, match="needs Ascend or GPU"):
        SemiAutoParallel(ParallelConfig(model_parallel=2), config)


def test_save_pretrained_with_a_state_dict_checks_every_name_and_shape(tmp_path):
    model = tiny_model()
    state = {name: value + 1 for name, value in weights(model).items()}
    model.save_pretrained(tmp_path / "given", state_dict=state)
    again = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "given", ms_dtype=ms.float32)
    for name, value in weights(again).items():
        np.testing.assert_array_equal(value, state[name])
    name = "transformer.output_layer.weight"
    with pytest.raises(ValueError, match="missing"):
        model.save_pretrained(tmp_path / "bad", state_dict={k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match=name):
        model.save_pretrained(tmp_path / "bad", state_dict={**state, name: state[name][:1]})
