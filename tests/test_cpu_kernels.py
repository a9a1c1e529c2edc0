"""Our CPU kernels: small-batch linear exact for every dtype pair, bf16 row gather exact, used where they should be, built safely."""

import logging
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.modeling import cpu_kernels as sbl
from glm3_mindspore.modeling.layers import Embedding, Linear
from conftest import TINY

CHAT_STOP = [2, 64795, 64797]

pytestmark = pytest.mark.skipif(sbl.library() is None, reason="no C++ compiler: the kernels are not built")


def _kernel():
    return sbl.small_batch_linear()


@ms.jit
def _compiled(op, x, w):
    return op(x, w)


@ms.jit
def _compiled_one(op, x):
    return op(x)


def _reference(x: Tensor, w: Tensor) -> np.ndarray:
    return x.astype(ms.float32).asnumpy().astype(np.float64) @ w.astype(ms.float32).asnumpy().astype(np.float64).T


@pytest.mark.parametrize("x_dtype,w_dtype", [
    (ms.float32, ms.float32), (ms.float32, ms.float16), (ms.float32, ms.bfloat16),
    (ms.float16, ms.float16), (ms.float16, ms.float32), (ms.float16, ms.bfloat16),
])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_kernel_matches_float64_products_for_every_dtype_pair(x_dtype, w_dtype, rows):
    rng = np.random.default_rng(rows)
    # 37 output features and 70 inputs: neither a multiple of the 4- or 8-row blocks nor of the 16-lane vectors
    x = Tensor(rng.standard_normal((rows, 70)).astype(np.float32)).astype(x_dtype)
    w = Tensor(rng.standard_normal((37, 70)).astype(np.float32)).astype(w_dtype)
    out = _kernel()(x, w)
    assert out.dtype == x_dtype and out.shape == (rows, 37)
    reference = _reference(x, w)
    # fp32 results: summation-order rounding only; fp16 results: one rounding of the fp32 sum to fp16
    tolerance = 2e-5 if x_dtype == ms.float32 else 1e-3
    scale = np.abs(reference).max()
    assert np.abs(out.astype(ms.float32).asnumpy() - reference).max() <= tolerance * scale
    np.testing.assert_array_equal(_compiled(_kernel(), x, w).asnumpy(), out.asnumpy())  # graph == PyNative


def test_kernel_handles_wide_and_long_weights():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 4096)).astype(np.float32))
    w = Tensor(rng.standard_normal((2053, 4096)).astype(np.float32))  # two threads' shares plus a ragged tail
    out = _compiled(_kernel(), x, w).asnumpy()
    assert np.abs(out - _reference(x, w)).max() <= 2e-5 * np.abs(_reference(x, w)).max()


def test_linear_uses_the_kernel_for_few_rows_in_inference_only():
    layer = Linear(70, 37, bias=True)
    layer.bias.set_data(Tensor(np.linspace(-1, 1, 37, dtype=np.float32)))
    few = Tensor(np.random.default_rng(1).standard_normal((2, 3, 70)).astype(np.float32))
    many = Tensor(np.random.default_rng(2).standard_normal((3, 3, 70)).astype(np.float32))
    assert layer.uses_small_batch_kernel(few.reshape(-1, 70))
    assert not layer.uses_small_batch_kernel(many.reshape(-1, 70))  # 9 rows > MAX_ROWS: MatMul
    with_kernel = layer(few).asnumpy()
    layer.set_train(True)
    assert not layer.uses_small_batch_kernel(few.reshape(-1, 70))  # training graphs keep MatMul
    with_matmul = layer(few).asnumpy()
    np.testing.assert_allclose(with_kernel, with_matmul, rtol=0, atol=2e-6)


def test_gradients_through_the_kernel_equal_matmul_gradients():
    layer = Linear(70, 37)
    x = Tensor(np.random.default_rng(3).standard_normal((4, 70)).astype(np.float32))
    grad = ms.grad(lambda inputs: (layer(inputs) ** 2).sum(), grad_position=0, weights=layer.trainable_params())
    dx_kernel, (dw_kernel,) = grad(x)
    layer.small_batch_matmul = None
    dx_matmul, (dw_matmul,) = grad(x)
    np.testing.assert_allclose(dx_kernel.asnumpy(), dx_matmul.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw_kernel.asnumpy(), dw_matmul.asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [ms.bfloat16, ms.float16, ms.float32])
