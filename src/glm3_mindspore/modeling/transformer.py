"""The ChatGLM3 transformer stack: SwiGLU MLP, pre-norm blocks, the encoder."""

from __future__ import annotations

from typing import List, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from .attention import SelfAttention
from .layers import make_linear, make_norm


class MLP(nn.Cell):
    """``dense_4h_to_h(silu(gate) * up)`` where ``dense_h_to_4h`` yields ``[gate | up]``."""

    def __init__(self, config, dtype=ms.float32) -> None:
        super().__init__()
        self.ffn_hidden_size = config.ffn_hidden_size
        self.dense_h_to_4h = make_linear(config, config.hidden_size, 2 * config.ffn_hidden_size, config.add_bias_linear, dtype)
        self.dense_4h_to_h = make_linear(config, config.ffn_hidden_size, config.hidden_size, config.add_bias_linear, dtype)

    def construct(self, hidden_states: Tensor) -> Tensor:
        gate_up = self.dense_h_to_4h(hidden_states)
        gate, up = ops.split(gate_up, self.ffn_hidden_size, -1)
        return self.dense_4h_to_h(ops.silu(gate) * up)


class GLMBlock(nn.Cell):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``.

    With ``apply_residual_connection_post_layernorm`` the residual branches start
    from the normalised input instead, as upstream allows.
    """

    def __init__(self, config, layer_number: int, dtype=ms.float32) -> None:
        super().__init__()
        self.layer_number = layer_number
        self.residual_from_norm = config.apply_residual_connection_post_layernorm
        self.input_layernorm = make_norm(config, dtype)
        self.self_attention = SelfAttention(config, layer_number, dtype=dtype)
        self.post_attention_layernorm = make_norm(config, dtype)
        self.mlp = MLP(config, dtype=dtype)
        self.hidden_dropout = nn.Dropout(p=config.hidden_dropout) if config.hidden_dropout > 0 else None

    def construct(self, hidden_states, cos, sin, bias, kv_cache=None, cache_position=None, prefix_kv=None):
        normed = self.input_layernorm(hidden_states)
        attention_output = self.self_attention(normed, cos, sin, bias, kv_cache, cache_position, prefix_kv)
        residual = normed if self.residual_from_norm else hidden_states
        hidden_states = residual + self._dropout(attention_output)
        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.residual_from_norm else hidden_states
        return residual + self._dropout(self.mlp(normed))

    def _dropout(self, x: Tensor) -> Tensor:
        return x if self.hidden_dropout is None else self.hidden_dropout(x)


class GLMTransformer(nn.Cell):
    """``num_layers`` blocks and the final norm (upstream's ``encoder``)."""

    def __init__(self, config, dtype=ms.float32) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.post_layer_norm = config.post_layer_norm
        self.layers = nn.CellList([GLMBlock(config, i + 1, dtype=dtype) for i in range(config.num_layers)])
        if config.post_layer_norm:
            self.final_layernorm = make_norm(config, dtype)

    def construct(
        self,
        hidden_states: Tensor,
        cos: Tensor,
        sin: Tensor,
        bias: Tensor,
        kv_caches: Optional[List[Tuple[Tensor, Tensor]]] = None,
        cache_position: Optional[Tensor] = None,
        prefix_kvs: Optional[List[Tuple[Tensor, Tensor]]] = None,
    ) -> Tensor:
        for i in range(self.num_layers):
            kv_cache = None if kv_caches is None else kv_caches[i]
            prefix_kv = None if prefix_kvs is None else prefix_kvs[i]
            hidden_states = self.layers[i](hidden_states, cos, sin, bias, kv_cache, cache_position, prefix_kv)
        if self.post_layer_norm:
            hidden_states = self.final_layernorm(hidden_states)
        return hidden_states
