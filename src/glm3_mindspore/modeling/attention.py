"""Multi-query self-attention of ChatGLM3 (upstream ``SelfAttention`` + ``CoreAttention``)."""

from __future__ import annotations

from typing import Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from . import kernels
from .layers import make_linear


class SelfAttention(nn.Cell):
    """Fused ``query_key_value`` projection, rotary on q/k, grouped attention, ``dense`` output.

    The fused projection's rows are ``[H*D query | G*D key | G*D value]``; query
    head ``h`` reads key/value group ``h // (H / G)``. With a static KV cache the
    new keys/values are written in place at ``cache_position`` and attention reads
    the first ``K`` slots of the cache, ``K`` the width of ``bias`` (future and
    padded slots masked out): a prompt fed in chunks scores only the filled part.
    """

    def __init__(self, config, layer_number: int, dtype=ms.float32) -> None:
        super().__init__()
        self.layer_number = layer_number
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.num_groups = config.num_key_value_groups
        self.query_size = self.num_heads * self.head_dim
        self.kv_size = self.num_groups * self.head_dim
        self.query_key_value = make_linear(config, config.hidden_size, self.query_size + 2 * self.kv_size,
                                           config.add_bias_linear or config.add_qkv_bias, dtype)
        self.dense = make_linear(config, self.query_size, config.hidden_size, config.add_bias_linear, dtype)
        self.attention_dropout = nn.Dropout(p=config.attention_dropout) if config.attention_dropout > 0 else None
        self.fused = kernels.use_fused_kernels()

    def construct(
        self,
        hidden_states: Tensor,
        cos: Tensor,
        sin: Tensor,
        bias: Tensor,
        kv_cache: Optional[Tuple[Tensor, Tensor]] = None,
        cache_position: Optional[Tensor] = None,
        prefix_kv: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        batch, seq, _ = hidden_states.shape
        mixed = self.query_key_value(hidden_states)
        query, key, value = ops.split(mixed, (self.query_size, self.kv_size, self.kv_size), -1)
        query = query.reshape(batch, seq, self.num_heads, self.head_dim)
        key = key.reshape(batch, seq, self.num_groups, self.head_dim)
        value = value.reshape(batch, seq, self.num_groups, self.head_dim)

        query = kernels.apply_rotary(query, cos, sin).swapaxes(1, 2)  # [B, H, S, D]
        key = kernels.apply_rotary(key, cos, sin).swapaxes(1, 2)  # [B, G, S, D]
        value = value.swapaxes(1, 2)

        if kv_cache is not None:
            key, value = write_kv_cache(kv_cache, key, value, cache_position)
            keys = bias.shape[-1]
            if keys < key.shape[2]:
                key, value = key[:, :, :keys], value[:, :, :keys]
        elif prefix_kv is not None:
            key = ops.concat((prefix_kv[0].astype(key.dtype), key), 2)
            value = ops.concat((prefix_kv[1].astype(value.dtype), value), 2)

        context = kernels.attention(query, key, value, bias, self.fused)  # [B, H, S, D]
        if self.attention_dropout is not None:
            context = self.attention_dropout(context)
        context = context.swapaxes(1, 2).reshape(batch, seq, self.query_size)
        return self.dense(context)


def write_kv_cache(kv_cache: Tuple[Tensor, Tensor], key: Tensor, value: Tensor, cache_position: Tensor):
    """Write ``key``/``value`` ``[B, G, S, D]`` into the cache at ``cache_position`` (in place).

    Returns the full cache tensors ``[B, G, L, D]`` to attend over.
    """
    key_cache, value_cache = kv_cache
    batch, groups, seq, _ = key.shape
    indices = _cache_indices(batch, groups, seq, cache_position)
    key_cache = ops.scatter_nd_update(key_cache, indices, key.astype(key_cache.dtype))
    value_cache = ops.scatter_nd_update(value_cache, indices, value.astype(value_cache.dtype))
    return key_cache.astype(key.dtype), value_cache.astype(value.dtype)


def _cache_indices(batch: int, groups: int, seq: int, cache_position: Tensor) -> Tensor:
    """``[B, G, S, 3]`` indices ``(b, g, cache_position + s)`` for ``scatter_nd_update``."""
    b = ops.arange(batch, dtype=ms.int32).reshape(batch, 1, 1, 1).broadcast_to((batch, groups, seq, 1))
    g = ops.arange(groups, dtype=ms.int32).reshape(1, groups, 1, 1).broadcast_to((batch, groups, seq, 1))
    s = (ops.arange(seq, dtype=ms.int32) + cache_position.astype(ms.int32)).reshape(1, 1, seq, 1)
    s = s.broadcast_to((batch, groups, seq, 1))
    return ops.concat((b, g, s), -1)
