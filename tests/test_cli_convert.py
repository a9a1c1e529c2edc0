"""``glm3 convert``: hub checkpoints <-> .ckpt / safetensors without torch, never clobbering user files."""

import json

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore.checkpoints.safetensors_io import load_safetensors, read_header
from glm3_mindspore.cli import main
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
from conftest import TINY, TINY_BIN


def convert(*args: str) -> int:
    return main(["convert", "--no-progress", *args])


def test_bin_to_mindformers_ckpt_and_back_to_safetensors(tmp_path):
    ckpt = tmp_path / "glm3_6b.ckpt"
    assert convert("--src", str(TINY_BIN), "--dst", str(ckpt), "--to", "ckpt") == 0
    names = ms.load_checkpoint(str(ckpt))
    assert "transformer.embedding.embedding_table" in names  # what MindFormers' glm3 models expect
    assert "transformer.embedding.word_embeddings.weight" not in names

    out = tmp_path / "hub"
    assert convert("--src", str(ckpt), "--config", str(TINY), "--dst", str(out), "--to", "safetensors",
                   "--max-shard-size", "2MB") == 0
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.model").is_file()
    original = load_safetensors(TINY / "model.safetensors")
    converted = {}
    for shard in sorted(out.glob("model-*.safetensors")):
        converted.update(load_safetensors(shard))
    assert sorted(converted) == sorted(original)
    for name, array in original.items():
        assert converted[name].dtype == array.dtype and np.array_equal(converted[name], array), name

    reloaded = ChatGLM3ForConditionalGeneration.from_pretrained(out, ms_dtype=ms.float32, progress=False)
    assert not reloaded.loading_info.missing and not reloaded.loading_info.unexpected


def test_dtype_cast_updates_config(tmp_path):
    out = tmp_path / "bf16"
    assert convert("--src", str(TINY), "--dst", str(out), "--to", "safetensors", "--dtype", "bf16") == 0
    header, _, _ = read_header(out / "model.safetensors")
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["model_type"] == "chatglm"


def test_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert convert("--src", str(TINY), "--dst", str(out), "--to", "safetensors") == 1
    assert "not empty" in capsys.readouterr().err and not (out / "model.safetensors").exists()

    ckpt = tmp_path / "existing.ckpt"
    ckpt.write_bytes(b"old")
    assert convert("--src", str(TINY), "--dst", str(ckpt), "--to", "ckpt") == 1
    assert ckpt.read_bytes() == b"old"
    assert convert("--src", str(TINY), "--dst", str(ckpt), "--to", "ckpt", "--overwrite") == 0
    assert ckpt.stat().st_size > 8_000_000

    assert convert("--src", str(TINY), "--dst", str(out), "--to", "safetensors", "--overwrite") == 0
    assert (out / "precious.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("args,message", [
    (["--to", "ckpt", "--dst", "out.safetensors"], "must be a .ckpt file"),
    (["--to", "ckpt", "--dst", "x.ckpt", "--src", "/definitely/missing/folder"], "neither an existing local path"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    argv = args if "--src" in args else ["--src", str(TINY), *args]
    assert convert(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("glm3 convert: error:") and message in err and "Traceback" not in err


def test_corrupt_source_is_reported_by_file_name(tmp_path, capsys):
    bad = tmp_path / "pytorch_model.bin"
    bad.write_bytes((TINY_BIN / "pytorch_model-00001-of-00002.bin").read_bytes()[:5000])
    assert convert("--src", str(bad), "--dst", str(tmp_path / "o.ckpt"), "--to", "ckpt") == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated or corrupt" in err
    assert not (tmp_path / "o.ckpt").exists()
