"""The static KV cache: per-layer key/value buffers written in place, every row at its own length.

A :class:`StaticCache` holds ``B`` rows of ``L`` slots for each layer, as
parameters, so compiled graphs write and read the same storage and nothing
recompiles while tokens are generated. Row ``b``'s next tokens go to slots
``lengths[b], lengths[b] + 1, ...``; ``valid`` marks the slots that hold real
tokens (not left padding, not free), and a query at slot ``q`` reads the
valid slots ``<= q`` of its row. Rows are independent: one can be reset and
refilled (a new request joining a running batch) while the others keep
their place.

The model calls :meth:`StaticCache.begin_step` once per forward pass (it
records which new tokens are real and gives every layer the slots and the
attention bias) and :meth:`StaticCache.update` once per layer. Lengths move
on the host side (:meth:`StaticCache.advance`), between calls.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..parameter_io import write_parameter
from .reference_ops import MASKED


class StaticCache(nn.Cell):
    """Key/value buffers ``[B, G, L, D]`` per layer, with per-row lengths and slot validity."""

    def __init__(self, num_layers: int, batch: int, groups: int, length: int, head_dim: int, dtype,
                 reserved: int = 0) -> None:
        super().__init__(auto_prefix=False)
        self.num_layers = num_layers
        self.batch = batch
        self.length = length
        self.reserved = reserved  # leading slots every row keeps (P-Tuning v2 prefixes)
        shape = (batch, groups, length, head_dim)
        tag = f"kv_cache.{id(self)}"
        zeros = lambda: Tensor(np.zeros(shape, np.float32), dtype)  # noqa: E731
        self.key = ms.ParameterTuple(
            [Parameter(zeros(), name=f"{tag}.{i}.key", requires_grad=False) for i in range(num_layers)])
        self.value = ms.ParameterTuple(
            [Parameter(zeros(), name=f"{tag}.{i}.value", requires_grad=False) for i in range(num_layers)])
        self.lengths = Parameter(Tensor(np.full(batch, reserved, np.int32)), name=f"{tag}.lengths", requires_grad=False)
        valid = np.zeros((batch, length), np.int32)
        valid[:, :reserved] = 1
        self.valid = Parameter(Tensor(valid), name=f"{tag}.valid", requires_grad=False)
        self.host_lengths = np.full(batch, reserved, np.int64)
        # Op by op only (Python values, constants in a compiled graph): the rows a step feeds
        # (None: all) and how many leading slots its queries may read (None: all).
        self.rows: Optional[Tensor] = None
        self.readable: Optional[int] = None

    # ------------------------------------------------------------ in the model
    def begin_step(self, attention_mask: Tensor, seq: int) -> Tuple[Tensor, Tensor]:
        """Record which of the step's ``seq`` new tokens are real; their slots ``[R, S]`` and the bias.

        ``attention_mask`` ``[R, S]`` is 1 for real tokens. The bias ``[R, 1, 1, S, K]``
        is 0 where a query may read a slot and very negative elsewhere.
        """
        slots = self.row_values(self.lengths).reshape(-1, 1) + ops.arange(seq, dtype=ms.int32).reshape(1, seq)
        rows = slots.shape[0]
        at = ops.stack((self.row_index(rows).reshape(rows, 1).broadcast_to((rows, seq)), slots), -1)
        valid = ops.scatter_nd_update(self.valid, at, attention_mask.astype(ms.int32))
        valid = self.readable_slots(self.row_values(valid))
        keys = valid.shape[1]
        readable = (ops.arange(keys, dtype=ms.int32).reshape(1, 1, keys) <= slots.reshape(rows, seq, 1))
        allowed = ops.logical_and(readable, (valid > 0).reshape(rows, 1, keys))
        bias = (1.0 - allowed.astype(ms.float32)) * MASKED
        return slots, bias.reshape(rows, 1, 1, seq, keys)

    def update(self, layer: int, key: Tensor, value: Tensor, slots: Tensor) -> Tuple[Tensor, Tensor]:
        """Write ``key``/``value`` ``[R, G, S, D]`` at ``slots`` of layer ``layer``; the readable buffers."""
        rows, groups, seq, _ = key.shape
        b = self.row_index(rows).reshape(rows, 1, 1, 1).broadcast_to((rows, groups, seq, 1))
        g = ops.arange(groups, dtype=ms.int32).reshape(1, groups, 1, 1).broadcast_to((rows, groups, seq, 1))
        s = slots.reshape(rows, 1, seq, 1).broadcast_to((rows, groups, seq, 1))
        at = ops.concat((b, g, s), -1)
        keys = ops.scatter_nd_update(self.key[layer], at, key.astype(self.key[layer].dtype))
        values = ops.scatter_nd_update(self.value[layer], at, value.astype(self.value[layer].dtype))
        keys = self.readable_slots(self.row_values(keys), axis=2)
        values = self.readable_slots(self.row_values(values), axis=2)
        return keys.astype(key.dtype), values.astype(value.dtype)

    def row_index(self, rows: int) -> Tensor:
        return ops.arange(rows, dtype=ms.int32) if self.rows is None else self.rows

    def row_values(self, tensor: Tensor) -> Tensor:
        return tensor if self.rows is None else ops.gather(tensor, self.rows, 0)

    def readable_slots(self, tensor: Tensor, axis: int = 1) -> Tensor:
        if self.readable is None or self.readable >= self.length:
            return tensor
        return tensor[:, :self.readable] if axis == 1 else tensor[:, :, :self.readable]

    # ------------------------------------------------------------- host side
    def advance(self, counts) -> None:
        """Rows moved on by ``counts`` tokens (an int for all rows, or one per row)."""
        self.host_lengths = self.host_lengths + np.asarray(counts, np.int64)
        if int(self.host_lengths.max()) > self.length:
            raise ValueError(f"the KV cache holds {self.length} slots; a row needs {int(self.host_lengths.max())}")
        write_parameter(self.lengths, self.host_lengths.astype(np.int32))

    def feed(self, rows: Optional[Sequence[int]], readable: Optional[int]) -> None:
        """Op by op: the next steps feed these rows (None: all) and read that many leading slots."""
        self.rows = None if rows is None else Tensor(np.asarray(rows, np.int32))
        self.readable = readable

    def reset_rows(self, rows: Sequence[int]) -> None:
        """Free rows for new sequences: empty but for the reserved slots (which keep their keys)."""
        rows = list(rows)
        valid = self.valid.asnumpy().copy()
        valid[rows] = 0
        valid[rows, :self.reserved] = 1
        write_parameter(self.valid, valid)
        self.host_lengths[rows] = self.reserved
        write_parameter(self.lengths, self.host_lengths.astype(np.int32))

    def write_reserved(self, layer: int, key: np.ndarray, value: np.ndarray) -> None:
        """Put ``[B, G, reserved, D]`` keys and values (a learned prefix) in the reserved slots."""
        for buffer, values in ((self.key[layer], key), (self.value[layer], value)):
            data = buffer.asnumpy().copy()
            data[:, :, :self.reserved] = values
            write_parameter(buffer, data)  # in place: compiled steps read this storage

    def move_rows_from(self, other: "StaticCache", moves: Sequence[Tuple[int, int]]) -> None:
        """Take rows of another cache with at most as many slots: ``(theirs, mine)`` pairs.

        A batch resized (same slots, other rows) or a conversation's cache grown
        (more slots, same rows). Only the slots the moved rows have filled are
        copied; this cache's other rows keep what they hold.
        """
        if other.length > self.length:
            raise ValueError(f"a cache of {other.length} slots cannot move rows into one of {self.length}")
        if not moves:
            return
        theirs, mine = [m[0] for m in moves], [m[1] for m in moves]
        used = int(other.host_lengths[theirs].max())
        for dst, src in zip(list(self.key) + list(self.value), list(other.key) + list(other.value)):
            data = dst.asnumpy().copy()
            data[mine, :, :used] = src.asnumpy()[theirs, :, :used]
            write_parameter(dst, data)
        valid = self.valid.asnumpy().copy()
        valid[mine] = 0
        valid[mine, :other.length] = other.valid.asnumpy()[theirs]
        write_parameter(self.valid, valid)
        self.host_lengths[mine] = other.host_lengths[theirs]
        write_parameter(self.lengths, self.host_lengths.astype(np.int32))

    def reorder_rows(self, rows: Tensor) -> Tensor:
        """Beam search: row ``i`` becomes what row ``rows[i]`` holds, in every buffer (compiled)."""
        for i in range(self.num_layers):
            ops.assign(self.key[i], ops.gather(self.key[i], rows, 0))
            ops.assign(self.value[i], ops.gather(self.value[i], rows, 0))
        ops.assign(self.valid, ops.gather(self.valid, rows, 0))
        return rows
