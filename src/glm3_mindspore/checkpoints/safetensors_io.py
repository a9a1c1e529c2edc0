"""Reading and writing the safetensors format, here rather than through the ``safetensors`` package, for two reasons.

* Memory: reading memory-maps the file and gives each tensor as a read-only
  view of the map, so a tensor costs memory only while it is copied into the
  model, and :func:`~glm3_mindspore.checkpoints.mapped.release_pages` drops
  its pages afterwards; loading the 6B model never holds its weights twice.
  ``safetensors.numpy`` (``load_file``, ``safe_open(...).get_tensor``) copies
  every tensor out of the file instead.
* bfloat16: tensors come back, and are written from, MindSpore's numpy
  ``bfloat16`` dtype (numpy has none); the ``safetensors`` package's numpy API
  has no bfloat16 of its own.

The format is an 8-byte little-endian header length, a JSON header mapping
names to ``{dtype, shape, data_offsets}``, then the raw bytes; files written
here load in ``safetensors`` and upstream's PyTorch code, and theirs load here
(``tests/test_checkpoints.py``).
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from ..fileio import atomic_path
from ..parameter_io import numpy_bfloat16
from .errors import CheckpointError

_HEADER_LIMIT = 100 * 1024 * 1024


_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _to_numpy_dtype(name: str, path: Path, key: str):
    if name == "BF16":
        return numpy_bfloat16()
    if name not in _NUMPY_DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {name}")
    return _NUMPY_DTYPES[name]


def _to_safetensors_dtype(dtype: np.dtype) -> str:
    if dtype == numpy_bfloat16():
        return "BF16"
    for name, np_type in _NUMPY_DTYPES.items():
        if dtype == np_type:
            return name
    raise CheckpointError(f"cannot store numpy dtype {dtype} in safetensors")


def read_header(path: Path) -> Tuple[Dict[str, dict], Dict[str, str], int]:
    """Tensor entries, ``__metadata__`` and the byte offset where data starts."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(_HEADER_LIMIT, size - 8):
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header (claims {header_len} bytes)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    for key, entry in header.items():
        begin, end = entry["data_offsets"]
        if data_start + end > size or begin > end:
            raise CheckpointError(f"{path}: truncated file: tensor {key!r} ends at byte {data_start + end}, file has {size}")
    return header, metadata, data_start


def iter_safetensors(path: Path) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, array)`` in file order; arrays are read-only views of a memory map."""
    path = Path(path)
    header, _, data_start = read_header(path)
    with open(path, "rb") as handle:
        if not header:
            return
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        dtype = np.dtype(_to_numpy_dtype(entry["dtype"], path, key))
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        count = int(np.prod(shape)) if shape else 1
        if count * dtype.itemsize != end - begin:
            raise CheckpointError(f"{path}: tensor {key!r} has {end - begin} bytes for shape {shape} {entry['dtype']}")
        yield key, np.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)


def load_safetensors(path: Path) -> Dict[str, np.ndarray]:
    return dict(iter_safetensors(path))


def save_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``tensors`` atomically; returns the bytes of tensor data written."""
    header: Dict[str, dict] = {}
    offset = 0
    arrays = {}
    for key, value in tensors.items():
        array = np.require(value, requirements="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
        header[key] = {"dtype": _to_safetensors_dtype(array.dtype), "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays[key] = array
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align data to 8 bytes, as the reference writer does
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)))
            handle.write(encoded)
            for array in arrays.values():
                handle.write(memoryview(array.reshape(-1).view(np.uint8)))
    return offset
