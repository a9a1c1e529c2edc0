"""Weight-only quantization of the linear layers: int8 per output channel, int4 per group.

The formats (what the CPU kernels read, and what a quantized hub folder stores
under each layer's ``weight`` and ``weight_scale``, upstream's names):

* int8: ``weight`` int8 ``[N, K]`` and one float16 scale per output row,
  ``w[n, k] = weight[n, k] * scale[n]`` (symmetric, ``scale = max |w[n]| / 127``,
  as upstream's ``quantize(8)``).
* int4: values in ``[-8, 7]``, two a byte (element ``2i`` of a row in the low
  nibble of byte ``i``, two's complement), rows padded with zeros to whole
  groups: ``weight`` uint8 ``[N, groups * G / 2]``; one float16 scale per group
  of ``G`` consecutive values of a row, ``weight_scale`` ``[N, groups]``,
  ``w[n, k] = q[n, k] * scale[n, k // G]``. The scale maps the group's value of
  largest magnitude to -8 exactly (llama.cpp's ``q4_0`` rule), which uses all
  sixteen levels. ``G`` must be a multiple of 16; widths it does not divide
  end in a shorter group (the padding is zeros).

Embeddings, norms and activations are never quantized. A quantized model's
``config.json`` carries ``quantization_bit`` (upstream's field) and a
Hugging-Face-style ``quantization_config`` describing the format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import numpy as np

QUANT_METHOD = "glm3-weight-only"
SUPPORTED_BITS = (4, 8)
DEFAULT_GROUP_SIZE = 128
ROW_CHUNK = 1024  # rows converted to float32 at a time, so quantizing never holds a widened copy of a weight


# The linear layers quantization applies to, by attribute name, and their role (QuantizationConfig.bits_for).
QUANTIZABLE_LAYERS = {"query_key_value": "block", "dense": "block", "dense_h_to_4h": "block",
                      "dense_4h_to_h": "block", "output_layer": "output"}


class QuantizationError(ValueError):
    """A quantization setting or a quantized tensor is invalid; the message names it."""


@dataclass(frozen=True)
class QuantizationConfig:
    """Which weights are quantized, and how (see the module docstring)."""

    bits: int
    group_size: int = DEFAULT_GROUP_SIZE
    output_layer_bits: Optional[int] = 8  # the output layer's bits (None: kept in the model's dtype)
    extras: Dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise QuantizationError(f"quantization bits must be 8 or 4, got {self.bits!r}")
        if self.output_layer_bits not in (None,) + SUPPORTED_BITS:
            raise QuantizationError(f"output_layer_bits must be 8, 4 or null, got {self.output_layer_bits!r}")
        if not isinstance(self.group_size, int) or self.group_size < 16 or self.group_size % 16:
            raise QuantizationError(f"int4 group_size must be a multiple of 16, got {self.group_size!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "QuantizationConfig":
        """Read ``config.json``'s ``quantization_config``."""
        if not isinstance(values, Mapping):
            raise QuantizationError(f"quantization_config must be an object, got {type(values).__name__}")
        method = values.get("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise QuantizationError(f"quantization_config.quant_method {method!r} is not supported; "
                                    f"this package reads {QUANT_METHOD!r} (weight-only int8/int4)")
        known = {"quant_method", "bits", "group_size", "output_layer_bits"}
        if "bits" not in values:
            raise QuantizationError("quantization_config has no 'bits'")
        return cls(bits=values["bits"], group_size=values.get("group_size", DEFAULT_GROUP_SIZE),
                   output_layer_bits=values.get("output_layer_bits", 8),
                   extras={k: v for k, v in values.items() if k not in known})

    def to_dict(self) -> Dict[str, Any]:
        values = {"quant_method": QUANT_METHOD, "bits": self.bits, "output_layer_bits": self.output_layer_bits,
                  "group_size": self.group_size, "scale_dtype": "float16",
                  "int4_packing": "two's complement, element 2i in the low nibble of byte i"}
        values.update(self.extras)
        return values

    def bits_for(self, layer: str) -> Optional[int]:
        """Bits of a linear layer by role: ``"block"`` (attention and MLP) or ``"output"``."""
        return self.output_layer_bits if layer == "output" else self.bits


