"""Checkpoint formats: safetensors, torch pickles (read safely, no torch), MindSpore .ckpt; errors name the file."""

import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore.common.np_dtype import bfloat16

from glm3_mindspore.checkpoints import CheckpointError, iter_tensors, resolve_weight_files, write_weights
from glm3_mindspore.checkpoints.mindspore_ckpt import (
    from_mindformers_name, iter_ckpt, load_ckpt, save_ckpt, to_mindformers_name)
from glm3_mindspore.checkpoints.safetensors_io import iter_safetensors, load_safetensors, save_safetensors
from glm3_mindspore.checkpoints.torch_pickle import iter_torch_file, save_torch_file
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
from glm3_mindspore.modeling.pretrained import WeightLoadingError
from conftest import FIXTURES, TINY, TINY_BIN, run_measured

TORCH_PICKLES = FIXTURES / "torch_pickles"
EMBEDDING = "transformer.embedding.word_embeddings.weight"


def _bits(array):
    return np.ascontiguousarray(array).view(np.uint8)


def assert_same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(_bits(a[key]), _bits(b[key])), key


def params_of(model) -> dict:
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}


@pytest.fixture(scope="module")
def hub_weights() -> dict:
    return load_safetensors(TINY / "model.safetensors")


@pytest.fixture(scope="module")
def tiny_model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32, progress=False)


def _mixed_arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((4,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(np.float32).astype(bfloat16),
        "i64": np.arange(4, dtype=np.int64) - 2,
    }


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_keeps_bf16_bits(tmp_path):
    arrays = _mixed_arrays()
    save_safetensors(tmp_path / "m.safetensors", arrays)
    assert_same_bits(arrays, load_safetensors(tmp_path / "m.safetensors"))


def test_truncated_safetensors_names_the_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    data = (TINY / "model.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{bad}.*truncated"):
        list(iter_safetensors(bad))
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=f"{bad}.*corrupt"):
        list(iter_safetensors(bad))


# ----------------------------------------------------------------------------- shards and index
def test_sharded_write_has_index_and_reads_back(tmp_path, hub_weights):
    files = write_weights(tmp_path, hub_weights.items(), max_shard_size="1MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards[0].endswith("-of-%05d.safetensors" % len(shards))
    assert set(index["weight_map"]) == set(hub_weights)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in hub_weights.values())
    assert resolve_weight_files(tmp_path) == [tmp_path / s for s in shards]
    assert_same_bits(hub_weights, dict(iter_tensors(resolve_weight_files(tmp_path))))
    assert len(files) == len(shards) + 1


def test_resaving_removes_stale_shards_and_index(tmp_path, hub_weights):
    write_weights(tmp_path, hub_weights.items(), max_shard_size="1MB")
    (tmp_path / "notes.txt").write_text("keep me")
    write_weights(tmp_path, hub_weights.items())  # one file now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "notes.txt"]
    assert_same_bits(hub_weights, dict(iter_tensors(resolve_weight_files(tmp_path))))


