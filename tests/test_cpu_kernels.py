"""Our CPU kernels: every weight format exact against float64 on both product paths, used where they should be, built safely."""

import ctypes
import logging
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.modeling import cpu_kernels
from glm3_mindspore.modeling.cpu_kernels import build
from glm3_mindspore.modeling.layers import Embedding, Linear, QuantizedLinear
from glm3_mindspore.quantization import dequantize, quantize
from conftest import TINY

CHAT_STOP = [2, 64795, 64797]

needs_kernels = pytest.mark.skipif(shutil.which("g++") is None and not os.environ.get("CXX"),
                                   reason="no C++ compiler on this machine: the kernels cannot be built")

STREAMING = cpu_kernels.Tuning(stream_max_rows=64, rows_per_block_one=4)
BLOCKED = cpu_kernels.Tuning(stream_max_rows=0, rows_per_block_one=4)


@pytest.fixture
def path_choice():
    """Sets the product path for a test and restores the measured choices afterwards."""
    measured = cpu_kernels.tuning()
    yield cpu_kernels.configure
    cpu_kernels.configure(measured)


@ms.jit
def _compiled(op, *args):
    return op(*args)


DENSE = ("float32", "float16", "bfloat16")


def _op(fmt: str):
    return cpu_kernels.linear("dense" if fmt in DENSE else fmt.split("-")[0])


