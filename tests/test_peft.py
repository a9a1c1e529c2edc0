"""LoRA and P-Tuning v2 on the tiny checkpoint: what trains, merging, PEFT-layout save/load, prefixes."""

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore.experimental.optim import AdamW
from mindspore.graph import api as graph_api

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.checkpoints.safetensors_io import load_safetensors, save_safetensors
from glm3_mindspore.peft import (
    AdapterError, LoraConfig, get_peft_model, load_adapter, load_prefix, load_pretrained_with_adapter,
    lora_layers, lora_state_dict, merge_and_unload, merge_lora, prefix_state_dict, save_adapter, save_prefix,
    setup_ptuning, unmerge_lora,
)
from glm3_mindspore.peft.weights import write_parameter
from conftest import TINY

QKV = "transformer.encoder.layers.{}.self_attention.query_key_value"
BATCH_KEYS = ("input_ids", "position_ids", "attention_mask", "labels")
CHAT_STOP = [2, 64795, 64797]


def base_model(**overrides):
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32, **overrides)


def snapshot(model):
    return {name: param.asnumpy().copy() for name, param in model.parameters_and_names()}


def logits(model, ids):
    return model(ms.Tensor(ids.astype(np.int32))).logits.asnumpy()


@pytest.fixture(scope="module")
def batch(expected_train):
    return [ms.Tensor(expected_train[k][:2].astype(np.int32)) for k in BATCH_KEYS]


@pytest.fixture(scope="module")
def probe(expected):
    return expected["batch_input_ids"]


def eval_loss(model, batch) -> float:
    model.set_train(False)
    return float(model(*batch)[0].asnumpy())


def train(model, batch, steps=3, lr=1e-2):
    """A few AdamW steps on the trainable parameters; the eval-mode loss before and after."""
    before = eval_loss(model, batch)
    params = model.trainable_params()
    optimizer = AdamW(params, lr=lr)
    step = ms.value_and_grad(lambda *inputs: model(*inputs)[0], None, weights=params)
    model.set_train(True)
    for _ in range(steps):
        _, grads = step(*batch)
        optimizer(grads)
    return before, eval_loss(model, batch)


# --------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def trained_lora(batch):
    """A LoRA model after three training steps, with the base weights from before."""
    ms.set_seed(0)
    model = base_model()
    before = snapshot(model)
    get_peft_model(model, LoraConfig())
    losses = train(model, batch)
    return model, before, losses


def test_get_peft_model_leaves_only_the_adapters_trainable():
    model = get_peft_model(base_model(), LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1))
    trainable = model.trainable_params()
    expected = [f"{QKV.format(i)}.lora_{ab}.weight" for i in range(2) for ab in "AB"]
    assert sorted(p.name for p in trainable) == sorted(expected)
    assert sum(int(np.prod(p.shape)) for p in trainable) == 2 * 8 * (32 + 64)  # r * (in + out) per layer
    names = dict(model.parameters_and_names())
    assert names[f"{QKV.format(0)}.lora_A.weight"].shape == (8, 32)
    assert names[f"{QKV.format(0)}.lora_B.weight"].shape == (64, 8)
    assert all(param.name == name for name, param in names.items())  # unique, full names
    assert names[f"{QKV.format(1)}.weight"].requires_grad is False
    assert model.peft_config.base_model_name_or_path == "tiny-chatglm3"


def test_fresh_adapter_does_not_change_the_output(probe):
    model = base_model()
    reference = logits(model, probe)
    get_peft_model(model, LoraConfig())
    np.testing.assert_array_equal(logits(model, probe), reference)  # B starts at zero


def test_target_modules_as_suffix_list_and_regex():
    listed = get_peft_model(base_model(), LoraConfig(target_modules=["dense", "dense_4h_to_h"]))
    assert [p for p, _ in lora_layers(listed)] == [
        f"transformer.encoder.layers.{i}.{m}" for i in range(2) for m in ("self_attention.dense", "mlp.dense_4h_to_h")]
    regex = get_peft_model(base_model(), LoraConfig.from_mindformers(
        {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 16, "lora_dropout": 0.0,
         "target_modules": ".*query_key_value*"}))
    assert [p for p, _ in lora_layers(regex)] == [QKV.format(0), QKV.format(1)]
    assert regex.peft_config.r == 4 and regex.peft_config.scaling == 4.0
    with pytest.raises(AdapterError, match="matched no Linear layer.*query_key_value"):
        get_peft_model(base_model(), LoraConfig(target_modules=["q_proj"]))