def test_index_pointing_outside_the_folder_is_refused(tmp_path):
    index = {"weight_map": {"a": "../evil.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        resolve_weight_files(tmp_path)


# ----------------------------------------------------------------------------- torch pickles
def test_bin_shards_equal_safetensors_bit_for_bit(hub_weights):
    from_bin = dict(iter_tensors(resolve_weight_files(TINY_BIN)))
    assert_same_bits(hub_weights, from_bin)


def test_bin_and_safetensors_loads_give_identical_parameters(tiny_model):
    from_bin = ChatGLM3ForConditionalGeneration.from_pretrained(TINY_BIN, ms_dtype=ms.float32, progress=False)
    assert_same_bits(params_of(tiny_model), params_of(from_bin))


def test_torch_written_pickle_with_strides_offsets_parameters_and_shared_storage():
    # written by real torch 2.13 (see tests/fixtures/torch_pickles/README.md)
    got = dict(iter_torch_file(TORCH_PICKLES / "various.bin"))
    np.testing.assert_array_equal(got["transposed"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    assert got["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(got["offset"], [2.0, 3.0, 4.0])
    assert got["parameter"].dtype == bfloat16
    np.testing.assert_array_equal(got["parameter"].astype(np.float32), [1.5, -2.0, 3.25])
    np.testing.assert_array_equal(got["shared_whole"], np.arange(6, dtype=np.float16))
    np.testing.assert_array_equal(got["shared_row"], [3, 4, 5])
    assert got["scalar"].shape == () and int(got["scalar"]) == 7
    np.testing.assert_array_equal(got["mask"], [True, False])


def test_torch_file_writer_round_trip(tmp_path):
    arrays = {**_mixed_arrays(), "scalar": np.array(3.5, dtype=np.float32), "empty": np.zeros((0, 4), np.float16)}
    save_torch_file(tmp_path / "w.bin", arrays)
    assert_same_bits(arrays, dict(iter_torch_file(tmp_path / "w.bin")))
    with zipfile.ZipFile(tmp_path / "w.bin") as archive:
        assert {"archive/data.pkl", "archive/byteorder", "archive/version"} <= set(archive.namelist())
        raw = (tmp_path / "w.bin").read_bytes()
        for info in archive.infolist():  # storages stored uncompressed and 64-byte aligned (torch mmap)
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def _zip_with_pickle(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


class _SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    canary = tmp_path / "canary"
    payload = pickle.dumps({"w": _SystemCall(f"touch {canary}")}, protocol=2)  # dumping runs nothing
    bad = tmp_path / "pytorch_model.bin"
    _zip_with_pickle(bad, payload)
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os|nt)\.system.*only tensors"):
        list(iter_torch_file(bad))
    assert not canary.exists()
    with pytest.raises(CheckpointError, match=str(bad)):
        ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path, config=_tiny_config(), progress=False)
    assert not canary.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch", "load"), ("numpy", "frombuffer"),
                                         ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_any_other_global_is_refused(tmp_path, module, name):
    bad = tmp_path / "x.bin"
    _zip_with_pickle(bad, b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(CheckpointError, match=f"refusing to load {module}.{name}"):
        list(iter_torch_file(bad))


def test_legacy_and_corrupt_torch_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="legacy.*torch>=1.6.*safetensors"):
        list(iter_torch_file(TORCH_PICKLES / "legacy.bin"))
    truncated = tmp_path / "pytorch_model-00001-of-00002.bin"
    data = (TINY_BIN / "pytorch_model-00001-of-00002.bin").read_bytes()
    truncated.write_bytes(data[: len(data) - 2000])
    with pytest.raises(CheckpointError, match=f"{truncated}: truncated or corrupt"):
        list(iter_torch_file(truncated))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{garbage}: not a torch checkpoint"):
        list(iter_torch_file(garbage))
    broken = tmp_path / "broken.bin"
    _zip_with_pickle(broken, b"\x80\x02}q\x00(X\x01")
    with pytest.raises(CheckpointError, match=f"{broken}: corrupt data.pkl"):
        list(iter_torch_file(broken))


def _repack_with_inflating_storage(source: Path, target: Path, inflated_bytes: int) -> None:
    """``source`` with its first storage replaced by a deflated entry of ``inflated_bytes`` zeros."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as repacked:
        for info in original.infolist():
            if not info.filename.endswith("/data/0"):
                repacked.writestr(info, original.read(info))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with repacked.open(entry, "w") as handle:
                for _ in range(inflated_bytes // len(chunk)):
                    handle.write(chunk)


def test_torch_file_with_a_compressed_entry_is_refused_before_it_is_inflated(tmp_path):
    # Before: the 200 MB the entry claims were inflated into memory for a 4-float tensor.
    small = tmp_path / "small.bin"
    save_torch_file(small, {"w": np.zeros(4, np.float32)})
    bomb = tmp_path / "pytorch_model.bin"
    _repack_with_inflating_storage(small, bomb, 200 << 20)
    assert bomb.stat().st_size < 1 << 20
    read = run_measured("from glm3_mindspore.checkpoints.torch_pickle import iter_torch_file",
                        "list(iter_torch_file(sys.argv[1]))", str(bomb))
    assert read["result"].startswith(f"CheckpointError: {bomb}: zip entry 'archive/data/0' is compressed")
    assert read["grown_mb"] < 50


# ----------------------------------------------------------------------------- save -> load
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_save_pretrained_then_load_is_bit_identical(tmp_path, tiny_model, safe):
    tiny_model.save_pretrained(tmp_path, max_shard_size="2MB", safe_serialization=safe)
    pattern = "model-*.safetensors" if safe else "pytorch_model-*.bin"
    assert len(list(tmp_path.glob(pattern))) > 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["model_type"] == "chatglm"
    loaded = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path, ms_dtype=ms.float32, progress=False)
    assert_same_bits(params_of(tiny_model), params_of(loaded))
    assert not loaded.loading_info.missing and not loaded.loading_info.unexpected


def test_bf16_save_load_round_trip(tmp_path):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16", progress=False)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path, ms_dtype="bfloat16", progress=False)
    assert_same_bits(params_of(model), params_of(loaded))


# ----------------------------------------------------------------------------- MindSpore .ckpt
def test_mindformers_names():
    for spelling in ("transformer.embedding.embedding_table", "transformer.embedding.embedding_weight",
                     "transformer.embedding.word_embeddings.embedding_table"):
        assert from_mindformers_name(spelling) == EMBEDDING
    assert to_mindformers_name(EMBEDDING) == "transformer.embedding.embedding_table"
    other = "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"
    assert from_mindformers_name(other) == to_mindformers_name(other) == other


def test_ckpt_export_reads_in_mindspore_with_mindformers_names(tmp_path, hub_weights, monkeypatch):
    import glm3_mindspore.checkpoints.mindspore_ckpt as ckpt_module

    monkeypatch.setattr(ckpt_module, "_SLICE_BYTES", 100_000)  # big tensors split into records, as MindSpore does
    path = tmp_path / "glm3.ckpt"
    save_ckpt(path, hub_weights.items())
    by_mindspore = ms.load_checkpoint(str(path))
    assert "transformer.embedding.embedding_table" in by_mindspore and EMBEDDING not in by_mindspore
    np.testing.assert_array_equal(by_mindspore["transformer.embedding.embedding_table"].asnumpy(),
                                  hub_weights[EMBEDDING])
    assert_same_bits(hub_weights, load_ckpt(path))


def test_mindspore_training_ckpt_loads_and_skips_optimizer_state(tmp_path, hub_weights, tiny_model):
    entries = []
    for name, array in hub_weights.items():
        name = to_mindformers_name(name)
        entries.append({"name": name, "data": ms.Tensor(array)})
        entries.append({"name": f"adam_m.{name}", "data": ms.Tensor(np.zeros(array.shape, np.float32))})
    for name in ("global_step", "learning_rate", "scale_sense", "epoch_num", "step_num"):
        entries.append({"name": name, "data": ms.Tensor(np.array([1], np.int32))})
    path = tmp_path / "glm3_6b.ckpt"
    ms.save_checkpoint(entries, str(path), crc_check=True)

    skipped = []
    assert_same_bits(hub_weights, dict(iter_ckpt(path, skipped)))
    assert "global_step" in skipped and f"adam_m.{EMBEDDING.replace('word_embeddings.weight', 'embedding_table')}" \
        in skipped
    model = ChatGLM3ForConditionalGeneration.from_pretrained(path, config=tiny_model.config, ms_dtype=ms.float32,
                                                             progress=False)
    assert not model.loading_info.unexpected and not model.loading_info.missing
    assert_same_bits(params_of(tiny_model), params_of(model))


def test_corrupt_ckpt_names_the_file(tmp_path, hub_weights):
    path = tmp_path / "model.ckpt"
    save_ckpt(path, hub_weights.items())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=f"{path}: corrupt, truncated"):
        list(iter_ckpt(path))
    path.write_bytes(b"\xff" * 100)
    with pytest.raises(CheckpointError, match=str(path)):
        list(iter_ckpt(path))


# ----------------------------------------------------------------------------- reporting
def _tiny_config():
    from glm3_mindspore import ChatGLM3Config

    return ChatGLM3Config.from_pretrained(TINY)


def test_missing_unexpected_and_mismatched_are_reported_by_name(hub_weights):
    weights = dict(hub_weights)
    del weights["transformer.encoder.final_layernorm.weight"]
    weights["transformer.extra.weight"] = np.zeros(3, np.float16)
    model = ChatGLM3ForConditionalGeneration(_tiny_config())
    with pytest.raises(WeightLoadingError, match="missing from the checkpoint: transformer.encoder.final_layernorm"):
        model.load_weights(weights)
    report = model.load_weights(weights, allow_missing=["transformer.encoder.final_layernorm.*"])
    assert report.missing == ["transformer.encoder.final_layernorm.weight"]
    assert report.unexpected == ["transformer.extra.weight"]
    assert report.ignored == ["transformer.rotary_pos_emb.inv_freq"]
    assert "transformer.extra.weight" in report.summary()
    with pytest.raises(WeightLoadingError, match="missing.*final_layernorm"):
        model.load_weights(weights, strict=True, allow_missing=True)

    weights = dict(hub_weights)
    weights["transformer.output_layer.weight"] = np.zeros((10, 32), np.float16)
    with pytest.raises(WeightLoadingError, match=r"transformer.output_layer.weight checkpoint \(10, 32\)"):
        model.load_weights(weights)


def _tiny_folder_without(tmp_path, hub_weights, name):
    weights = {k: v for k, v in hub_weights.items() if k != name}
    save_safetensors(tmp_path / "model.safetensors", weights)
    shutil.copy(TINY / "config.json", tmp_path)
    return tmp_path


def test_from_pretrained_refuses_a_checkpoint_missing_a_tensor_naming_it(tmp_path, hub_weights):
    # Before: loaded with the weight at its initial value and only a warning.
    folder = _tiny_folder_without(tmp_path, hub_weights, "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight")
    with pytest.raises(WeightLoadingError, match=r"missing from the checkpoint: "
                                                 r"transformer.encoder.layers.1.mlp.dense_4h_to_h.weight \(pass allow_missing"):
        ChatGLM3ForConditionalGeneration.from_pretrained(folder, progress=False)


def test_from_pretrained_allow_missing_initialises_what_the_checkpoint_lacks(tmp_path, hub_weights):
    folder = _tiny_folder_without(tmp_path, hub_weights, "transformer.encoder.final_layernorm.weight")
    for allow in (["transformer.encoder.final_layernorm.weight"], ["*.final_layernorm.*"], True):
        model = ChatGLM3ForConditionalGeneration.from_pretrained(folder, ms_dtype=ms.float32, progress=False,
                                                                 allow_missing=allow)
        assert model.loading_info.missing == ["transformer.encoder.final_layernorm.weight"]
    norm = dict(model.parameters_and_names())["transformer.encoder.final_layernorm.weight"]
    np.testing.assert_array_equal(norm.asnumpy(), np.ones(32, np.float32))  # its initial value, not garbage


def test_heads_one_trains_may_be_missing_without_an_opt_out():
    from glm3_mindspore.modeling import ChatGLM3ForSequenceClassification

    classifier = ChatGLM3ForSequenceClassification.from_pretrained(TINY, num_labels=3, progress=False)
    assert classifier.loading_info.missing == ["classifier_head.weight", "classifier_head.bias"]
    ptuning = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, pre_seq_len=4, progress=False)
    assert ptuning.loading_info.missing == ["transformer.prefix_encoder.embedding.weight"]


def test_config_that_does_not_fit_the_checkpoint_is_refused_before_the_network_is_built(tmp_path):
    # Before: num_layers 1000000 beside a 2-layer checkpoint built for minutes and kept growing.
    import time

    from glm3_mindspore import ConfigError

    shutil.copy(TINY / "model.safetensors", tmp_path)
    config = json.loads((TINY / "config.json").read_text())
    for field, value, error, message in [
        ("num_layers", 1_000_000, ConfigError, "more than the sanity bound"),
        ("num_layers", 500, WeightLoadingError, r"num_layers=500 but the checkpoint holds 2 \(layers 0..1\)"),
        ("hidden_size", 4096, WeightLoadingError, r"shape mismatch: transformer.embedding.word_embeddings.weight "
                                                  r"checkpoint \(\d+, 32\) vs model \(\d+, 4096\)"),
        ("ffn_hidden_size", 64, WeightLoadingError, "dense_h_to_4h.weight checkpoint"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
        start = time.perf_counter()
        with pytest.raises(error, match=message):
            ChatGLM3ForConditionalGeneration.from_pretrained(tmp_path, progress=False)
        assert time.perf_counter() - start < 10, field


def test_from_pretrained_loads_a_mindformers_ckpt_file(tmp_path, hub_weights, tiny_model):
    # Before: "not a UTF-8 text file" (the .ckpt was read as config.json).
    ckpt = tmp_path / "glm3_tiny.ckpt"
    save_ckpt(ckpt, hub_weights.items(), names="mindformers")
    with pytest.raises(WeightLoadingError, match="num_layers=28 but the checkpoint holds 2.*pass the config"):
        ChatGLM3ForConditionalGeneration.from_pretrained(ckpt, progress=False)  # no config: ChatGLM3-6B assumed
    by_config = ChatGLM3ForConditionalGeneration.from_pretrained(ckpt, config=_tiny_config(), ms_dtype=ms.float32)
    shutil.copy(TINY / "config.json", tmp_path)
    beside = ChatGLM3ForConditionalGeneration.from_pretrained(ckpt, ms_dtype=ms.float32, progress=False)
    from glm3_mindspore import AutoModel

    auto = AutoModel.from_pretrained(ckpt, ms_dtype=ms.float32, progress=False)
    for model in (by_config, beside, auto):
        assert_same_bits(params_of(model), params_of(tiny_model))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_save_pretrained_writes_files_with_the_mode_the_umask_gives(tmp_path, tiny_model, tokenizer, umask):
    # Before: every file was 0600 (the temporary file's), unreadable by a server running as another user.
    import stat

    previous = os.umask(umask)
    try:
        tiny_model.save_pretrained(tmp_path / "st", max_shard_size="2MB")
        tiny_model.save_pretrained(tmp_path / "bin", safe_serialization=False)
        tokenizer.save_pretrained(tmp_path / "st")
        save_ckpt(tmp_path / "model.ckpt", tiny_model.named_weights())
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 6
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_safetensors_files_round_trip_with_the_reference_package(tmp_path):
    """Our writer's files read in the ``safetensors`` package and its files read here, tensor for tensor."""
    reference = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32), "b.half": rng.normal(size=(7,)).astype(np.float16),
               "c.ids": np.arange(6, dtype=np.int64).reshape(2, 3), "d.scalar": np.array(2.5, np.float32)}
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, tensors)
    read_there = reference.load_file(str(ours))
    theirs = tmp_path / "theirs.safetensors"
    reference.save_file(tensors, str(theirs))
    read_here = load_safetensors(theirs)
    for name, array in tensors.items():
        for copy in (read_there[name], read_here[name]):
            assert copy.dtype == array.dtype and copy.shape == array.shape, name
            np.testing.assert_array_equal(copy, array, err_msg=name)


def test_transformers_dtype_spellings_choose_the_parameter_dtype_and_conflicts_are_refused():
    for spelling in ("dtype", "torch_dtype", "ms_dtype"):
        model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, progress=False, **{spelling: "bfloat16"})
        assert model.param_dtype == ms.bfloat16, spelling
        assert "dtype" not in model.config.to_dict()  # not kept as a config override
    with pytest.raises(ValueError, match="conflicting parameter dtypes: dtype='float16', ms_dtype='bfloat16'"):
        ChatGLM3ForConditionalGeneration.from_pretrained(TINY, progress=False, ms_dtype="bfloat16", dtype="float16")