def _weights(fmt: str, rows: int, cols: int, seed: int):
    """``(kernel inputs after x, float64 reference weight)`` for a weight format."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    if fmt in DENSE:
        tensor = Tensor(w).astype(getattr(ms, fmt))
        return (tensor,), tensor.astype(ms.float32).asnumpy().astype(np.float64)
    bits, group = (8, 128) if fmt == "int8" else (4, int(fmt.split("-g")[1]))
    q, scale = quantize(bits, w, group)
    return (Tensor(q), Tensor(scale)), dequantize(bits, q, scale, cols).astype(np.float64)


FORMATS = ["float32", "float16", "bfloat16", "int8", "int4-g16", "int4-g32"]


def _int8_activations(x: np.ndarray, width: int) -> np.ndarray:
    """``x`` as the int4 decoding product sees it: int8 per block of 32 (scale max|x| / 127), zero-padded."""
    padded = np.zeros((x.shape[0], width), np.float32)
    padded[:, :x.shape[1]] = x
    blocks = padded.reshape(x.shape[0], -1, 32)
    scale = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)[..., None]
    values = np.where(scale > 0, np.rint(blocks / np.where(scale > 0, scale, 1)), 0)
    return (values * scale).reshape(x.shape[0], width)


@needs_kernels
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("x_dtype", [ms.float32, ms.float16], ids=["x32", "x16"])
@pytest.mark.parametrize("path", [STREAMING, BLOCKED], ids=["streaming", "blocked"])
def test_every_weight_format_matches_float64_products_on_both_paths(fmt, x_dtype, path, path_choice):
    path_choice(path)
    op = _op(fmt)
    # 37 outputs x 70 inputs: no multiple of the tiles, the 8/16 lanes, nor (for int4) of the group
    weight_inputs, reference_w = _weights(fmt, 37, 70, seed=len(fmt))
    for rows in (1, 2, 3, 5, 8, 13):
        x = Tensor(np.random.default_rng(rows).standard_normal((rows, 70)).astype(np.float32)).astype(x_dtype)
        out = op(x, *weight_inputs)
        assert out.dtype == x_dtype and out.shape == (rows, 37)
        reference = x.astype(ms.float32).asnumpy().astype(np.float64) @ reference_w.T
        # fp32 results: summation-order rounding only; fp16 results: one rounding of the fp32 sum to fp16
        tolerance = 2e-6 if x_dtype == ms.float32 else 1e-3
        assert np.abs(out.astype(ms.float32).asnumpy() - reference).max() <= tolerance * np.abs(reference).max()
        np.testing.assert_array_equal(_compiled(op, x, *weight_inputs).asnumpy(), out.asnumpy())  # graph == PyNative


@needs_kernels
@pytest.mark.parametrize("group", [64, 128])
def test_int4_decoding_multiplies_int8_activations_exactly(group, path_choice):
    """Groups of a multiple of 64 decode with int8 activations (blocks of 32): exact against that arithmetic."""
    path_choice(STREAMING)
    w = np.random.default_rng(group).standard_normal((37, 200)).astype(np.float32)
    q, scale = quantize(4, w, group)
    width = q.shape[1] * 2
    weight = dequantize(4, q, scale, width).astype(np.float64)
    for rows in (1, 2, 5, 8):
        x = np.random.default_rng(rows).standard_normal((rows, 200)).astype(np.float32)
        out = cpu_kernels.linear("int4")(Tensor(x), Tensor(q), Tensor(scale)).asnumpy()
        exact = _int8_activations(x, width).astype(np.float64) @ weight.T
        assert np.abs(out - exact).max() <= 2e-6 * np.abs(exact).max()
        unquantized = x.astype(np.float64) @ weight[:, :200].T  # what int8 activations cost
        assert np.abs(out - unquantized).max() <= 0.02 * np.abs(unquantized).max()


@needs_kernels
@pytest.mark.parametrize("fmt", ["bfloat16", "int8", "int4-g32"])
@pytest.mark.parametrize("path", [STREAMING, BLOCKED], ids=["streaming", "blocked"])
def test_wide_weights_split_over_threads_with_a_ragged_tail(fmt, path, path_choice):
    path_choice(path)
    op = _op(fmt)
    weight_inputs, reference_w = _weights(fmt, 2053, 1000, seed=3)  # two threads' shares plus a ragged tail
    x = Tensor(np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32))
    reference = x.asnumpy().astype(np.float64) @ reference_w.T
    assert np.abs(op(x, *weight_inputs).asnumpy() - reference).max() <= 5e-6 * np.abs(reference).max()


@needs_kernels
def test_avx512_hosts_get_the_whole_512_bit_loads_and_tiles():
    """Where the CPU has AVX-512 the build uses it: once a preprocessor test on a C++ constant
    compiled it out, and 16-bit and int8 weights loaded 4x slower without any test failing."""
    if "avx512f" not in build.host_identity().split():
        pytest.skip("this CPU has no AVX-512")
    library = build.open_library(cpu_kernels.library())
    assert (library.glm3_vector_lanes(), library.glm3_avx512()) == (16, 1)


@needs_kernels
def test_vnni_hosts_multiply_int4_groups_of_128_a_whole_cache_line_at_a_time():
    """With AVX-512 VNNI, int4 groups of 128 (the default) take the 128-weight vpdpbusd product (faster
    than the AVX2 one, which an AVX-512 build would otherwise run silently); groups of 64 the AVX2 one."""
    if not {"avx512_vnni", "avx512bw"} <= set(build.host_identity().split()):
        pytest.skip("this CPU has no AVX-512 VNNI")
    library = build.open_library(cpu_kernels.library())
    library.glm3_int4_span.argtypes = [ctypes.c_int64]
    assert (library.glm3_int4_span(128), library.glm3_int4_span(64), library.glm3_int4_span(32)) == (128, 64, 0)


@needs_kernels
def test_sixteen_lane_build_gives_the_same_products(tmp_path):
    """The AVX-512 hosts' 16-lane code, built here with GLM3_VL=16 (emulated on narrower vectors)."""
    path = build.build_library(build.find_compiler(), tmp_path, build.COMPILE_FLAGS + ("-DGLM3_VL=16",))
    assert build.open_library(path).glm3_vector_lanes() == 16
    x = Tensor(np.random.default_rng(7).standard_normal((5, 200)).astype(np.float32))
    for fmt, entry in (("float16", "LinearDense"), ("bfloat16", "LinearDense"), ("int8", "LinearInt8"),
                       ("int4-g32", "LinearInt4")):  # (int4 in groups of 64 and more: the same AVX2 code)
        weight_inputs, reference_w = _weights(fmt, 41, 200, seed=11)
        op = ops.Custom(f"{path}:{entry}", out_shape=lambda x, *w: (x[0], w[0][0]),
                        out_dtype=lambda x, *w: x, func_type="aot")
        reference = x.asnumpy().astype(np.float64) @ reference_w.T
        assert np.abs(op(x, *weight_inputs).asnumpy() - reference).max() <= 2e-6 * np.abs(reference).max(), fmt


@needs_kernels
def test_linear_uses_the_kernel_in_inference_and_matmul_in_training():
    layer = Linear(70, 37, bias=True)
    layer.bias.set_data(Tensor(np.linspace(-1, 1, 37, dtype=np.float32)))
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 70)).astype(np.float32))
    assert layer.kernel is not None
    layer.set_train(False)
    with_kernel = layer(x).asnumpy()
    layer.set_train(True)
    with_matmul = layer(x).asnumpy()
    np.testing.assert_allclose(with_kernel, with_matmul, rtol=0, atol=2e-6)


