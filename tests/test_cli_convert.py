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


def _tiny_folder_with(tmp_path, change):
    """The tiny model's folder with its weights edited by ``change(weights)``."""
    from glm3_mindspore.checkpoints.safetensors_io import save_safetensors

    folder = tmp_path / "edited"
    folder.mkdir()
    weights = load_safetensors(TINY / "model.safetensors")
    change(weights)
    save_safetensors(folder / "model.safetensors", weights)
    (folder / "config.json").write_text((TINY / "config.json").read_text())
    return folder


DENSE = "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update({DENSE: np.ascontiguousarray(w[DENSE].T)}), rf"{DENSE} checkpoint \(96, 32\) vs model \(32, 96\)"),
    (lambda w: w.update({DENSE: w[DENSE][:, :10].copy()}), rf"{DENSE} checkpoint \(32, 10\)"),
    (lambda w: w.pop(DENSE), f"missing from the checkpoint: {DENSE}"),
], ids=["transposed", "mis-shaped", "missing"])
def test_convert_refuses_tensors_that_do_not_fit_the_config_and_writes_nothing(tmp_path, capsys, change, message):
    # Before: exit 0 and a .ckpt of the bad tensors.
    source = _tiny_folder_with(tmp_path, change)
    for to, dst in (("ckpt", tmp_path / "out.ckpt"), ("safetensors", tmp_path / "out")):
        assert convert("--src", str(source), "--dst", str(dst), "--to", to) == 1
        err = capsys.readouterr().err
        assert err.startswith("glm3 convert: error: the weights of") and "Traceback" not in err
        assert __import__("re").search(message, err), err
        assert not dst.exists()


def test_failed_convert_to_safetensors_leaves_no_dst_folder(tmp_path, capsys, monkeypatch):
    # Before: the --dst folder was created, then left (empty) when writing failed.
    from glm3_mindspore.checkpoints import hub_layout

    def disk_full(path, tensors, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub_layout, "save_safetensors", disk_full)
    out = tmp_path / "out"
    assert convert("--src", str(TINY), "--dst", str(out), "--to", "safetensors") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists()
