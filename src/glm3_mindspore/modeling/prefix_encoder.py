"""P-Tuning v2 prefix encoder (upstream ``PrefixEncoder``): trainable per-layer key/value prefixes."""

from __future__ import annotations

from typing import List, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import Embedding, Linear


class PrefixEncoder(nn.Cell):
    """``pre_seq_len`` learned vectors of size ``num_layers * 2 * G * D``, optionally through an MLP.

    Parameter names follow upstream: ``embedding.weight`` and, with
    ``prefix_projection``, ``trans.0.{weight,bias}`` and ``trans.2.{weight,bias}``.
    """

    def __init__(self, config, dtype=ms.float32) -> None:
        super().__init__()
        self.pre_seq_len = config.pre_seq_len
        self.num_layers = config.num_layers
        self.num_groups = config.num_key_value_groups
        self.head_dim = config.kv_channels
        kv_size = config.num_layers * config.kv_channels * self.num_groups * 2
        self.embedding = Embedding(config.pre_seq_len, kv_size, dtype=dtype)
        self.prefix_projection = config.prefix_projection
        if config.prefix_projection:
            self.trans = nn.SequentialCell(
                Linear(kv_size, config.hidden_size, bias=True, dtype=dtype),
                nn.Tanh(),
                Linear(config.hidden_size, kv_size, bias=True, dtype=dtype),
            )
        self.dropout = nn.Dropout(p=0.1)

    def construct(self, batch_size: int, dtype) -> List[Tuple[Tensor, Tensor]]:
        """Per layer ``(key, value)`` of shape ``[B, G, pre_seq_len, D]`` (upstream ``get_prompt``)."""
        prefix = ops.arange(self.pre_seq_len, dtype=ms.int32)
        kv = self.embedding(prefix)
        if self.prefix_projection:
            kv = self.trans(kv)
        kv = kv.astype(dtype).expand_dims(0).broadcast_to((batch_size,) + kv.shape)
        kv = self.dropout(kv).reshape(batch_size, self.pre_seq_len, self.num_layers * 2, self.num_groups, self.head_dim)
        kv = kv.transpose(2, 0, 3, 1, 4)  # [2L, B, G, P, D]: layer i has key 2i, value 2i+1
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers)]