@needs_kernels
def test_linear_takes_mindspore_matmul_for_float32_weights_where_ours_was_not_measured_faster():
    layer = Linear(70, 37)
    layer.set_train(False)
    rows_seen = []
    kernel = layer.kernel
    layer.kernel = lambda x, w: rows_seen.append(x.shape[0]) or kernel(x, w)
    layer.matmul_from_rows = 4  # as if MatMul had been measured faster from four rows of x on
    for rows in (1, 2, 5):
        layer(Tensor(np.ones((rows, 70), np.float32)))
    assert rows_seen == [1, 2]  # one row (decoding) too follows the crossover
    bf16 = Linear(70, 37, dtype=ms.bfloat16)  # 16-bit weights: MatMul would widen them
    assert bf16.matmul_from_rows == 0


@needs_kernels
def test_gradients_through_the_kernel_equal_matmul_gradients():
    layer = Linear(70, 37)
    layer.set_train(False)
    x = Tensor(np.random.default_rng(3).standard_normal((4, 70)).astype(np.float32))
    grad = ms.grad(lambda inputs: (layer(inputs) ** 2).sum(), grad_position=0, weights=layer.trainable_params())
    dx_kernel, (dw_kernel,) = grad(x)
    layer.kernel = None
    dx_matmul, (dw_matmul,) = grad(x)
    np.testing.assert_allclose(dx_kernel.asnumpy(), dx_matmul.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw_kernel.asnumpy(), dw_matmul.asnumpy(), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [ms.bfloat16, ms.float16, ms.float32])
def test_row_gather_copies_table_rows_exactly_and_refuses_unknown_ids(dtype):
    table = Tensor(np.random.default_rng(4).standard_normal((50, 33)).astype(np.float32)).astype(dtype)
    ids = Tensor(np.array([[3, 0, 49], [7, 7, 1]], np.int32))
    rows = _compiled(cpu_kernels.gather_rows(), table, ids)
    assert rows.dtype == dtype and rows.shape == (2, 3, 33)
    expected_rows = table.astype(ms.float32).asnumpy()[ids.asnumpy()]
    np.testing.assert_array_equal(rows.astype(ms.float32).asnumpy(), expected_rows)
    with pytest.raises(RuntimeError):
        cpu_kernels.gather_rows()(table, Tensor(np.array([[50]], np.int32))).asnumpy()


@needs_kernels
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
@pytest.mark.parametrize("x_dtype,w_dtype", [(ms.float32, ms.float32), (ms.float32, ms.bfloat16),
                                             (ms.float16, ms.float16), (ms.bfloat16, ms.bfloat16)])
def test_rms_norm_kernel_matches_the_portable_norm(compiled, x_dtype, w_dtype):
    """The inference norm (one op of ours) against reference_ops.rms_norm: a few rows as in decoding,
    many as in a prompt (split over the threads), and a width that is no multiple of the vectors."""
    from glm3_mindspore.modeling import reference_ops

    op = cpu_kernels.rms_norm()
    rng = np.random.default_rng(5)
    for shape in ((1, 1, 4096), (3, 2, 70), (2, 300, 512)):
        x = Tensor(rng.standard_normal(shape).astype(np.float32) * 3).astype(x_dtype)
        weight = Tensor(rng.standard_normal(shape[-1]).astype(np.float32)).astype(w_dtype)
        eps = Tensor([1e-5], ms.float32)
        out = _compiled(op, x, weight, eps) if compiled else op(x, weight, eps)
        reference = reference_ops.rms_norm(x, weight, 1e-5)
        assert out.dtype == x_dtype and out.shape == shape
        got, want = (t.astype(ms.float32).asnumpy() for t in (out, reference))
        tolerance = {ms.float32: 1e-5, ms.float16: 2e-3, ms.bfloat16: 1.6e-2}[x_dtype]
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


