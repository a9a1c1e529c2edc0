"""Distributed checkpoints on CPU: strategy files, per-rank slices, merge and reshard (MindSpore's engine and
ours agree), export to a from_pretrained folder with the upstream logits, the LoRA strategy pitfall, MindFormers LoRA."""

import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import yaml

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.checkpoints import iter_tensors, resolve_weight_files
from glm3_mindspore.checkpoints.mindspore_ckpt import iter_ckpt, save_ckpt
from glm3_mindspore.cli import main
from glm3_mindspore.configuration import ChatGLM3Config
from glm3_mindspore.checkpoints.distributed import (merged_tensors, rank_checkpoint_files, read_strategy,
                                                    split_checkpoint, transform_with_mindspore, write_merged_strategy)
from glm3_mindspore.parallel.layout import ParallelConfig, build_layout
from conftest import TINY

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "glm3"
QKV = "transformer.encoder.layers.0.self_attention.query_key_value"


@pytest.fixture(scope="module")
def weights():
    """The tiny fixture's unsplit weights (hub names, stored dtype)."""
    return {n: np.array(a) for n, a in iter_tensors(resolve_weight_files(TINY)) if not n.endswith("inv_freq")}


@pytest.fixture(scope="module")
def tiny_config():
    return ChatGLM3Config.from_pretrained(TINY)


def split(weights, config, tmp, dp, mp, pp, optimizer_shard=False, **kw):
    layout = build_layout(config, ParallelConfig(dp, mp, pp, micro_batch_num=pp, optimizer_shard=optimizer_shard,
                                                 optimizer_shard_threshold_kb=0), dp * mp * pp, **kw)
    split_checkpoint(weights, layout, tmp / "checkpoint", prefix="glm3_tiny")
    return layout


def assert_same(merged, weights):
    assert set(merged) == set(weights)
    for name, array in weights.items():
        assert merged[name].dtype == array.dtype and merged[name].shape == array.shape, name
        np.testing.assert_array_equal(merged[name], array, err_msg=name)


def batch_logits(model, expected):
    out = model(ms.Tensor(expected["batch_input_ids"]), ms.Tensor(expected["batch_position_ids"]),
                ms.Tensor(expected["batch_attention_mask"]))
    real = expected["batch_attention_mask"][..., None].astype(bool)
    return np.where(real, out.logits.astype(ms.float32).asnumpy(), 0.0)


def test_strategy_files_are_mindspores_protobuf(weights, tiny_config, tmp_path):
    layout = split(weights, tiny_config, tmp_path, 1, 2, 1)
    assert sorted(p.name for p in (tmp_path / "strategy").iterdir()) == ["ckpt_strategy_rank_0.ckpt",
                                                                          "ckpt_strategy_rank_1.ckpt"]
    searched = ms.parallel.build_searched_strategy(str(tmp_path / "strategy" / "ckpt_strategy_rank_0.ckpt"))
    qkv = searched[QKV + ".weight"]
    assert list(qkv.dev_matrix[0].dim) == [1, 2] and list(qkv.tensor_map[0].dim) == [0, -1]
    assert "transformer.embedding.embedding_table" in searched  # MindFormers' names
    # rank 0 holds the first half of the fused QKV rows, rank 1 the second half of dense's input columns
    rank0 = dict(iter_ckpt(tmp_path / "checkpoint" / "rank_0" / "glm3_tiny_rank_0.ckpt"))
    rank1 = dict(iter_ckpt(tmp_path / "checkpoint" / "rank_1" / "glm3_tiny_rank_1.ckpt"))
    np.testing.assert_array_equal(rank0[QKV + ".weight"], weights[QKV + ".weight"][:32])
    dense = "transformer.encoder.layers.1.self_attention.dense.weight"
    np.testing.assert_array_equal(rank1[dense], weights[dense][:, 16:])
    assert rank0[dense].shape == layout.params[dense].slice_shape == (32, 16)


