"""Parallel layouts of ChatGLM3-6B: checks, per-parameter placement, operator strategies, plan and memory (no device)."""

import json

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.configuration import ChatGLM3Config
from glm3_mindspore.parallel import ParallelDeviceError, parallel_from_environment
from glm3_mindspore.mindformers.parallel_config import read_run_parallel_settings
from glm3_mindspore.parallel.layout import (COLUMN, REPLICATED, ROW, VOCAB, LayoutError, ParallelConfig, build_layout,
                                            layout_problems, model_parameters, valid_shapes)
from glm3_mindspore.parallel.memory import MemorySettings, estimate_memory
from glm3_mindspore.parallel.strategy import (apply_shard_strategies, operator_strategies, pipeline_stages,
                                              require_parallel_device)
from conftest import TINY

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "glm3"
GLM3_6B = ChatGLM3Config(num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
                         kv_channels=128, num_attention_heads=32, seq_length=2048, add_qkv_bias=True,
                         multi_query_attention=True, multi_query_group_num=2)
QKV = "transformer.encoder.layers.{}.self_attention.query_key_value"
DENSE = "transformer.encoder.layers.{}.self_attention.dense"
H4H = "transformer.encoder.layers.{}.mlp.dense_h_to_4h"
FOURHH = "transformer.encoder.layers.{}.mlp.dense_4h_to_h"
EMB = "transformer.embedding.word_embeddings.weight"
OUT = "transformer.output_layer.weight"


def layout_6b(dp, mp, pp, **kw):
    return build_layout(GLM3_6B, ParallelConfig(dp, mp, pp, micro_batch_num=max(pp, kw.pop("micro", 1)), **kw), 8)


def test_6b_has_its_6_2_billion_parameters_with_hub_names():
    params = model_parameters(GLM3_6B)
    assert sum(int(np.prod(s)) for _, s, _ in params) == 6_243_584_000
    assert len(params) == 1 + 28 * 7 + 2


