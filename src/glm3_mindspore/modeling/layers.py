"""Building blocks whose parameters carry the hub checkpoint's names (``weight``, ``bias``).

Parameters may be stored in a dtype the device cannot multiply in (bfloat16 on
CPU); each layer then computes in the activation dtype, casting its weight on
the fly.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

from ..runtime import supports_bf16_compute
from . import kernels
from .cpu_kernels import MAX_ROWS, gather_rows, small_batch_linear, widen_to_float32

INIT_STD = 0.02


class Linear(nn.Cell):
    """``y = x W^T (+ b)`` with ``W`` of shape ``[out, in]``, as in PyTorch checkpoints.

    In inference on CPU, products of at most ``MAX_ROWS`` rows (decoding) go
    to the small-batch kernel, which reads the weight in its stored dtype, and
    16-bit weights are widened for ``MatMul`` by our kernel rather than ``Cast``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=ms.float32) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(initializer(Normal(INIT_STD), (out_features, in_features), dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (out_features,), dtype), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.small_batch_matmul = small_batch_linear()  # None off CPU or without a C++ compiler
        self.widen = widen_to_float32() if dtype in (ms.float16, ms.bfloat16) else None

    def construct(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.uses_small_batch_kernel(rows):
            y = self.small_batch_matmul(rows, self.weight)
        else:
            y = self.matmul(rows, self.weight_as(x.dtype))
        if self.bias is not None:
            y = y + (self.bias if self.bias.dtype == x.dtype else self.bias.astype(x.dtype))
        return y.reshape(shape[:-1] + (self.out_features,))

    def weight_as(self, dtype) -> Tensor:
        """The weight in the compute dtype: as stored, widened by our kernel (inference), or cast."""
        if self.weight.dtype == dtype:
            return self.weight
        if self.widen is not None and not self.training and dtype == ms.float32:
            return self.widen(self.weight)
        return self.weight.astype(dtype)

    def uses_small_batch_kernel(self, rows: Tensor) -> bool:
        """Decided while tracing: shapes, dtypes and the training flag are constants of a compiled graph."""
        return (self.small_batch_matmul is not None and not self.training and 0 < rows.shape[0] <= MAX_ROWS
                and (rows.dtype == ms.float32 or rows.dtype == ms.float16))

    def extend_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Cell):
    """Token embedding table ``[vocab, hidden]`` named ``weight`` (not MindSpore's ``embedding_table``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=ms.float32) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(initializer(Normal(INIT_STD), (num_embeddings, embedding_dim), dtype), name="weight")
        # CPU has no bfloat16 Gather. In inference our row-gather kernel reads the table in any graph;
        # otherwise the rows move as raw 16-bit words, op by op (a dtype view does not compile).
        self.gather_bits = dtype == ms.bfloat16 and not supports_bf16_compute()
        self.gather_rows = gather_rows() if self.gather_bits else None
        self.gather = ops.Gather()  # a primitive, so a parallel layout can give it a shard strategy

    def construct(self, ids: Tensor) -> Tensor:
        ids = ids.astype(ms.int32)
        if self.gather_rows is not None and not self.training:
            return self.gather_rows(self.weight, ids)
        if self.gather_bits:
            return self.gather(self.weight.view(ms.uint16), ids, 0).view(ms.bfloat16)
        return self.gather(self.weight, ids, 0)

    @property
    def compiles_in_inference(self) -> bool:
        """Whether a compiled inference graph can contain this lookup (else it runs before the graph)."""
        return not self.gather_bits or self.gather_rows is not None


class RMSNorm(nn.Cell):
    def __init__(self, hidden_size: int, eps: float, dtype=ms.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer(One(), (hidden_size,), dtype), name="weight")
        self.fused = kernels.use_fused_kernels()

    def construct(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(x, self.weight, self.eps, self.fused)


class LayerNorm(nn.Cell):
    def __init__(self, hidden_size: int, eps: float, dtype=ms.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer(One(), (hidden_size,), dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (hidden_size,), dtype), name="bias")

    def construct(self, x: Tensor) -> Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


def make_norm(config, dtype) -> nn.Cell:
    cls = RMSNorm if config.rmsnorm else LayerNorm
    return cls(config.hidden_size, config.layernorm_epsilon, dtype=dtype)


class RotaryEmbedding(nn.Cell):
    """cos/sin tables for upstream's rotary embedding, looked up by position id.

    ``theta_i = (10000 * rope_ratio) ** (-2i / R)`` for the ``R / 2`` pairs of the
    first ``R = kv_channels / 2`` dims, computed in fp32 as upstream does. The
    tables are constants, not parameters (the checkpoint's ``inv_freq`` is ignored).
    """

    def __init__(self, rotary_dim: int, base: float, max_positions: int) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.base = base
        self.max_positions = max_positions
        theta = 1.0 / (np.float32(base) ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)))
        angles = np.outer(np.arange(max_positions, dtype=np.float32), theta.astype(np.float32)).astype(np.float32)
        self.cos_table = Tensor(np.cos(angles), ms.float32)
        self.sin_table = Tensor(np.sin(angles), ms.float32)

    def construct(self, position_ids: Tensor):
        """``[B, S]`` positions -> ``cos``, ``sin`` of shape ``[B, S, 1, R/2]``."""
        ids = position_ids.astype(ms.int32)
        cos = ops.gather(self.cos_table, ids, 0)
        sin = ops.gather(self.sin_table, ids, 0)
        return cos.expand_dims(2), sin.expand_dims(2)
