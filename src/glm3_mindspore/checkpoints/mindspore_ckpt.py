"""MindSpore ``.ckpt`` files, read and written without loading them whole.

A ``.ckpt`` is a protobuf ``Checkpoint`` message: a sequence of ``Value``
records ``{tag, tensor {dims, tensor_type, tensor_content}}``; MindSpore splits
tensors above 512 MiB into consecutive records with the same tag, and may append
a ``crc_num`` trailer. ``mindspore.load_checkpoint`` parses the whole file into
memory; here the protobuf wire format is walked over a memory map instead, so a
tensor costs memory only while it is copied into the model.

Names: MindFormers' glm3 checkpoints use the hub names except for the word
embedding; files are read with hub names and written with either
(:mod:`glm3_mindspore.mindformers.names`). Training checkpoints also hold
optimizer state and bookkeeping (``adam_m.*``, ``global_step``...): those are
skipped and reported as non-model entries.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..fileio import atomic_path
from ..parameter_io import numpy_bfloat16
from ..mindformers.names import from_mindformers_name, to_mindformers_name
from .errors import CheckpointError

logger = logging.getLogger(__name__)

# Optimizer state and training bookkeeping MindSpore / MindFormers store beside the weights.
_TRAINING_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "moments.", "accu_grads.", "accum_grads.",
                      "accumulate_grads.", "global_norm", "learning_rate.",
                      "exp_avg.", "exp_avg_sq.", "max_exp_avg_sq.")  # the last three: mindspore.experimental AdamW
_TRAINING_NAMES = {"global_step", "learning_rate", "scale_sense", "epoch_num", "step_num", "loss_scale",
                   "current_iterator_step", "last_overflow_iterator_step", "beta1_power", "beta2_power", "state_step"}

_SLICE_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE: tensors are written in records of at most this
_CRC_TRAILER = 17  # b"crc_num" + 10-byte big-endian CRC32

_TYPE_NAMES = {
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64, "BFloat16": "bfloat16",
    "Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
    "UInt32": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "Bool": np.bool_,
}


def _numpy_dtype(type_name: str) -> Optional[np.dtype]:
    spec = _TYPE_NAMES.get(type_name)
    if spec == "bfloat16":
        return numpy_bfloat16()
    return None if spec is None else np.dtype(spec)


def _type_name(dtype: np.dtype) -> str:
    for name in _TYPE_NAMES:
        if _numpy_dtype(name) == dtype:
            return name
    raise CheckpointError(f"cannot store numpy dtype {dtype} in a MindSpore checkpoint")


def is_training_state(name: str) -> bool:
    """Optimizer moments, step counters, loss scale: in training checkpoints, not model weights."""
    return name in _TRAINING_NAMES or name.startswith(_TRAINING_PREFIXES)


# ----------------------------------------------------------------------------- protobuf wire format
def _varint(buf, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise ValueError("bad varint")


def _fields(buf, pos: int, end: int) -> Iterator[Tuple[int, int, int, int]]:
    """``(field number, wire type, value or payload start, payload end)`` of one message."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("field runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            yield number, wire, pos, pos
        else:
            raise ValueError(f"unknown wire type {wire}")
    if pos != end:
        raise ValueError("message runs past its end")


class _Record:
    """One ``Value`` record: its tag and where its tensor bytes are in the file."""

    def __init__(self, buf, start: int, end: int) -> None:
        self.tag = ""
        self.dims: List[int] = []
        self.type_name = ""
        self.content = (0, 0)
        self.is_tensor = False
        for number, wire, a, b in _fields(buf, start, end):
            if number == 1 and wire == 2:
                self.tag = bytes(buf[a:b]).decode("utf-8")
            elif number == 2 and wire == 2:
                self.is_tensor = True
                self._read_tensor(buf, a, b)

    def _read_tensor(self, buf, start: int, end: int) -> None:
        for number, wire, a, b in _fields(buf, start, end):
            if number == 1 and wire == 0:
                self.dims.append(a)
            elif number == 1 and wire == 2:  # packed dims
                pos = a
                while pos < b:
                    dim, pos = _varint(buf, pos, b)
                    self.dims.append(dim)
            elif number == 2 and wire == 2:
                self.type_name = bytes(buf[a:b]).decode("utf-8")
            elif number == 3 and wire == 2:
                self.content = (a, b)


def _records(path: Path, buf, end: int) -> Iterator[_Record]:
    pos = 0
    try:
        while pos < end:
            key, pos = _varint(buf, pos, end)
            if key != (1 << 3 | 2):
                raise ValueError(f"unexpected field {key >> 3} (wire type {key & 7})")
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError(f"record at byte {pos} needs {length} bytes, the file ends at {end}")
            record = _Record(buf, pos, pos + length)
            pos += length
            yield record
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path}: corrupt, truncated or encrypted MindSpore checkpoint near byte {pos} ({exc})") from None