@pytest.mark.parametrize("dp,mp,pp", [(8, 1, 1), (4, 2, 1), (2, 2, 2), (1, 8, 1)])
def test_6b_strategies_for_the_issue_layouts(dp, mp, pp):
    layout = layout_6b(dp, mp, pp)
    assert layout.world_size == 8 and layout.config.devices_per_stage == dp * mp
    p = layout.params
    # column-parallel fused QKV: rows split over mp, as stored ([H*D | G*D | G*D] = 4608 rows)
    qkv = p[QKV.format(0) + ".weight"]
    assert qkv.kind == COLUMN and qkv.tensor_map == (0, -1) and qkv.slice_shape == (4608 // mp, 4096)
    assert p[QKV.format(0) + ".bias"].slice_shape == (4608 // mp,)
    assert p[H4H.format(3) + ".weight"].kind == COLUMN and p[H4H.format(3) + ".weight"].slice_shape == (27392 // mp, 4096)
    # row-parallel: input columns split
    assert p[DENSE.format(0) + ".weight"].kind == ROW and p[DENSE.format(0) + ".weight"].slice_shape == (4096, 4096 // mp)
    assert p[FOURHH.format(27) + ".weight"].tensor_map == (-1, 0)
    assert p[FOURHH.format(27) + ".weight"].slice_shape == (4096, 13696 // mp)
    # vocab_emb_dp (the default of MindFormers' glm3 configs): embedding and output layer replicated
    assert p[EMB].kind == REPLICATED and p[EMB].slice_shape == (65024, 4096)
    assert p["transformer.encoder.layers.5.input_layernorm.weight"].kind == REPLICATED
    # pipeline: 28 / pp layers per stage, embedding first, output layer last
    assert [p[QKV.format(i) + ".weight"].stage for i in (0, 13, 14, 27)] == [0, 0, (pp > 1) * 1, pp - 1]
    assert p[EMB].stage == 0 and p[OUT].stage == pp - 1
    assert p["transformer.encoder.final_layernorm.weight"].stage == pp - 1
    # operator strategies: column ((dp, 1), (mp, 1)), row ((dp, mp), (1, mp)), embedding gather
    ops = {(o.cell, o.primitive): o for o in operator_strategies(layout)}
    assert ops[(QKV.format(0), "matmul")].in_strategy == ((dp, 1), (mp, 1))
    assert ops[(H4H.format(0), "matmul")].in_strategy == ((dp, 1), (mp, 1))
    assert ops[(DENSE.format(0), "matmul")].in_strategy == ((dp, mp), (1, mp))
    assert ops[(FOURHH.format(0), "matmul")].in_strategy == ((dp, mp), (1, mp))
    assert ops[("transformer.embedding.word_embeddings", "gather")].in_strategy == ((1, 1), (dp, 1))
    assert ops[("transformer.output_layer", "matmul")].in_strategy == ((dp, 1), (1, 1))
    assert len(ops) == 1 + 28 * 4 + 1
    stages = pipeline_stages(layout)
    assert stages["transformer.encoder.layers.13"] == 0 and stages["transformer.encoder.layers.14"] == pp - 1
    # slices tile the whole tensor: every mp rank of a stage holds a different block
    blocks = {qkv.slice_index(r) for r in range(dp * mp)}
    assert len(blocks) == mp


def test_1_8_1_replicates_the_two_kv_groups_over_the_model_parallel_ranks():
    assert not layout_problems(GLM3_6B, ParallelConfig(1, 8, 1), 8)  # 8 = 4 x 2 groups
    problems = layout_problems(GLM3_6B.__class__(**{**GLM3_6B.to_dict(), "multi_query_group_num": 3,
                                                    "num_attention_heads": 24}), ParallelConfig(1, 8, 1), 8)
    assert any("3 key/value groups" in p for p in problems)


def test_vocab_parallel_embedding_and_output_layer():
    layout = layout_6b(4, 2, 1, vocab_emb_dp=False)
    for name in (EMB, OUT):
        assert layout.params[name].kind == VOCAB and layout.params[name].slice_shape == (32512, 4096)
    ops = {(o.cell, o.primitive): o.in_strategy for o in operator_strategies(layout)}
    assert ops[("transformer.embedding.word_embeddings", "gather")] == ((2, 1), (4, 1))
    assert ops[("transformer.output_layer", "matmul")] == ((4, 1), (2, 1))


def test_sequence_parallel_reduce_scatters_row_parallel_outputs():
    layout = layout_6b(4, 2, 1, use_seq_parallel=True)
    ops = {(o.cell, o.primitive): o for o in operator_strategies(layout)}
    assert ops[(DENSE.format(0), "matmul")].out_strategy == ((8, 1),)
    assert ops[(QKV.format(0), "matmul")].out_strategy is None


def test_optimizer_shard_splits_dim0_over_data_parallel():
    layout = layout_6b(4, 2, 1, optimizer_shard=True)
    qkv = layout.params[QKV.format(0) + ".weight"]
    assert qkv.opt_shard == 4 and qkv.stored_shape == (4608 // 2 // 4, 4096)
    assert layout.params["transformer.encoder.layers.0.input_layernorm.weight"].opt_shard == 1  # 16 KB < 64 KB


@pytest.mark.parametrize("shape,config_changes,reasons", [
    ((1, 3, 1), {}, ["num_attention_heads 32 is not divisible by model_parallel 3",
                     "ffn_hidden_size 13696 is not divisible by model_parallel 3",
                     "larger than the 2 key/value groups"]),
    ((2, 1, 3), {"micro_batch_num": 3}, ["num_layers 28 is not divisible by pipeline_stage 3"]),
    ((2, 2, 2), {"micro_batch_num": 1}, ["micro_batch_num 1 is smaller than pipeline_stage 2"]),
    ((4, 2, 1), {}, []),
    ((2, 2, 1), {}, ["= 4, but the job has 8 devices"]),
    ((1, 64, 1), {}, ["num_attention_heads 32 is not divisible by model_parallel 64"]),
    ((1, 1, 1), {"expert_parallel": 2}, ["ChatGLM3 has no experts"]),
])
def test_impossible_layouts_are_rejected_with_every_reason(shape, config_changes, reasons):
    world = 8 if shape != (1, 64, 1) and shape != (1, 1, 1) else int(np.prod(shape))
    config = ParallelConfig(*shape, **config_changes)
    problems = layout_problems(GLM3_6B, config, world)
    for reason in reasons:
        assert any(reason in p for p in problems), (reason, problems)
    if reasons:
        with pytest.raises(LayoutError) as info:
            build_layout(GLM3_6B, config, world)
        assert all(r in str(info.value) for r in reasons)
    else:
        assert problems == []


def test_ffn_not_divisible():
    odd = ChatGLM3Config(**{**GLM3_6B.to_dict(), "ffn_hidden_size": 13700})
    assert layout_problems(odd, ParallelConfig(1, 8, 1), 8) == [
        "ffn_hidden_size 13700 is not divisible by model_parallel 8"]


def test_vocab_not_divisible_only_matters_when_vocab_is_split():
    odd = ChatGLM3Config(**{**GLM3_6B.to_dict(), "padded_vocab_size": 65023})
    assert not layout_problems(odd, ParallelConfig(4, 2, 1), 8)
    assert any("padded_vocab_size 65023" in p for p in layout_problems(odd, ParallelConfig(4, 2, 1, vocab_emb_dp=False), 8))


def test_parallel_config_keys_and_values_are_checked():
    with pytest.raises(LayoutError, match="model_paralel: unknown key"):
        ParallelConfig.from_dict({"model_paralel": 2})
    with pytest.raises(LayoutError, match="data_parallel: expected a positive integer, got 0"):
        ParallelConfig.from_dict({"data_parallel": 0})


def test_valid_shapes_for_8_devices():
    assert set(valid_shapes(GLM3_6B, 8)) == {(8, 1, 1), (4, 1, 2), (2, 1, 4), (4, 2, 1), (2, 2, 2), (1, 2, 4),
                                             (2, 4, 1), (1, 4, 2), (1, 8, 1)}


def test_mindformers_glm3_yaml_layouts_read_and_size():
    settings = read_run_parallel_settings(CONFIGS / "run_glm3_6b_finetune_2k.yaml")
    assert settings.parallel.shape == (2, 2, 2) and settings.parallel.micro_batch_num == 4
    assert settings.parallel.optimizer_shard and settings.parallel.recompute
    assert settings.memory.seq_length == 2048 and settings.memory.flash_attention
    layout = build_layout(settings.model_config, settings.parallel, 8, settings.peft)
    stages = estimate_memory(layout, settings.memory)
    assert len(stages) == 2
    # fp32 weights of 1.69 B elements per device, sharded 2-way by the parallel optimizer
    assert stages[0].parameters == pytest.approx(1.694e9, rel=1e-3)
    assert stages[0].weights == pytest.approx(sum(p.slice_numel / p.opt_shard for p in layout.params_of_stage(0)) * 4)
    assert all(s.total < 59 * 2 ** 30 for s in stages)  # fits the YAML's max_device_memory
    lora = read_run_parallel_settings(CONFIGS / "run_glm3_6b_lora.yaml")
    lora_layout = build_layout(lora.model_config, lora.parallel, 1, lora.peft)
    trainable = [p for p in lora_layout.params.values() if p.trainable]
    assert {p.name.rsplit(".", 2)[-2] for p in trainable} == {"lora_A", "lora_B"} and len(trainable) == 56


def test_memory_model_responds_to_recompute_flash_and_optimizer_shard():
    base = MemorySettings(batch_size=1, seq_length=2048, param_dtype="float32", compute_dtype="float16")
    full = estimate_memory(layout_6b(8, 1, 1), base)[0]
    recompute = estimate_memory(layout_6b(8, 1, 1, recompute=True), base)[0]
    flash = estimate_memory(layout_6b(8, 1, 1), MemorySettings(1, 2048, "float32", "float16", flash_attention=True))[0]
    sharded = estimate_memory(layout_6b(8, 1, 1, optimizer_shard=True), base)[0]
    assert recompute.activations < full.activations / 5 and flash.activations < full.activations
    assert sharded.optimizer == pytest.approx(full.optimizer / 8, rel=0.01)
    assert full.optimizer == pytest.approx(6_243_584_000 * 8) and full.gradients == pytest.approx(6_243_584_000 * 4)


@pytest.mark.parametrize("method", ["full", "lora", "ptuning"])
def test_tiny_layout_names_shapes_and_trainability_are_the_models(tiny_dir, method):
    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.peft import LoraConfig, apply_tuning_method

    peft = LoraConfig(r=2, target_modules=["query_key_value", "dense_4h_to_h"]) if method == "lora" else None
    changes = {"pre_seq_len": 4, "prefix_projection": True} if method == "ptuning" else {}
    model = ChatGLM3ForConditionalGeneration.from_pretrained(tiny_dir, ms_dtype=ms.float32, **changes)
    model = apply_tuning_method(model, peft)
    layout = build_layout(model.config, ParallelConfig(1, 2, 1), peft=peft)
    assert [(n, tuple(p.shape), p.requires_grad) for n, p in model.parameters_and_names()] == [
        (n, p.shape, p.trainable) for n, p in layout.params.items()]


def test_strategies_land_on_the_models_primitives_and_stages(tiny_dir):
    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.peft import LoraConfig, get_peft_model

    model = ChatGLM3ForConditionalGeneration.from_pretrained(tiny_dir, ms_dtype=ms.float32)
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["query_key_value"]))
    layout = build_layout(model.config, ParallelConfig(1, 2, 2, micro_batch_num=2), 4,
                          peft=LoraConfig(r=2, target_modules=["query_key_value"]))
    with pytest.raises(ParallelDeviceError, match="needs Ascend or GPU"):
        apply_shard_strategies(model, layout)  # CPU: refused before anything happens
    applied = apply_shard_strategies(model, layout, check_device=False)  # record only, for inspection
    cells = dict(model.cells_and_names())
    qkv = cells["transformer.encoder.layers.0.self_attention.query_key_value"]
    assert qkv.matmul.attrs["in_strategy"] == ((1, 1), (2, 1))
    assert qkv.lora_B.matmul.attrs["in_strategy"] == ((1, 1), (2, 1))
    assert cells["transformer.encoder.layers.1.mlp.dense_4h_to_h"].matmul.attrs["in_strategy"] == ((1, 2), (1, 2))
    assert cells["transformer.embedding.word_embeddings"].gather.attrs["in_strategy"] == ((1, 1), (1, 1))
    assert [cells[f"transformer.encoder.layers.{i}"].pipeline_stage for i in (0, 1)] == [0, 1]
    assert cells["transformer.output_layer"].pipeline_stage == 1
    assert len(applied) == 1 + 2 * 4 + 2 * 2 + 1


def test_require_parallel_device_names_what_works_here():
    with pytest.raises(ParallelDeviceError) as info:
        require_parallel_device()
    assert "glm3 parallel plan" in str(info.value) and "msrun" in str(info.value)


def test_finetune_layout_check_before_the_model_is_built(monkeypatch):
    tiny = ChatGLM3Config.from_pretrained(TINY)
    assert parallel_from_environment({"data_parallel": 8}, tiny).world_size == 1  # dp follows the launch
    monkeypatch.setenv("MS_WORKER_NUM", "4")
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")  # as msrun starts a worker: the layout is checked before init()
    with pytest.raises(LayoutError, match="the job has 4 devices"):
        parallel_from_environment({"data_parallel": 1, "model_parallel": 2}, tiny)
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    with pytest.raises(ParallelDeviceError, match="needs Ascend or GPU"):
        parallel_from_environment({"data_parallel": 1, "model_parallel": 2}, tiny)
    monkeypatch.delenv("MS_ROLE")
    assert main(["finetune", "--config", str(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml"),
                 "--set", "parallel_config.model_parallel=2"]) == 1


def test_glm3_parallel_plan_6b(capsys):
    assert main(["parallel", "plan", "--config", str(CONFIGS / "run_glm3_6b_finetune_2k.yaml"), "--world-size", "8",
                 "--strategies"]) == 0
    out = capsys.readouterr().out
    assert "data_parallel 2 x model_parallel 2 x pipeline_stage 2 = 8 devices" in out
    assert "transformer.encoder.layers.[0-27].self_attention.query_key_value.weight" in out
    assert "stage 0: ranks 0-3, layers 0-13, stage 1: ranks 4-7, layers 14-27" in out
    assert "((2, 1), (2, 1))" in out and "Memory per device" in out
    assert main(["parallel", "plan", "--config", str(CONFIGS / "run_glm3_6b_finetune.yaml"), "--world-size", "8",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layout"]["data_parallel"] == 8 and plan["model"]["parameters"] == 6_243_584_000
    assert len(plan["parameters"]) == 199 and len(plan["memory_per_device"]) == 1


def test_glm3_parallel_plan_rejects_a_bad_layout(capsys):
    assert main(["parallel", "plan", "--config", str(CONFIGS / "run_glm3_6b_finetune.yaml"), "--world-size", "8",
                 "--set", "parallel_config.model_parallel=3", "--set", "parallel_config.data_parallel=1"]) == 1
    err = capsys.readouterr().err
    assert "num_attention_heads 32 is not divisible by model_parallel 3" in err
    assert "fit 8 devices: (8, 1, 1)" in err
