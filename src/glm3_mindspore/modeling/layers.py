"""Building blocks whose parameters carry the hub checkpoint's names (``weight``, ``bias``).

Parameters may be stored in a dtype the device cannot multiply in (bfloat16 on
CPU), or quantized (:class:`QuantizedLinear`); in inference on CPU the
products then run in our kernels (:mod:`.cpu_kernels`), which read weights as
stored. Elsewhere each layer computes in the activation dtype, casting its
weight on the fly.
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

from ..parameter_io import write_parameter
from ..quantization import QuantizationConfig, quantize, quantized_shapes
from ..runtime import is_ascend, supports_bf16_compute
from . import cpu_kernels, reference_ops

INIT_STD = 0.02


class Linear(nn.Cell):
    """``y = x W^T (+ b)`` with ``W`` of shape ``[out, in]``, as in PyTorch checkpoints.

    In inference on CPU the product is our kernel, which reads the weight in
    its stored dtype (no widened copy); in training, without the kernels, and
    for float32 weights from the measured crossover on
    (:mod:`.cpu_kernels.build`), ``MatMul`` on the weight in the activation
    dtype. Float32 is the one format MatMul reads itself. One row (decoding)
    follows the same crossover: a decode step that mixes MatMul products with
    our other kernels alternates two thread pools and ran slower than either
    alone.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=ms.float32) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(initializer(Normal(INIT_STD), (out_features, in_features), dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (out_features,), dtype), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.kernel = cpu_kernels.linear("dense")  # None off CPU or without a C++ compiler
        # float32 weights: MatMul from the measured crossover on
        tuning = cpu_kernels.tuning() if dtype == ms.float32 else None
        self.matmul_from_rows = tuning.matmul_from_rows if tuning is not None else 0

    def construct(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if not self.training and self.uses_kernel(rows.shape[0]):
            y = self.kernel(rows, self.weight)
        else:
            y = self.matmul(rows, self.weight if self.weight.dtype == x.dtype else self.weight.astype(x.dtype))
        return add_bias(y, self.bias).reshape(shape[:-1] + (self.out_features,))

    def uses_kernel(self, rows: int) -> bool:
        """Our kernel for inference products of ``rows`` rows (a constant of a compiled graph)."""
        return self.kernel is not None and not 0 < self.matmul_from_rows <= rows

    def extend_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class QuantizedLinear(nn.Cell):
    """A :class:`Linear` whose weight is int8 or int4 (``weight`` + ``weight_scale``, see :mod:`..quantization`).

    Inference only. On CPU our kernels read the packed weight directly. On
    Ascend, int8 weights go to MindSpore's ``WeightQuantBatchMatmul`` (per
    output channel scales in the activation dtype). Elsewhere (GPU, int4 on
    Ascend, CPU without a compiler) the weight is dequantized with MindSpore's
    ops for each product, which is correct and slower.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 bias: bool = False, dtype=ms.float32) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        weight_shape, scale_shape = quantized_shapes(bits, out_features, in_features, group_size)
        weight_dtype = ms.int8 if bits == 8 else ms.uint8
        self.weight = Parameter(initializer(Zero(), weight_shape, weight_dtype), name="weight", requires_grad=False)
        self.weight_scale = Parameter(initializer(One(), scale_shape, ms.float16), name="weight_scale",
                                      requires_grad=False)
        self.bias = Parameter(initializer(Zero(), (out_features,), dtype), name="bias") if bias else None
        self.kernel = cpu_kernels.linear("int8" if bits == 8 else "int4")
        self.ascend_matmul = None
        if bits == 8 and is_ascend():
            from mindspore.ops.auto_generate import WeightQuantBatchMatmul

            self.ascend_matmul = WeightQuantBatchMatmul(transpose_x=False, transpose_weight=True)

    @classmethod
    def from_linear(cls, layer: Linear, quantization: QuantizationConfig, bits: int) -> "QuantizedLinear":
        """Quantize a float layer's current weight (its bias is kept as it is)."""
        quantized = cls(layer.in_features, layer.out_features, bits, quantization.group_size,
                        bias=layer.bias is not None, dtype=layer.bias.dtype if layer.bias is not None else ms.float32)
        quantized.load_float_weight(layer.weight.asnumpy())
        if layer.bias is not None:
            write_parameter(quantized.bias, layer.bias.asnumpy())
        return quantized

    def load_float_weight(self, weight: np.ndarray, what: str = "weight") -> None:
        """Quantize ``[out, in]`` float values into ``weight`` / ``weight_scale``."""
        values, scales = quantize(self.bits, weight, self.group_size, what)
        write_parameter(self.weight, values)
        write_parameter(self.weight_scale, scales)

    def construct(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.kernel is not None:
            y = self.kernel(rows, self.weight, self.weight_scale)
        elif self.ascend_matmul is not None:
            y = self.ascend_matmul(rows, self.weight, self.weight_scale.astype(rows.dtype))
        else:
            y = ops.matmul(rows, self.dequantized(x.dtype).swapaxes(0, 1))
        return add_bias(y, self.bias).reshape(shape[:-1] + (self.out_features,))

    def dequantized(self, dtype) -> Tensor:
        """The ``[out, in]`` weight the quantized values stand for, with MindSpore's ops."""
        scale = self.weight_scale.astype(ms.float32)
        if self.bits == 8:
            return (self.weight.astype(ms.float32) * scale.expand_dims(1)).astype(dtype)
        packed = self.weight.astype(ms.int32)
        low, high = packed % 16, packed // 16
        values = ops.stack((low, high), -1).reshape(self.out_features, -1)
        values = (values - 16 * (values >= 8).astype(ms.int32)).astype(ms.float32)
        groups = scale.shape[1]
        values = (values.reshape(self.out_features, groups, -1) * scale.expand_dims(2)).reshape(self.out_features, -1)
        return values[:, :self.in_features].astype(dtype)

    def extend_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}, "
                f"bias={self.bias is not None}")


def add_bias(y: Tensor, bias: Optional[Parameter]) -> Tensor:
    if bias is None:
        return y
    return y + (bias if bias.dtype == y.dtype else bias.astype(y.dtype))


def make_linear(config, in_features: int, out_features: int, bias: bool, dtype, role: str = "block") -> nn.Cell:
    """A float or quantized linear layer, as ``config.quantization`` says for this ``role`` (block or output)."""
    quantization = config.quantization
    bits = quantization.bits_for(role) if quantization is not None else None
    if bits is None:
        return Linear(in_features, out_features, bias=bias, dtype=dtype)
    return QuantizedLinear(in_features, out_features, bits, quantization.group_size, bias=bias, dtype=dtype)


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
        self.gather_rows = cpu_kernels.gather_rows() if self.gather_bits else None
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
    """Upstream's RMSNorm; in inference on CPU one kernel of ours instead of eight small MindSpore ops."""

    def __init__(self, hidden_size: int, eps: float, dtype=ms.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer(One(), (hidden_size,), dtype), name="weight")
        self.fused = reference_ops.use_fused_kernels()
        self.kernel = cpu_kernels.rms_norm()  # None off CPU or without a C++ compiler
        self.eps_tensor = Tensor([eps], ms.float32)

    def construct(self, x: Tensor) -> Tensor:
        if self.kernel is not None and not self.training:
            return self.kernel(x, self.weight, self.eps_tensor)
        return reference_ops.rms_norm(x, self.weight, self.eps, self.fused)


class LayerNorm(nn.Cell):
    def __init__(self, hidden_size: int, eps: float, dtype=ms.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer(One(), (hidden_size,), dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (hidden_size,), dtype), name="bias")

    def construct(self, x: Tensor) -> Tensor:
        return reference_ops.layer_norm(x, self.weight, self.bias, self.eps)


def make_norm(config, dtype) -> nn.Cell:
    cls = RMSNorm if config.rmsnorm else LayerNorm
    return cls(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