def test_training_changes_only_adapter_parameters(trained_lora):
    model, before, (loss_before, loss_after) = trained_lora
    after = snapshot(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)  # base bit-identical
    for i in range(2):
        assert np.abs(after[f"{QKV.format(i)}.lora_B.weight"]).max() > 0
    assert loss_after < loss_before


def test_merge_gives_the_same_logits_and_unmerge_restores_the_base(probe):
    ms.set_seed(1)
    model = base_model()
    base_weights = snapshot(model)
    base_logits = logits(model, probe)
    prompt = probe[2:3]
    base_generated = model.generate(prompt, max_new_tokens=6, eos_token_id=CHAT_STOP, use_cache=False)
    get_peft_model(model, LoraConfig(init_lora_weights=False))  # B random too: a large update
    adapted = logits(model, probe)
    assert np.abs(adapted - base_logits).max() > 1e-2
    generated = model.generate(prompt, max_new_tokens=6, eos_token_id=CHAT_STOP)
    assert generated.tolist() != base_generated.tolist()
    graphs = len(graph_api.ms_compile_cache)

    assert merge_lora(model) == 2
    np.testing.assert_allclose(logits(model, probe), adapted, atol=1e-5, rtol=0)
    # the graphs compiled before the merge read the merged weight and the zeroed scaling
    assert model.generate(prompt, max_new_tokens=6, eos_token_id=CHAT_STOP).tolist() == generated.tolist()
    assert len(graph_api.ms_compile_cache) == graphs

    assert unmerge_lora(model) == 2
    for name, value in base_weights.items():
        np.testing.assert_allclose(snapshot(model)[name], value, atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_allclose(logits(model, probe), adapted, atol=1e-5, rtol=0)


def test_save_adapter_writes_the_peft_layout_and_loads_back(trained_lora, tmp_path, probe):
    model, _, _ = trained_lora
    reference = logits(model, probe)
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 8
    assert config["lora_alpha"] == 32 and config["lora_dropout"] == 0.1 and config["bias"] == "none"
    assert config["target_modules"] == ["query_key_value"] and config["inference_mode"] is True
    tensors = load_safetensors(tmp_path / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(f"base_model.model.{QKV.format(i)}.lora_{ab}.weight" for i in range(2) for ab in "AB")
    assert tensors[f"base_model.model.{QKV.format(0)}.lora_A.weight"].shape == (8, 32)

    fresh = load_adapter(base_model(), tmp_path)
    np.testing.assert_array_equal(logits(fresh, probe), reference)
    assert fresh.trainable_params() == []  # loaded for inference
    assert lora_state_dict(fresh).keys() == tensors.keys()

    one_call = load_pretrained_with_adapter(TINY, tmp_path, ms_dtype=ms.float32)
    np.testing.assert_array_equal(logits(one_call, probe), reference)
    merged = load_pretrained_with_adapter(TINY, tmp_path, merge=True, ms_dtype=ms.float32)
    assert not lora_layers(merged) and all("lora" not in n for n, _ in merged.parameters_and_names())
    np.testing.assert_allclose(logits(merged, probe), reference, atol=1e-5, rtol=0)


def test_adapter_keys_with_an_adapter_name_load_too(trained_lora, tmp_path, probe):
    model, _, _ = trained_lora
    renamed = {k.replace(".weight", ".default.weight"): v for k, v in lora_state_dict(model).items()}
    save_safetensors(tmp_path / "adapter_model.safetensors", renamed)
    model.peft_config.save_pretrained(tmp_path)
    np.testing.assert_array_equal(logits(load_adapter(base_model(), tmp_path), probe), logits(model, probe))


def test_bad_adapters_raise_clear_errors_and_leave_the_model_alone(trained_lora, tmp_path):
    model, _, _ = trained_lora
    save_adapter(model, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors = load_safetensors(weights)
    key = f"base_model.model.{QKV.format(1)}.lora_B.weight"

    short = dict(tensors)
    del short[key]
    save_safetensors(weights, short)
    fresh = base_model()
    with pytest.raises(AdapterError, match=rf"adapter_model.safetensors: .*missing keys: {key}"):
        load_adapter(fresh, tmp_path)
    assert not lora_layers(fresh) and not hasattr(fresh, "peft_config")

    wrong = dict(tensors)
    wrong[key] = np.zeros((64, 4), np.float32)
    save_safetensors(weights, wrong)
    with pytest.raises(AdapterError, match=r"shape mismatch: .*lora_B.weight \(64, 4\) in the file vs \(64, 8\)"):
        load_adapter(base_model(), tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterError, match=r"adapter_config.json: 'use_dora'"):
        load_adapter(base_model(), tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(base_model(), tmp_path)


def test_lora_config_round_trips_unknown_keys_and_refuses_other_peft_types(tmp_path):
    data = {"peft_type": "LORA", "r": 16, "lora_alpha": 8, "target_modules": ["query_key_value", "dense"],
            "megatron_core": "megatron.core", "rank_pattern": {}, "use_rslora": True}
    config = LoraConfig.from_dict(data)
    assert config.scaling == 8 / 4 and config.extra["megatron_core"] == "megatron.core"
    config.save_pretrained(tmp_path)
    assert LoraConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    with pytest.raises(AdapterError, match="peft_type is 'PREFIX_TUNING'"):
        LoraConfig.from_dict({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 8})
    with pytest.raises(AdapterError, match="pet_type"):
        LoraConfig.from_mindformers({"pet_config": {"pet_type": "ptuning2"}})
    with pytest.raises(AdapterError, match="'r' must be a positive int"):
        LoraConfig(r=0)


def test_merge_and_unload_gives_the_base_architecture(trained_lora, probe, tmp_path):
    model, _, _ = trained_lora
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(base_model(), tmp_path / "adapter")
    reference = logits(reloaded, probe)
    merge_and_unload(reloaded)
    reloaded.save_pretrained(tmp_path / "merged")
    assert all("lora" not in key for key in load_safetensors(tmp_path / "merged" / "model.safetensors"))
    np.testing.assert_allclose(logits(ChatGLM3ForConditionalGeneration.from_pretrained(
        tmp_path / "merged", ms_dtype=ms.float32), probe), reference, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------- P-Tuning v2
@pytest.fixture(scope="module", params=[False, True], ids=["embedding", "projection"])
def trained_prefix(request, batch):
    ms.set_seed(2)
    model = base_model(pre_seq_len=4, prefix_projection=request.param)
    rng = np.random.default_rng(0)
    for name, param in model.parameters_and_names():  # a prefix large enough to change what the model says
        if name.startswith("transformer.prefix_encoder."):
            write_parameter(param, rng.normal(0, 10 if "embedding" in name else 1, param.shape))
    before = snapshot(model)
    setup_ptuning(model)
    losses = train(model, batch, steps=2)
    return model, before, losses


def test_ptuning_trains_only_the_prefix_encoder(trained_prefix):
    model, before, (loss_before, loss_after) = trained_prefix
    trainable = sorted(p.name for p in model.trainable_params())
    expected = ["transformer.prefix_encoder.embedding.weight"]
    if model.config.prefix_projection:
        expected += [f"transformer.prefix_encoder.trans.{i}.{w}" for i in (0, 2) for w in ("bias", "weight")]
    assert trainable == sorted(expected)
    after = snapshot(model)
    for name, value in before.items():
        if name in expected:
            assert not np.array_equal(after[name], value), name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert loss_after < loss_before


def test_prefix_saves_and_loads_back(trained_prefix, tmp_path, probe):
    model, _, _ = trained_prefix
    reference = logits(model, probe)
    save_prefix(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "prefix_encoder.safetensors"]
    saved = load_safetensors(tmp_path / "prefix_encoder.safetensors")
    assert sorted(saved) == sorted(prefix_state_dict(model))
    assert all(k.startswith("transformer.prefix_encoder.") for k in saved)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pre_seq_len"] == 4 and config["prefix_projection"] == model.config.prefix_projection

    fresh = base_model(pre_seq_len=4, prefix_projection=model.config.prefix_projection)
    load_prefix(fresh, tmp_path)
    np.testing.assert_array_equal(logits(fresh, probe), reference)
    one_call = load_pretrained_with_adapter(TINY, tmp_path, ms_dtype=ms.float32)  # pre_seq_len from config.json
    np.testing.assert_array_equal(logits(one_call, probe), reference)

    other = base_model(pre_seq_len=4, prefix_projection=not model.config.prefix_projection)
    with pytest.raises(AdapterError, match="trained with pre_seq_len=4, prefix_projection="):
        load_prefix(other, tmp_path)


def test_upstream_prefix_only_pytorch_model_bin_loads(trained_prefix, tmp_path, probe):
    model, _, _ = trained_prefix
    save_prefix(model, tmp_path, safe_serialization=False)  # upstream ptuning's layout, torch.load-able
    assert (tmp_path / "pytorch_model.bin").is_file()
    (tmp_path / "config.json").unlink()  # upstream's loader reads only the weights
    fresh = base_model(pre_seq_len=4, prefix_projection=model.config.prefix_projection)
    assert sorted(load_prefix(fresh, tmp_path)) == sorted(prefix_state_dict(model))
    np.testing.assert_array_equal(logits(fresh, probe), logits(model, probe))


def test_generation_with_a_prefix_compiled_pynative_and_uncached_agree(trained_prefix, probe):
    model, _, _ = trained_prefix
    prompt = probe[2:3]
    compiled = model.generate(prompt, max_new_tokens=4, eos_token_id=[])
    assert model.generate(prompt, max_new_tokens=4, eos_token_id=[], compiled=False).tolist() == compiled.tolist()
    assert model.generate(prompt, max_new_tokens=4, eos_token_id=[], use_cache=False).tolist() == compiled.tolist()
    without_prefix = base_model().generate(prompt, max_new_tokens=4, eos_token_id=[], use_cache=False)
    assert without_prefix.tolist() != compiled.tolist()  # the prefix is really attended to


@pytest.fixture(scope="module")
def generating_prefix_model(probe):
    """A prefix model whose decoding engines are compiled, and a reference for a given prefix."""
    model = base_model(pre_seq_len=4)
    embedding = dict(model.parameters_and_names())["transformer.prefix_encoder.embedding.weight"]
    write_parameter(embedding, np.random.default_rng(3).normal(0, 10, embedding.shape))
    prompt = probe[2:3]
    model.generate(prompt, max_new_tokens=4, eos_token_id=[])
    return model, embedding, prompt


def _scramble_then_compare(model, embedding, prompt, seed):
    write_parameter(embedding, np.random.default_rng(seed).normal(0, 10, embedding.shape))
    return model.generate(prompt, max_new_tokens=4, eos_token_id=[], use_cache=False)


def test_load_prefix_after_generating_uses_the_new_prefix(generating_prefix_model, tmp_path):
    model, embedding, prompt = generating_prefix_model
    reference = _scramble_then_compare(model, embedding, prompt, seed=4)
    save_prefix(model, tmp_path)
    write_parameter(embedding, np.zeros(embedding.shape))
    load_prefix(model, tmp_path)  # drops the engines compiled for the old prefix
    assert model.generate(prompt, max_new_tokens=4, eos_token_id=[]).tolist() == reference.tolist()


def test_prefix_changed_in_place_between_generate_calls_is_used(generating_prefix_model):
    model, embedding, prompt = generating_prefix_model
    model.generate(prompt, max_new_tokens=4, eos_token_id=[])
    reference = _scramble_then_compare(model, embedding, prompt, seed=5)  # as an optimizer step would
    assert model.generate(prompt, max_new_tokens=4, eos_token_id=[]).tolist() == reference.tolist()


def test_prefix_errors_name_the_problem(tmp_path):
    with pytest.raises(AdapterError, match="no P-Tuning v2 prefix encoder.*pre_seq_len"):
        setup_ptuning(base_model())
    with pytest.raises(AdapterError, match="neither a LoRA adapter"):
        load_pretrained_with_adapter(TINY, tmp_path)