def _assemble(path: Path, buf, parts: List[_Record]) -> Optional[np.ndarray]:
    """The tensor of consecutive records with one tag; ``None`` for non-tensor entries (strings, maps)."""
    first = parts[0]
    dtype = _numpy_dtype(first.type_name)
    if not first.is_tensor or dtype is None:
        return None
    shape = tuple(first.dims) if first.dims != [0] else ()  # MindSpore writes scalars as dims [0]
    sizes = [p.content[1] - p.content[0] for p in parts]
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if sum(sizes) != needed:
        raise CheckpointError(f"{path}: tensor {first.tag!r} has {sum(sizes)} bytes for shape {shape} "
                              f"{first.type_name} (corrupt or truncated file)")
    if len(parts) == 1:
        return np.frombuffer(buf, dtype=dtype, count=needed // dtype.itemsize, offset=first.content[0]).reshape(shape)
    joined = np.empty(needed, dtype=np.uint8)
    at = 0
    for part, size in zip(parts, sizes):
        joined[at:at + size] = np.frombuffer(buf, dtype=np.uint8, count=size, offset=part.content[0])
        at += size
    return joined.view(dtype).reshape(shape)


def iter_ckpt(path: Path, skipped: Optional[List[str]] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """``(hub name, array)`` for the weights of a ``.ckpt``; training state is skipped (names into ``skipped``)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty MindSpore checkpoint")
    with open(path, "rb") as handle:
        buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    end = size - _CRC_TRAILER if size >= _CRC_TRAILER and buf[size - _CRC_TRAILER:size - 10] == b"crc_num" else size
    not_weights: List[str] = []
    group: List[_Record] = []
    for record in _records(path, buf, end):
        if group and record.tag != group[0].tag:
            yield from _emit(path, buf, group, not_weights)
            group = []
        group.append(record)
    if group:
        yield from _emit(path, buf, group, not_weights)
    if not_weights:
        logger.info("%s: skipped %d non-model entries (optimizer state / bookkeeping): %s%s", path,
                    len(not_weights), ", ".join(not_weights[:8]), " ..." if len(not_weights) > 8 else "")
    if skipped is not None:
        skipped.extend(not_weights)


def _emit(path: Path, buf, group: List[_Record], not_weights: List[str]) -> Iterator[Tuple[str, np.ndarray]]:
    name = group[0].tag
    array = None if is_training_state(name) else _assemble(path, buf, group)
    if array is None:
        not_weights.append(name)
    else:
        yield from_mindformers_name(name), array


# ----------------------------------------------------------------------------- writing
def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload_len: int) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(payload_len)


def _write_record(handle: BinaryIO, name: str, shape: Tuple[int, ...], type_name: str, content: memoryview) -> None:
    tag = name.encode("utf-8")
    dims = b"".join(b"\x08" + _encode_varint(d) for d in shape)
    type_bytes = type_name.encode("ascii")
    tensor_head = dims + _length_delimited(2, len(type_bytes)) + type_bytes + _length_delimited(3, content.nbytes)
    tensor_len = len(tensor_head) + content.nbytes
    value_head = _length_delimited(1, len(tag)) + tag + _length_delimited(2, tensor_len)
    handle.write(_length_delimited(1, len(value_head) + tensor_len) + value_head + tensor_head)
    handle.write(content)


def save_ckpt(path: Path, named_arrays: Iterable[Tuple[str, np.ndarray]], names: str = "mindformers") -> int:
    """Write a ``.ckpt`` ``mindspore.load_checkpoint`` reads, atomically; returns the tensor bytes written.

    ``names="mindformers"`` renames the embedding as MindFormers' glm3 models
    expect; ``"hub"`` keeps the hub names (what this package's models use).
    """
    if names not in ("mindformers", "hub"):
        raise ValueError(f"names must be 'mindformers' or 'hub', got {names!r}")
    rename = to_mindformers_name if names == "mindformers" else (lambda n: n)
    total = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for name, value in named_arrays:
            array = np.asarray(value)
            array = array if array.flags.c_contiguous else np.array(array, order="C")
            raw = memoryview(array.reshape(-1).view(np.uint8))
            type_name = _type_name(array.dtype)
            step = max(_SLICE_BYTES - _SLICE_BYTES % max(array.dtype.itemsize, 1), 1)
            for start in range(0, max(raw.nbytes, 1), step):
                _write_record(handle, rename(name), array.shape, type_name, raw[start:start + step])
            total += array.nbytes
    return total


def load_ckpt(path: Path) -> Dict[str, np.ndarray]:
    return dict(iter_ckpt(path))
