"""CPU kernels of our own, compiled once per machine and run as MindSpore ``ops.Custom`` ops.

Why: MindSpore's CPU backend has no bfloat16 matmul or gather and no
weight-quantized matmul, and its ``MatMul`` is not the fastest way to multiply
a few rows by a large weight (decoding, where the weights must stream from
memory as fast as it allows). These kernels (``csrc/``) read every weight in
its stored format, float32, float16, bfloat16, int8 or int4, directly: no
widened copy of a weight is ever made, for decoding or for prompts. They are
ahead-of-time ``ops.Custom`` ops, so they sit inside compiled graphs like any
other op.

Besides the products: the embedding lookup of bfloat16 tables, RMSNorm, SwiGLU
and attention over the KV cache (rotary, cache write and attention in one op).
Used on CPU and in inference; training keeps MindSpore's ops. Without a C++
compiler, or with ``GLM3_CPU_KERNELS=0``, the factories below return None and
layers fall back to MindSpore's ops (slower; 16-bit and quantized weights are
then widened for every product), with one warning.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Optional

from mindspore import ops

from ...runtime import device_target
from .build import KernelBuildError, Tuning, build_library, cache_dir, find_compiler, load_tuning, open_library

__all__ = ["KernelBuildError", "SWITCH", "Tuning", "available", "cached_attention", "configure", "gather_rows",
           "library", "linear", "reset", "rms_norm", "swiglu", "tuning"]

logger = logging.getLogger(__name__)

SWITCH = "GLM3_CPU_KERNELS"
WEIGHT_FORMATS = ("dense", "int8", "int4")


@functools.lru_cache(maxsize=None)
def _loaded() -> Optional[tuple]:
    """``(library path, ctypes handle, tuning)`` on CPU, built and tuned on first use; None where unavailable."""
    if device_target() != "CPU" or os.environ.get(SWITCH, "1") == "0":
        return None
    compiler = find_compiler()
    if compiler is None:
        logger.warning("no C++ compiler (g++) found: CPU inference uses MindSpore's MatMul, which is slower and "
                       "widens 16-bit and quantized weights for every product; install g++ to build "
                       "glm3_mindspore's CPU kernels (set %s=0 to silence)", SWITCH)
        return None
    try:
        path = build_library(compiler, cache_dir())
        handle = open_library(path)
        return path, handle, [load_tuning(path, handle)]
    except (OSError, KernelBuildError) as err:
        logger.warning("CPU kernels unavailable, using MindSpore's ops (set %s=0 to silence): %s", SWITCH, err)
        return None


def library() -> Optional[Path]:
    """The compiled kernels, or None off CPU, when switched off or without a compiler."""
    loaded = _loaded()
    return None if loaded is None else loaded[0]


def tuning() -> Optional[Tuning]:
    """The choices in use (measured for this machine, see :mod:`.build`), or None without the kernels."""
    loaded = _loaded()
    return None if loaded is None else loaded[2][0]


def configure(choices: Tuning) -> None:
    """Use other choices in this process (tests force one product path or the other)."""
    loaded = _loaded()
    if loaded is None:
        raise RuntimeError("the CPU kernels are not available in this process")
    loaded[1].glm3_configure(choices.stream_max_rows, choices.rows_per_block_one)
    loaded[2][0] = choices


def available() -> bool:
    return _loaded() is not None


def reset() -> None:
    """Forget the loaded library (tests switch compilers and settings)."""
    _loaded.cache_clear()


def _dense_backward(x, weight, out, dout):
    """Gradients of ``y = x W^T``, for anyone differentiating an inference graph."""
    dx = ops.matmul(dout, weight.astype(dout.dtype))
    dweight = ops.matmul(dout.swapaxes(0, 1), x.astype(dout.dtype)).astype(weight.dtype)
    return dx, dweight


def linear(weight_format: str = "dense") -> Optional[ops.Custom]:
    """``y = x W^T`` of ``x [M, K]`` (float32/float16; ``y`` in its dtype) and a weight in ``weight_format``.

    ``dense``: ``(x, w [N, K])`` with float32, float16 or bfloat16 ``w``;
    ``int8``: ``(x, q int8 [N, K], scale float16 [N])``;
    ``int4``: ``(x, q uint8 [N, groups * G / 2], scale float16 [N, groups])``
    (see :mod:`glm3_mindspore.quantization`). None without the kernels.
    """
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {weight_format!r}; expected one of {WEIGHT_FORMATS}")
    path = library()
    if path is None:
        return None
    if weight_format == "dense":
        return ops.Custom(f"{path}:LinearDense", out_shape=lambda x, w: (x[0], w[0]),
                          out_dtype=lambda x, w: x, func_type="aot", bprop=_dense_backward)
    entry = "LinearInt8" if weight_format == "int8" else "LinearInt4"
    return ops.Custom(f"{path}:{entry}", out_shape=lambda x, q, scale: (x[0], q[0]),
                      out_dtype=lambda x, q, scale: x, func_type="aot")


def gather_rows() -> Optional[ops.Custom]:
    """``(table [V, H], int32 ids [...]) -> rows [..., H]`` in the table's dtype (no gradient), or None."""
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:GatherRows", out_shape=lambda table, ids: tuple(ids) + (table[1],),
                      out_dtype=lambda table, ids: table, func_type="aot")


def rms_norm() -> Optional[ops.Custom]:
    """``(x [..., H], weight [H], eps float32 [1]) -> RMSNorm(x)`` in x's dtype (no gradient), or None.

    One op for what the portable version spreads over eight small ones
    (:func:`..reference_ops.rms_norm`, whose numerics it follows).
    """
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:RmsNorm", out_shape=lambda x, weight, eps: x, out_dtype=lambda x, weight, eps: x,
                      func_type="aot")


def swiglu() -> Optional[ops.Custom]:
    """``x [..., 2F] -> silu(x[..., :F]) * x[..., F:]`` in x's dtype (no gradient), or None.

    The MLP's activation in one op instead of a split, a SiLU and a product.
    """
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:SwiGlu", out_shape=lambda x: tuple(x[:-1]) + (x[-1] // 2,), out_dtype=lambda x: x,
                      func_type="aot")


def cached_attention() -> Optional[ops.Custom]:
    """Rotary, KV-cache write and grouped attention over the cache in one op (no gradient), or None.

    ``(mixed [R, S, (H + 2G) D], cos, sin [R, S, 1, D/4], key_cache, value_cache [B, G, L, D],
    slots int32 [R, S], rows int32 [R], bias [R, 1, 1, S, K]) -> context [R, S, H D]`` in
    ``mixed``'s dtype. It writes the new keys (turned) and values into the caches at
    ``slots`` of cache rows ``rows``, in place, and attends over their first ``K`` slots
    as the bias allows; the numerics of :func:`..reference_ops.apply_rotary`,
    :meth:`..cache.StaticCache.update` and :func:`..reference_ops.attention` together.
    """
    path = library()
    if path is None:
        return None
    op = ops.Custom(f"{path}:CachedAttention",
                    out_shape=lambda mixed, cos, sin, key, value, slots, rows, bias:
                    (mixed[0], mixed[1], mixed[2] - 2 * key[1] * key[3]),
                    out_dtype=lambda mixed, cos, sin, key, value, slots, rows, bias: mixed, func_type="aot")
    op.add_prim_attr("side_effect_mem", True)  # it writes the cache parameters: keep it, and keep its order
    return op