def test_row_gather_copies_table_rows_exactly_and_refuses_unknown_ids(dtype):
    table = Tensor(np.random.default_rng(4).standard_normal((50, 33)).astype(np.float32)).astype(dtype)
    ids = Tensor(np.array([[3, 0, 49], [7, 7, 1]], np.int32))
    rows = _compiled(sbl.gather_rows(), table, ids)
    assert rows.dtype == dtype and rows.shape == (2, 3, 33)
    expected_rows = table.astype(ms.float32).asnumpy()[ids.asnumpy()]
    np.testing.assert_array_equal(rows.astype(ms.float32).asnumpy(), expected_rows)
    with pytest.raises(RuntimeError):
        sbl.gather_rows()(table, Tensor(np.array([[50]], np.int32))).asnumpy()


@pytest.mark.parametrize("dtype", [ms.bfloat16, ms.float16])
def test_widening_to_float32_is_exact(dtype):
    values = Tensor(np.random.default_rng(5).standard_normal((3, 1037)).astype(np.float32)).astype(dtype)
    widened = _compiled_one(sbl.widen_to_float32(), values)
    assert widened.dtype == ms.float32 and widened.shape == (3, 1037)
    np.testing.assert_array_equal(widened.asnumpy(), values.astype(ms.float32).asnumpy())


def test_bf16_prompt_logits_are_the_same_with_the_widening_kernel(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16")
    ids = Tensor(expected["chat_input_ids"].astype(np.int32))
    positions = Tensor(np.arange(ids.shape[1], dtype=np.int32)[None])
    mask = Tensor(np.ones(ids.shape, np.int32))
    widened = model(ids, positions, mask).logits.asnumpy()
    for _, cell in model.cells_and_names():
        if isinstance(cell, Linear):
            assert cell.widen is not None
            cell.widen = None
    np.testing.assert_array_equal(model(ids, positions, mask).logits.asnumpy(), widened)


def test_bf16_embeddings_are_looked_up_inside_the_decode_graph(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16")
    embedding = model.transformer.embedding.word_embeddings
    assert embedding.compiles_in_inference
    prompt = expected["chat_input_ids"]
    compiled = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    embedding.gather_rows = None  # the op-by-op lookup outside the graph: same tokens
    model.clear_generation_cache()
    assert model.generate(prompt, max_new_tokens=6, eos_token_id=[]).tolist() == compiled.tolist()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_upstream_greedy_tokens_with_and_without_the_kernel(expected, compiled):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    linears = [cell for _, cell in model.cells_and_names() if isinstance(cell, Linear)]
    assert linears and all(cell.small_batch_matmul is not None for cell in linears)
    prompt = expected["chat_input_ids"]
    for _ in ("kernel", "matmul"):
        out = model.generate(prompt, max_new_tokens=24, eos_token_id=CHAT_STOP, compiled=compiled)
        assert out[:, prompt.shape[1]:].tolist() == expected["chat_greedy_ids"].tolist()
        for cell in linears:
            cell.small_batch_matmul = None
        model.clear_generation_cache()


def test_build_is_cached_per_source_compiler_and_cpu(tmp_path):
    compiler = sbl.find_compiler()
    first = sbl.build_library(compiler, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert sbl.build_library(compiler, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left behind


def test_a_failing_compiler_is_reported_with_its_output(tmp_path):
    fake = tmp_path / "broken-g++"
    fake.write_text("#!/bin/sh\necho 'fatal: no room' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(sbl.KernelBuildError, match="no room"):
        sbl.build_library(str(fake), tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_without_a_compiler_or_when_switched_off_layers_use_matmul(monkeypatch, caplog):
    try:
        monkeypatch.setattr(sbl, "find_compiler", lambda: None)
        sbl.library.cache_clear()
        with caplog.at_level(logging.WARNING, logger=sbl.__name__):
            assert sbl.small_batch_linear() is None and sbl.gather_rows() is None
        assert "no C++ compiler" in caplog.text
        assert Linear(8, 4).small_batch_matmul is None
        assert not Embedding(8, 4, dtype=ms.bfloat16).compiles_in_inference
        monkeypatch.undo()
        monkeypatch.setitem(os.environ, sbl.SWITCH, "0")
        sbl.library.cache_clear()
        assert sbl.small_batch_linear() is None
    finally:
        monkeypatch.undo()
        sbl.library.cache_clear()
    assert sbl.small_batch_linear() is not None
