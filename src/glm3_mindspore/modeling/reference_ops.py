"""The model's numerics in portable MindSpore ops: the reference, with Ascend's fused kernels behind one switch.

The portable implementations (plain ``mindspore.ops`` and arithmetic) run on
every device, are what the parity tests check, and are what runs on CPU. On
Ascend, :func:`use_fused_kernels` selects MindSpore's fused ``rms_norm`` and
``flash_attention_score`` (grouped K/V heads, BNSD) instead. The fused
``rotary_position_embedding`` is not used: its interleaved mode (ChatGLM's)
takes one position table for the whole batch, while left-padded batches need
a position row per sequence. The fused paths cannot be exercised on a
CPU-only machine; they follow the kernels' documented contracts. (Our CPU
kernels for the linear layers are another matter: :mod:`.cpu_kernels`.)
"""

from __future__ import annotations

import math
from typing import Optional

import mindspore as ms
from mindspore import Tensor, ops

from ..runtime import is_ascend

_FUSED = {"enabled": None}
MASKED = -3.4028234663852886e38  # float32 min: exp() of it is exactly 0


def use_fused_kernels(enabled: Optional[bool] = None) -> bool:
    """Get (no argument) or set whether models built from now on use fused Ascend kernels.

    Default: on Ascend only. Layers read this once, when they are built, so the
    choice is a constant inside compiled graphs.
    """
    if enabled is not None:
        if enabled and not is_ascend():
            raise ValueError("fused kernels exist only on Ascend; this process runs on " + ms.get_context("device_target"))
        _FUSED["enabled"] = enabled
    if _FUSED["enabled"] is None:
        _FUSED["enabled"] = is_ascend()
    return _FUSED["enabled"]


def rms_norm(x: Tensor, weight: Tensor, eps: float, fused: bool = False) -> Tensor:
    """Upstream RMSNorm: statistics and scaling in fp32, result in the input dtype."""
    if fused:
        return ops.rms_norm(x, weight.astype(x.dtype), eps)[0]
    h = x.astype(ms.float32)
    variance = (h * h).mean(-1, keep_dims=True)
    h = h * ops.rsqrt(variance + eps)
    return (weight.astype(ms.float32) * h).astype(x.dtype)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm for configs with ``rmsnorm: false`` (fp32 statistics)."""
    h = x.astype(ms.float32)
    mean = h.mean(-1, keep_dims=True)
    centered = h - mean
    variance = (centered * centered).mean(-1, keep_dims=True)
    h = centered * ops.rsqrt(variance + eps)
    return (h * weight.astype(ms.float32) + bias.astype(ms.float32)).astype(x.dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` dims of each head in interleaved pairs.

    ``x``: ``[B, S, N, D]``; ``cos``/``sin``: ``[B, S, 1, R]`` with ``R = rotary_dim / 2``.
    Pair ``(x[2i], x[2i+1])`` turns by angle ``position * theta_i``, as upstream's
    ``apply_rotary_pos_emb`` does; the remaining dims pass through.
    """
    batch, seq, heads, dim = x.shape
    half = cos.shape[-1]
    if 2 * half == dim:
        rot, rest = x, None
    else:
        rot, rest = ops.split(x, (2 * half, dim - 2 * half), -1)
    x0, x1 = ops.split(rot.reshape(batch, seq, heads, half, 2), 1, -1)  # [..., half, 1] each
    cos = cos.astype(x.dtype).expand_dims(-1)
    sin = sin.astype(x.dtype).expand_dims(-1)
    turned = ops.concat((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).reshape(batch, seq, heads, 2 * half)
    return turned if rest is None else ops.concat((turned, rest), -1)


def attention(query: Tensor, key: Tensor, value: Tensor, bias: Tensor, fused: bool = False) -> Tensor:
    """Grouped-query attention without repeating K/V.

    ``query``: ``[B, H, S, D]``; ``key``/``value``: ``[B, G, K, D]`` where head ``h``
    reads group ``h // (H / G)``; ``bias``: additive fp32 mask ``[B, 1, 1, S, K]``.
    Scores and softmax are computed in fp32; returns ``[B, H, S, D]``.
    """
    batch, heads, seq, dim = query.shape
    groups, keys = key.shape[1], key.shape[2]
    per_group = heads // groups
    scale = 1.0 / math.sqrt(dim)
    if fused and dim % 16 == 0:
        return _flash_attention(query, key, value, bias, scale)
    q = (query * scale).reshape(batch, groups, per_group * seq, dim)
    scores = ops.matmul(q, key.swapaxes(-1, -2)).astype(ms.float32)
    scores = scores.reshape(batch, groups, per_group, seq, keys) + bias
    probs = ops.softmax(scores, -1).astype(value.dtype).reshape(batch, groups, per_group * seq, keys)
    return ops.matmul(probs, value).reshape(batch, heads, seq, dim)


def _flash_attention(query: Tensor, key: Tensor, value: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Ascend ``flash_attention_score`` (BNSD; its mask is 1 where attention is forbidden)."""
    forbidden = (bias[:, 0] < -1.0).astype(ms.uint8)  # [B, 1, S, K]
    compute = query.dtype if query.dtype in (ms.float16, ms.bfloat16) else ms.float16
    out = ops.flash_attention_score(
        query.astype(compute), key.astype(compute), value.astype(compute), query.shape[1],
        attn_mask=forbidden, scalar_value=scale, input_layout="BNSD",
    )
    return out.astype(query.dtype)


def causal_bias(attention_mask: Optional[Tensor], query_start: int, seq: int, keys: int, batch: int) -> Tensor:
    """fp32 bias ``[B, 1, 1, S, K]`` without a cache: 0 where query ``i`` may read key ``j``, very negative elsewhere.

    Query ``i`` sits at key index ``query_start + i`` (after ``query_start``
    prefix keys); it may read key ``j`` when ``j <= query_start + i`` (causal)
    and ``attention_mask[b, j] == 1`` (not padding). A row with no readable key
    gets a uniform distribution instead of NaN.
    """
    query_index = ops.arange(seq, dtype=ms.int32).reshape(seq, 1) + query_start
    key_index = ops.arange(keys, dtype=ms.int32).reshape(1, keys)
    allowed = (key_index <= query_index).reshape(1, seq, keys)
    if attention_mask is not None:
        allowed = ops.logical_and(allowed, (attention_mask > 0).reshape(batch, 1, keys))
    else:
        allowed = allowed.broadcast_to((batch, seq, keys))
    bias = (1.0 - allowed.astype(ms.float32)) * MASKED
    return bias.reshape(batch, 1, 1, seq, keys)