@pytest.mark.parametrize("engine", ["mindspore", "numpy"])
def test_two_way_model_parallel_merge_is_the_unsplit_model_and_its_logits(weights, tiny_config, tmp_path, expected,
                                                                          engine, capsys):
    split(weights, tiny_config, tmp_path, 1, 2, 1)
    # the flags of MindFormers' transform_ckpt.py
    assert main(["ckpt", "merge", "--src_ckpt_strategy", str(tmp_path / "strategy"), "--src_ckpt_dir",
                 str(tmp_path / "checkpoint"), "--dst_ckpt_dir", str(tmp_path / "merged"), "--prefix", "glm3_tiny",
                 "--engine", engine]) == 0
    assert f"with the {engine} engine" in capsys.readouterr().out
    merged = dict(iter_ckpt(tmp_path / "merged" / "rank_0" / "glm3_tiny0.ckpt"))
    assert_same(merged, weights)
    # to a hub folder that from_pretrained loads, reproducing upstream's logits
    assert main(["ckpt", "merge", "--strategy", str(tmp_path / "strategy"), "--src", str(tmp_path / "checkpoint"),
                 "--dst", str(tmp_path / "hub"), "--to", "safetensors", "--config", str(TINY), "--engine", engine]) == 0
    model = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "hub", ms_dtype=ms.float32)
    assert not model.loading_info.missing and not model.loading_info.unexpected
    logits = batch_logits(model, expected)
    assert np.abs(logits[..., :1024] - expected["batch_logits_lo"]).max() <= 1e-4
    assert np.abs(logits[:, -1] - expected["batch_logits_last"]).max() <= 1e-4


def test_engines_agree_with_pipeline_stages_and_optimizer_shard(weights, tiny_config, tmp_path):
    src = tmp_path / "src"
    split(weights, tiny_config, src, 2, 2, 2, optimizer_shard=True)
    rank_files = rank_checkpoint_files(src / "checkpoint")
    assert len(rank_files) == 8
    stage1 = dict(iter_ckpt(rank_files[4]))
    assert "transformer.output_layer.weight" in stage1 and "transformer.embedding.embedding_table" not in {
        n for n, _ in iter_ckpt(rank_files[4])}
    assert stage1[QKV.replace(".0.", ".1.") + ".weight"].shape == (64 // 2 // 2, 32)  # mp, then optimizer shard
    assert_same(dict(merged_tensors(read_strategy(src / "strategy"), rank_files)), weights)
    out = transform_with_mindspore(src / "checkpoint", tmp_path / "ms", "m", src / "strategy")
    assert_same(dict(iter_ckpt(out[0])), weights)
    # resharding into another layout: MindSpore's transform gives our slices, file by file
    dst = tmp_path / "dst"
    split(weights, tiny_config, dst, 1, 4, 1)
    ms_out = transform_with_mindspore(src / "checkpoint", tmp_path / "ms_reshard", "r", src / "strategy",
                                      dst / "strategy")
    ours = rank_checkpoint_files(dst / "checkpoint")
    assert list(ms_out) == list(ours) == [0, 1, 2, 3]
    for rank in ours:
        a, b = dict(iter_ckpt(ours[rank])), dict(iter_ckpt(ms_out[rank]))
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"rank {rank} {name}")


def test_merged_pipeline_strategy_file_reads_like_the_folder(weights, tiny_config, tmp_path):
    layout = split(weights, tiny_config, tmp_path, 1, 2, 2)
    merged_file = write_merged_strategy(layout, tmp_path / "merged_strategy.ckpt")
    from_folder, from_file = read_strategy(tmp_path / "strategy"), read_strategy(merged_file)
    assert from_folder.keys() == from_file.keys()
    assert all(from_folder[k].stages == from_file[k].stages for k in from_folder)
    assert from_file["transformer.output_layer.weight"].stages == [1]