def _as_float_rows(weight: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.asarray(weight[start:stop], dtype=np.float32)


def _check_matrix(weight: np.ndarray, what: str) -> Tuple[int, int]:
    if weight.ndim != 2 or 0 in weight.shape:
        raise QuantizationError(f"{what}: only 2-D weights [out, in] are quantized, got shape {weight.shape}")
    return weight.shape


def quantize_int8(weight: np.ndarray, what: str = "weight") -> Tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` float -> int8 ``[N, K]`` and float16 scales ``[N]``, a chunk of rows at a time."""
    rows, cols = _check_matrix(weight, what)
    values = np.empty((rows, cols), dtype=np.int8)
    scales = np.empty(rows, dtype=np.float16)
    for start in range(0, rows, ROW_CHUNK):
        block = _as_float_rows(weight, start, start + ROW_CHUNK)
        if not np.isfinite(block).all():
            raise QuantizationError(f"{what}: holds non-finite values (rows {start}-{start + len(block) - 1})")
        scale = _storable_scale(np.abs(block).max(axis=1) / 127.0)
        values[start:start + len(block)] = np.clip(np.rint(block / scale.astype(np.float32)[:, None]), -127, 127)
        scales[start:start + len(block)] = scale
    return values, scales


def quantize_int4(weight: np.ndarray, group_size: int = DEFAULT_GROUP_SIZE,
                  what: str = "weight") -> Tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` float -> packed uint8 ``[N, groups * G / 2]`` and float16 scales ``[N, groups]``."""
    rows, cols = _check_matrix(weight, what)
    groups = -(-cols // group_size)
    padded = groups * group_size
    packed = np.empty((rows, padded // 2), dtype=np.uint8)
    scales = np.empty((rows, groups), dtype=np.float16)
    for start in range(0, rows, ROW_CHUNK):
        block = _as_float_rows(weight, start, start + ROW_CHUNK)
        if not np.isfinite(block).all():
            raise QuantizationError(f"{what}: holds non-finite values (rows {start}-{start + len(block) - 1})")
        if padded != cols:
            block = np.pad(block, ((0, 0), (0, padded - cols)))
        grouped = block.reshape(len(block), groups, group_size)
        # the value of largest magnitude, with its sign, becomes -8
        extreme = np.take_along_axis(grouped, np.abs(grouped).argmax(axis=2)[..., None], axis=2)[..., 0]
        scale = _storable_scale(extreme / -8.0)
        q = np.clip(np.rint(grouped / scale.astype(np.float32)[..., None]), -8, 7).astype(np.int8)
        packed[start:start + len(block)] = pack_int4(q.reshape(len(block), padded))
        scales[start:start + len(block)] = scale
    return packed, scales


def _storable_scale(scale: np.ndarray) -> np.ndarray:
    """Scales as float16, never 0 (an all-zero row or group keeps scale 1 and values 0)."""
    magnitude = np.abs(scale)
    if (magnitude > np.finfo(np.float16).max).any():
        raise QuantizationError("a weight exceeds float16 range times the quantization levels; "
                                "it cannot be quantized with float16 scales")
    stored = scale.astype(np.float16)
    tiny = np.abs(stored) < np.finfo(np.float16).tiny  # zero, or lost in float16's subnormals
    stored[tiny & (magnitude == 0)] = 1.0
    stored[tiny & (magnitude > 0)] = np.copysign(np.finfo(np.float16).tiny, scale[tiny & (magnitude > 0)])
    return stored


def pack_int4(values: np.ndarray) -> np.ndarray:
    """int values in [-8, 7], ``[..., 2k]`` -> uint8 ``[..., k]`` (even elements in the low nibble)."""
    nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[..., k]`` -> int8 ``[..., 2k]`` in [-8, 7]."""
    low = (packed & 0xF).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    values = np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
    return np.where(values >= 8, values - 16, values).astype(np.int8)


def dequantize(bits: int, weight: np.ndarray, scale: np.ndarray, in_features: int) -> np.ndarray:
    """The float32 ``[N, in_features]`` weight a quantized pair stands for (for tests and merging checks)."""
    if bits == 8:
        return weight.astype(np.float32) * scale.astype(np.float32)[:, None]
    values = unpack_int4(weight).astype(np.float32)
    group = values.shape[1] // scale.shape[1]
    values = values.reshape(values.shape[0], scale.shape[1], group) * scale.astype(np.float32)[..., None]
    return values.reshape(values.shape[0], -1)[:, :in_features]


def quantized_shapes(bits: int, out_features: int, in_features: int,
                     group_size: int = DEFAULT_GROUP_SIZE) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Shapes of ``weight`` and ``weight_scale`` for a ``[out, in]`` layer."""
    if bits == 8:
        return (out_features, in_features), (out_features,)
    groups = -(-in_features // group_size)
    return (out_features, groups * group_size // 2), (out_features, groups)


def quantize(bits: int, weight: np.ndarray, group_size: int = DEFAULT_GROUP_SIZE,
             what: str = "weight") -> Tuple[np.ndarray, np.ndarray]:
    if bits == 8:
        return quantize_int8(weight, what)
    if bits == 4:
        return quantize_int4(weight, group_size, what)
    raise QuantizationError(f"quantization bits must be 8 or 4, got {bits!r}")


def role_of(checkpoint_name: str) -> Optional[str]:
    """``"block"`` / ``"output"`` for the weight of a quantizable layer (by its hub name), else None."""
    parts = checkpoint_name.split(".")
    if len(parts) < 2 or parts[-1] != "weight" or "prefix_encoder" in parts:
        return None
    return QUANTIZABLE_LAYERS.get(parts[-2])


def quantize_tensors(tensors: Iterable[Tuple[str, np.ndarray]],
                     config: QuantizationConfig) -> Iterator[Tuple[str, np.ndarray]]:
    """Hub tensors with the quantizable layers' float weights replaced by ``weight`` + ``weight_scale``.

    One tensor at a time, so a checkpoint is quantized while it streams.
    """
    for name, array in tensors:
        role = role_of(name)
        bits = config.bits_for(role) if role is not None else None
        if bits is None:
            yield name, array
            continue
        values, scales = quantize(bits, array, config.group_size, name)
        yield name, values
        yield name + "_scale", scales
