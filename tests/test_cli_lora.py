"""``glm3 lora merge``: base + adapter -> a hub folder with the adapted logits; one-line errors."""

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.checkpoints.safetensors_io import load_safetensors
from glm3_mindspore.cli import main
from glm3_mindspore.peft import LoraConfig, get_peft_model, save_adapter
from conftest import TINY


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, expected):
    """A saved adapter with a non-zero update, and the base+adapter logits on a probe batch."""
    ms.set_seed(3)
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_4h_to_h"],
                                     init_lora_weights=False))
    folder = save_adapter(model, tmp_path_factory.mktemp("adapter"))
    ids = expected["batch_input_ids"]
    return folder, ids, model(ms.Tensor(ids.astype(np.int32))).logits.asnumpy()


def test_merge_writes_a_loadable_folder_with_the_adapted_logits(adapter, tmp_path, capsys):
    folder, ids, reference = adapter
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--base", str(TINY), "--adapter", str(folder), "--out", str(out),
                 "--dtype", "float32"]) == 0
    assert "into 4 layers" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not any("lora" in key for key in load_safetensors(out / "model.safetensors"))
    merged = ChatGLM3ForConditionalGeneration.from_pretrained(out, ms_dtype=ms.float32)
    assert not merged.loading_info.missing and not merged.loading_info.unexpected
    got = merged(ms.Tensor(ids.astype(np.int32))).logits.asnumpy()
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make_bad", ["missing", "prefix", "broken-json"])
def test_bad_adapter_is_one_clear_error_line(tmp_path, capsys, make_bad):
    bad = tmp_path / "bad"
    bad.mkdir()
    if make_bad == "prefix":
        (bad / "config.json").write_text('{"pre_seq_len": 4}')
    elif make_bad == "broken-json":
        (bad / "adapter_config.json").write_text("{not json")
    code = main(["lora", "merge", "--base", str(TINY), "--adapter", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and err.startswith("glm3 lora: error: ")
    assert str(bad) in err
    assert not (tmp_path / "out").exists()


def test_merge_refuses_a_non_empty_output(adapter, tmp_path, capsys):
    folder, _, _ = adapter
    (tmp_path / "keep.txt").write_text("user data")
    code = main(["lora", "merge", "--base", str(TINY), "--adapter", str(folder), "--out", str(tmp_path)])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