def test_reshard_cli_round_trip_with_both_engines(weights, tmp_path, capsys):
    config = str(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml")
    assert main(["ckpt", "reshard", "--src", str(TINY), "--config", config, "--world-size", "2",
                 "--set", "parallel_config.model_parallel=2", "--dst", str(tmp_path / "mp2")]) == 0
    assert "(dp=1 mp=2 pp=1 (2 devices))" in capsys.readouterr().out
    for engine in ("numpy", "mindspore"):
        assert main(["ckpt", "reshard", "--src", str(tmp_path / "mp2" / "checkpoint"), "--strategy",
                     str(tmp_path / "mp2" / "strategy"), "--config", config, "--world-size", "4",
                     "--set", "parallel_config.data_parallel=2", "--set", "parallel_config.pipeline_stage=2",
                     "--set", "parallel_config.micro_batch_num=2", "--dst", str(tmp_path / engine),
                     "--engine", engine]) == 0
    numpy_files = rank_checkpoint_files(tmp_path / "numpy" / "checkpoint")
    ms_files = rank_checkpoint_files(tmp_path / "mindspore" / "checkpoint")
    assert len(numpy_files) == len(ms_files) == 4
    for rank in numpy_files:
        a, b = dict(iter_ckpt(numpy_files[rank])), dict(iter_ckpt(ms_files[rank]))
        assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    back = dict(merged_tensors(read_strategy(tmp_path / "numpy" / "strategy"), numpy_files))
    assert_same(back, weights)


def test_merge_refuses_missing_ranks_and_existing_output(weights, tiny_config, tmp_path, capsys):
    split(weights, tiny_config, tmp_path, 1, 2, 1)
    shutil.rmtree(tmp_path / "checkpoint" / "rank_1")
    assert main(["ckpt", "merge", "--strategy", str(tmp_path / "strategy"), "--src", str(tmp_path / "checkpoint"),
                 "--dst", str(tmp_path / "out")]) == 1
    assert "missing for ranks [1]" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    assert main(["ckpt", "merge", "--strategy", str(tmp_path / "strategy"), "--src", str(tmp_path / "checkpoint"),
                 "--dst", str(tmp_path / "busy")]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- LoRA runs
@pytest.fixture(scope="module")
def lora_weights(weights):
    """Base + non-zero LoRA on query_key_value (r 4), as a LoRA run's rank files hold them."""
    rng = np.random.default_rng(0)
    out = dict(weights)
    for i in range(2):
        layer = f"transformer.encoder.layers.{i}.self_attention.query_key_value"
        out[f"{layer}.lora_A.weight"] = rng.normal(0, 0.1, (4, 32)).astype(np.float32)
        out[f"{layer}.lora_B.weight"] = rng.normal(0, 0.1, (64, 4)).astype(np.float32)
        out[f"{layer}.lora_scaling"] = np.array(8.0, np.float32)
    return out


def lora_yaml(tmp_path, mp):
    data = yaml.safe_load((CONFIGS / "tiny" / "run_glm3_tiny_lora.yaml").read_text())
    data["parallel_config"].update(model_parallel=mp)
    data["model"]["model_config"]["pet_config"].update(lora_rank=4, lora_alpha=32)
    path = tmp_path / "run_lora.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_lora_run_with_trainable_only_strategy_is_merged_from_the_run_config(lora_weights, tiny_config, tmp_path, capsys):
    from glm3_mindspore.peft import LoraConfig

    peft = LoraConfig(r=4, lora_alpha=32, target_modules=["query_key_value"])
    layout = build_layout(tiny_config, ParallelConfig(1, 2, 1), 2, peft=peft)
    split_checkpoint(lora_weights, layout, tmp_path / "checkpoint", "lora", only_trainable_strategy=True)
    strategy = read_strategy(tmp_path / "strategy")
    assert set(strategy) == {n for n in lora_weights if ".lora_" in n and n.endswith("weight")}  # the pitfall
    argv = ["ckpt", "merge", "--strategy", str(tmp_path / "strategy"), "--src", str(tmp_path / "checkpoint")]
    assert main(argv + ["--dst", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "only_trainable_params" in err and "--config RUN.yaml" in err
    assert main(argv + ["--dst", str(tmp_path / "b"), "--engine", "mindspore"]) == 1
    assert "only_trainable_params: False" in capsys.readouterr().err
    assert main(argv + ["--dst", str(tmp_path / "c"), "--config", str(lora_yaml(tmp_path, 2)), "--names", "hub"]) == 0
    assert "rebuilt the layout of" in capsys.readouterr().out
    assert_same(dict(iter_ckpt(tmp_path / "c" / "rank_0" / "checkpoint_0.ckpt")), lora_weights)


# ----------------------------------------------------------------------------- MindFormers interop
def test_mindformers_lora_checkpoint_imports_and_exports(lora_weights, tmp_path, expected, capsys):
    from glm3_mindspore.peft import load_pretrained_with_adapter

    mindpet = {n.replace(".lora_A.weight", ".mindpet_delta_lora_a").replace(".lora_B.weight", ".mindpet_delta_lora_b"): a
               for n, a in lora_weights.items() if not n.endswith("lora_scaling")}
    source = tmp_path / "glm3_tiny_lora.ckpt"
    save_ckpt(source, mindpet.items(), names="mindformers")  # as MindFormers saves a LoRA run
    assert main(["ckpt", "import-mindformers", "--src", str(source), "--dst", str(tmp_path / "adapter"),
                 "--base-dst", str(tmp_path / "base"), "--config", str(lora_yaml(tmp_path, 1))]) == 0
    assert "r=4, alpha=32.0, 2 layers" in capsys.readouterr().out
    model = load_pretrained_with_adapter(tmp_path / "base", tmp_path / "adapter", ms_dtype=ms.float32)
    reference = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    params = dict(reference.parameters_and_names())
    for i in range(2):  # W + alpha / r * B A, by hand
        layer = f"transformer.encoder.layers.{i}.self_attention.query_key_value"
        delta = 8.0 * lora_weights[f"{layer}.lora_B.weight"] @ lora_weights[f"{layer}.lora_A.weight"]
        params[f"{layer}.weight"].set_data(ms.Tensor(params[f"{layer}.weight"].asnumpy() + delta))
    np.testing.assert_allclose(batch_logits(model, expected), batch_logits(reference, expected), atol=2e-5)
    # and back to MindFormers' names
    out = tmp_path / "export.ckpt"
    assert main(["ckpt", "export-mindformers", "--adapter", str(tmp_path / "adapter"), "--base", str(tmp_path / "base"),
                 "--dst", str(out)]) == 0
    names = [n for n, _ in _raw_ckpt_names(out)]
    assert "transformer.embedding.embedding_table" in names
    assert f"{QKV}.mindpet_delta_lora_a" in names and f"{QKV}.mindpet_delta_lora_b" in names
    exported = {n: a for n, a in _raw_ckpt_names(out)}
    np.testing.assert_array_equal(exported[f"{QKV}.mindpet_delta_lora_b"], mindpet[f"{QKV}.mindpet_delta_lora_b"])


def _raw_ckpt_names(path):
    """Names as written in the file (MindSpore's own reader)."""
    return [(n, p.asnumpy()) for n, p in ms.load_checkpoint(str(path)).items()]


def test_mindformers_full_checkpoint_imports_to_a_hub_folder(weights, tmp_path, expected):
    source = tmp_path / "glm3_tiny.ckpt"
    save_ckpt(source, weights.items(), names="mindformers")
    assert main(["ckpt", "import-mindformers", "--src", str(source), "--dst", str(tmp_path / "hub"),
                 "--config", str(TINY)]) == 0
    model = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path / "hub", ms_dtype=ms.float32)
    assert np.abs(batch_logits(model, expected)[:, -1] - expected["batch_logits_last"]).max() <= 1e-4