@needs_kernels
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
@pytest.mark.parametrize("dtype", [ms.float32, ms.float16, ms.bfloat16])
def test_swiglu_kernel_matches_silu_of_gate_times_up(compiled, dtype):
    """The inference MLP activation (one op of ours) against the portable split, SiLU and product."""
    op = cpu_kernels.swiglu()
    rng = np.random.default_rng(6)
    for shape in ((1, 1, 2 * 13696), (3, 2, 2 * 35), (2, 300, 2 * 256)):
        x = Tensor(rng.standard_normal(shape).astype(np.float32) * 4).astype(dtype)
        out = _compiled(op, x) if compiled else op(x)
        assert out.dtype == dtype and out.shape == shape[:-1] + (shape[-1] // 2,)
        gate, up = np.split(x.astype(ms.float32).asnumpy().astype(np.float64), 2, -1)
        want = gate / (1 + np.exp(-gate)) * up
        tolerance = {ms.float32: 1e-5, ms.float16: 1e-3, ms.bfloat16: 8e-3}[dtype]
        np.testing.assert_allclose(out.astype(ms.float32).asnumpy(), want, rtol=tolerance,
                                   atol=tolerance * np.abs(want).max())


@needs_kernels
def test_bf16_embeddings_are_looked_up_inside_the_decode_graph(expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16")
    embedding = model.transformer.embedding.word_embeddings
    assert embedding.compiles_in_inference
    prompt = expected["chat_input_ids"]
    compiled = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    embedding.gather_rows = None  # the op-by-op lookup outside the graph: same tokens
    model.clear_generation_cache()
    assert model.generate(prompt, max_new_tokens=6, eos_token_id=[]).tolist() == compiled.tolist()


@needs_kernels
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_upstream_greedy_tokens_with_and_without_the_kernel(expected, compiled):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    linears = [cell for _, cell in model.cells_and_names() if isinstance(cell, Linear)]
    assert linears and all(cell.kernel is not None for cell in linears)
    prompt = expected["chat_input_ids"]
    for _ in ("kernel", "matmul"):
        out = model.generate(prompt, max_new_tokens=24, eos_token_id=CHAT_STOP, compiled=compiled)
        assert out[:, prompt.shape[1]:].tolist() == expected["chat_greedy_ids"].tolist()
        for cell in linears:
            cell.kernel = None
        model.clear_generation_cache()


@needs_kernels
def test_build_is_cached_per_source_compiler_and_cpu(tmp_path):
    compiler = build.find_compiler()
    first = build.build_library(compiler, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build.build_library(compiler, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left behind


@needs_kernels
def test_tuning_is_measured_once_then_read_back(tmp_path, monkeypatch):
    path = build.build_library(build.find_compiler(), tmp_path)
    measured = build.load_tuning(path, build.open_library(path))
    stored = path.with_suffix(".tuning.json")
    assert stored.exists() and measured.stream_max_rows >= 1 and measured.rows_per_block_one in (2, 4, 8)
    assert measured.matmul_from_rows in (0, 1, 8, 32, 128)
    monkeypatch.setattr(build, "measure_tuning", lambda lib, path: pytest.fail("measured again"))
    assert build.load_tuning(path, build.open_library(path)) == measured


def test_a_failing_compiler_is_reported_with_its_output(tmp_path):
    fake = tmp_path / "broken-g++"
    fake.write_text("#!/bin/sh\necho 'fatal: no room' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(build.KernelBuildError, match="no room"):
        build.build_library(str(fake), tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


@pytest.fixture
def no_compiler(monkeypatch):
    """This process as on a machine without g++ (the kernels reload afterwards)."""
    monkeypatch.setattr(cpu_kernels, "find_compiler", lambda: None)
    cpu_kernels.reset()
    yield
    monkeypatch.undo()
    cpu_kernels.reset()


def test_without_a_compiler_layers_warn_once_and_use_mindspore_ops(no_compiler, caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.linear() is None and cpu_kernels.gather_rows() is None
        assert Linear(8, 4).kernel is None
    assert caplog.text.count("no C++ compiler") == 1
    assert not Embedding(8, 4, dtype=ms.bfloat16).compiles_in_inference


def test_switched_off_the_kernels_are_not_built(monkeypatch):
    monkeypatch.setitem(os.environ, cpu_kernels.SWITCH, "0")
    cpu_kernels.reset()
    try:
        assert cpu_kernels.linear() is None and not cpu_kernels.available()
    finally:
        monkeypatch.undo()
        cpu_kernels.reset()


def test_without_a_compiler_the_model_still_gives_upstream_tokens(no_compiler, expected):
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    prompt = expected["chat_input_ids"]
    out = model.generate(prompt, max_new_tokens=24, eos_token_id=CHAT_STOP)
    assert out[:, prompt.shape[1]:].tolist() == expected["chat_greedy_ids"].tolist()


@pytest.mark.parametrize("bits", [8, 4])
def test_without_a_compiler_quantized_layers_dequantize_with_mindspore_ops(no_compiler, bits):
    w = np.random.default_rng(9).standard_normal((37, 70)).astype(np.float32)
    layer = QuantizedLinear(70, 37, bits, group_size=32)
    assert layer.kernel is None
    layer.load_float_weight(w)
    q, scale = quantize(bits, w, 32)
    x = np.random.default_rng(10).standard_normal((3, 70)).astype(np.float32)
    reference = x.astype(np.float64) @ dequantize(bits, q, scale, 70).astype(np.float64).T
    assert np.abs(layer(Tensor(x)).asnumpy() - reference).max() <= 2e-6 * np.abs(reference).max()


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Upstream's interleaved rotary on ``x [..., D]`` with ``cos``/``sin`` ``[..., half]`` (float64)."""
    half = cos.shape[-1]
    out = x.copy()
    x0, x1 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    out[..., 0:2 * half:2] = x0 * cos - x1 * sin
    out[..., 1:2 * half:2] = x1 * cos + x0 * sin
    return out


@needs_kernels
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
@pytest.mark.parametrize("act_dtype,cache_dtype", [(ms.float32, ms.float32), (ms.float16, ms.float16),
                                                   (ms.float32, ms.bfloat16)])
def test_cached_attention_kernel_writes_turned_keys_and_attends_as_the_bias_allows(compiled, act_dtype, cache_dtype):
    """Rotary + cache write + grouped attention in one op, against a float64 numpy reference: one token per
    row (decoding) and several (a prompt chunk), a subset of the cache's rows, fewer readable slots than the
    cache holds, a head size that is no multiple of the vectors, and a query that may read no slot."""
    from mindspore import Parameter

    op = cpu_kernels.cached_attention()
    rng = np.random.default_rng(9)
    for B, R, S, H, G, D, half, L, K in ((2, 2, 1, 8, 2, 128, 32, 40, 40), (3, 2, 5, 4, 2, 24, 6, 16, 12)):
        key_cache = rng.standard_normal((B, G, L, D)).astype(np.float32)
        value_cache = rng.standard_normal((B, G, L, D)).astype(np.float32)
        keys = Parameter(Tensor(key_cache).astype(cache_dtype), name="k", requires_grad=False)
        values = Parameter(Tensor(value_cache).astype(cache_dtype), name="v", requires_grad=False)
        key_cache, value_cache = (p.astype(ms.float32).asnumpy().astype(np.float64) for p in (keys, values))
        mixed = Tensor(rng.standard_normal((R, S, (H + 2 * G) * D)).astype(np.float32)).astype(act_dtype)
        angles = rng.uniform(0, 6, (R, S, 1, half))
        cos, sin = (Tensor(f(angles).astype(np.float32)) for f in (np.cos, np.sin))
        rows = np.array([B - 1, 0][:R], np.int32)
        slots = (np.array([3, 7][:R]).reshape(R, 1) + np.arange(S)).astype(np.int32)
        allowed = (np.arange(K).reshape(1, 1, K) <= slots.reshape(R, S, 1)) & (rng.random((R, 1, K)) < 0.8)
        allowed[-1, 0] = False  # this query reads nothing: the reference's softmax is uniform
        bias = np.where(allowed, 0.0, -3.4028234663852886e38).astype(np.float32).reshape(R, 1, 1, S, K)
        args = (mixed, cos, sin, keys, values, Tensor(slots), Tensor(rows), Tensor(bias))
        out = _compiled(op, *args) if compiled else op(*args)
        assert out.dtype == act_dtype and out.shape == (R, S, H * D)
        x = mixed.astype(ms.float32).asnumpy().astype(np.float64).reshape(R, S, H + 2 * G, D)
        c, s = cos.asnumpy().astype(np.float64), sin.asnumpy().astype(np.float64)
        turned = _rotate(x[:, :, :H + G], c, s)
        for r in range(R):
            key_cache[rows[r], :, slots[r]] = turned[r, :, H:]  # [S, G, D]
            value_cache[rows[r], :, slots[r]] = x[r, :, H + G:]
        tolerance = {ms.float32: 1e-5, ms.float16: 2e-3, ms.bfloat16: 1.6e-2}[cache_dtype]
        for written, want in ((keys, key_cache), (values, value_cache)):
            np.testing.assert_allclose(written.astype(ms.float32).asnumpy(), want, rtol=tolerance, atol=tolerance)
        key_cache, value_cache = (p.astype(ms.float32).asnumpy().astype(np.float64) for p in (keys, values))
        want = np.zeros((R, S, H, D))
        for r in range(R):
            for h in range(H):
                k, v = key_cache[rows[r], h // (H // G), :K], value_cache[rows[r], h // (H // G), :K]
                scores = turned[r, :, h] @ k.T / np.sqrt(D) + np.where(allowed[r], 0.0, -np.inf)
                scores = np.where(allowed[r].any(-1, keepdims=True), scores, 0.0)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                want[r, :, h] = (probs / probs.sum(-1, keepdims=True)) @ v
        tolerance = {ms.float32: 1e-5, ms.float16: 3e-3, ms.bfloat16: 1e-3}[act_dtype]
        np.testing.assert_allclose(out.astype(ms.float32).asnumpy().reshape(R, S, H, D), want,
                                   rtol=tolerance, atol=tolerance * np.abs(want).max())
