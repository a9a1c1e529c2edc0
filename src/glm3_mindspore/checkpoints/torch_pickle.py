"""Reading and writing PyTorch ``torch.save`` files (``pytorch_model*.bin``) without torch.

Since torch 1.6 such a file is a zip archive: ``<archive>/data.pkl`` is a pickle
of the state dict whose tensors point, through "persistent ids", at raw storages
``<archive>/data/<key>``. Unpickling is the dangerous part (a pickle can call any
importable function), so :class:`_TensorUnpickler` resolves only the handful of
globals a state dict needs, to local stand-ins: torch itself is never imported
and anything else is refused before it can run. Storages are memory-mapped from
the (uncompressed) zip entries, so a tensor costs memory only while it is copied.

Writing produces the same layout, readable by ``torch.load`` and by this reader.
"""

from __future__ import annotations

import collections
import logging
import mmap
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from ..fileio import atomic_path
from ..parameter_io import numpy_bfloat16
from .errors import CheckpointError

logger = logging.getLogger(__name__)


# torch typed-storage class name -> numpy dtype (bfloat16 resolved lazily: it needs MindSpore).
_STORAGE_DTYPES: Dict[str, Any] = {
    "HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
# torch dtype objects (``torch.float16``) as they appear in ``_rebuild_tensor_v3``.
_TORCH_DTYPES: Dict[str, Any] = {
    "float16": np.float16, "half": np.float16, "float32": np.float32, "float": np.float32,
    "float64": np.float64, "double": np.float64, "bfloat16": "bfloat16", "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_ALIGNMENT = 64  # torch aligns storages to 64 bytes so they can be memory-mapped


def _numpy_dtype(spec: Any) -> np.dtype:
    return numpy_bfloat16() if spec == "bfloat16" else np.dtype(spec)


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class or a ``torch.<dtype>`` object: just its numpy dtype."""

    def __init__(self, name: str, dtype: Any) -> None:
        self.name = name
        self.dtype = _numpy_dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TensorUnpickler(pickle.Unpickler):
    """An unpickler that can build a state dict of tensors and nothing else."""

    def __init__(self, file, path: Path, load_storage: Callable[[str, np.dtype, int], np.ndarray]) -> None:
        super().__init__(file)
        self.path = path
        self.load_storage = load_storage
        self.storages: Dict[str, np.ndarray] = {}
        self.globals: Dict[Tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        }

    def find_class(self, module: str, name: str) -> Any:
        found = self.globals.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name, _TORCH_DTYPES[name])
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _StorageType(name, np.uint8)
        raise CheckpointError(
            f"{self.path}: refusing to load {module}.{name}: this file asks to run code while unpickling; "
            "only tensors are allowed in a weight file (convert it to safetensors with trusted tools if "
            "you trust its origin)"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        """``('storage', storage type, key, location, numel)`` -> a flat numpy array of the storage."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r} in data.pkl")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, storage_type.dtype, int(numel))
        return self.storages[key]

    # ---- tensor rebuilding: numpy views of the storage, strides honoured
    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_: Any) -> np.ndarray:
        return self._view(storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, *_: Any) -> np.ndarray:
        return self._view(storage, storage_offset, size, stride)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, _requires_grad, _hooks, dtype,
                           *_: Any) -> np.ndarray:
        if not isinstance(dtype, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported tensor dtype {dtype!r}")
        usable = storage.nbytes - storage.nbytes % dtype.dtype.itemsize
        return self._view(storage[:usable].view(dtype.dtype), storage_offset, size, stride)

    def _view(self, storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
        if not isinstance(storage, np.ndarray):
            raise CheckpointError(f"{self.path}: tensor without a storage in data.pkl")
        shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(shape) != len(strides) or min(shape + strides + (int(offset),), default=0) < 0:
            raise CheckpointError(f"{self.path}: corrupt tensor record (size {shape}, stride {strides})")
        last = int(offset) + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else int(offset) - 1
        if last >= storage.size:
            raise CheckpointError(
                f"{self.path}: corrupt tensor record: element {last} of a storage of {storage.size} elements")
        if strides == _contiguous_strides(shape):
            count = int(np.prod(shape, dtype=np.int64))
            return storage[int(offset):int(offset) + count].reshape(shape)
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[int(offset):], shape=shape,
                                               strides=tuple(s * itemsize for s in strides), writeable=False)
        return view


def _rebuild_parameter(data, *_: Any) -> Any:
    """``torch.nn.Parameter`` wrappers: keep the tensor, drop ``requires_grad`` and hooks."""
    return data


def _c_order(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array (a copy only when needed; unlike ``np.ascontiguousarray`` keeps 0-d shapes)."""
    return array if array.flags.c_contiguous else np.array(array, order="C")


def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class _ZipStorages:
    """Storages of one torch zip archive, memory-mapped from its uncompressed entries."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str, big_endian: bool) -> None:
        self.path = path
        self.archive = archive
        self.prefix = prefix
        self.big_endian = big_endian
        self.size = path.stat().st_size
        with open(path, "rb") as handle:
            self.mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def __call__(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: storage {name!r} is missing from the archive") from None
        needed = numel * dtype.itemsize
        if info.file_size < needed:
            raise CheckpointError(f"{self.path}: storage {name!r} has {info.file_size} bytes, needs {needed}")
        start = self._data_offset(info)
        array = np.frombuffer(self.mapped, dtype=np.uint8, count=needed, offset=start)
        if self.big_endian:
            return _from_big_endian(array, dtype)
        return array.view(dtype)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        header = self.mapped[info.header_offset:info.header_offset + _LOCAL_HEADER.size]
        if len(header) < _LOCAL_HEADER.size:
            raise CheckpointError(f"{self.path}: truncated file (entry {info.filename!r})")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: corrupt zip entry {info.filename!r}")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > self.size:
            raise CheckpointError(f"{self.path}: truncated file: entry {info.filename!r} ends at byte "
                                  f"{start + info.file_size}, file has {self.size}")
        return start


def _from_big_endian(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Storages written on a big-endian machine: swap to native order (a copy)."""
    if dtype.itemsize == 1:
        return raw.view(dtype)
    swapped = raw.view(np.dtype(f">u{dtype.itemsize}")).astype(f"<u{dtype.itemsize}")
    return swapped.view(dtype)


def _open_archive(path: Path) -> zipfile.ZipFile:
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    if head.startswith(_LEGACY_MAGIC) or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: legacy (pre-1.6) torch serialization is not supported; re-save it with torch>=1.6 "
            "(torch.save(torch.load(f), f)) or convert it to safetensors")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        kind = "truncated or corrupt torch zip archive" if head.startswith(b"PK") else "not a torch checkpoint"
        raise CheckpointError(f"{path}: {kind} ({exc})") from None
    _refuse_compressed_entries(path, archive)
    return archive


def _refuse_compressed_entries(path: Path, archive: zipfile.ZipFile) -> None:
    """torch.save stores every entry uncompressed; a compressed one would be inflated whole into memory.

    Its inflated size is whatever the archive claims (a 436 KB file can claim
    800 MB), so such a file is refused before anything is read.
    """
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            archive.close()
            raise CheckpointError(
                f"{path}: zip entry {info.filename!r} is compressed, which torch.save never does; refusing to "
                "inflate it into memory. Re-save the file with torch.save, or re-pack it uncompressed (zip -0)")


def _unwrap_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The tensor mapping: the top level, or ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found a pickled {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
            return inner
    return obj


def iter_torch_file(path: Path) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, array)`` of a ``torch.save`` zip file; arrays are read-only views where possible."""
    path = Path(path)
    archive = _open_archive(path)
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"{path}: not a torch checkpoint (no <archive>/data.pkl entry)")
        prefix = pickles[0][: -len("/data.pkl")]
        order = f"{prefix}/byteorder"
        big_endian = order in archive.namelist() and archive.read(order).strip() == b"big"
        storages = _ZipStorages(path, archive, prefix, big_endian)
        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: corrupt data.pkl: {exc}") from None
        import io

        unpickler = _TensorUnpickler(io.BytesIO(data), path, storages)
        try:
            state = unpickler.load()
        except CheckpointError:
            raise
        except Exception as exc:  # any malformed pickle: name the file, never a deep traceback
            raise CheckpointError(f"{path}: corrupt data.pkl ({type(exc).__name__}: {exc})") from None
    tensors = _unwrap_state_dict(state, path)
    skipped = [str(k) for k, v in tensors.items() if not isinstance(v, np.ndarray)]
    if skipped:
        logger.warning("%s: ignoring non-tensor entries %s", path, ", ".join(skipped))
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            yield str(name), _c_order(value)


# ----------------------------------------------------------------------------- writing
def _storage_name(dtype: np.dtype) -> str:
    for name, spec in _STORAGE_DTYPES.items():
        if name != "UntypedStorage" and _numpy_dtype(spec) == dtype:
            return name
    raise CheckpointError(f"cannot store numpy dtype {dtype} in a torch checkpoint")


def _pickle_int(value: int) -> bytes:
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if -(2 ** 31) <= value < 2 ** 31:
        return pickle.BININT + struct.pack("<i", value)
    encoded = pickle.encode_long(value)
    return pickle.LONG1 + bytes([len(encoded)]) + encoded


def _pickle_str(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded


def _pickle_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _pickle_tuple(items) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _state_dict_pickle(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``data.pkl`` torch writes for an ``OrderedDict`` of tensors, storage i = tensor i.

    Written opcode by opcode (protocol 2, as torch uses) because the globals it
    names (``torch._utils._rebuild_tensor_v2``...) must not be imported here.
    """
    empty_ordered_dict = _pickle_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    out = [pickle.PROTO + b"\x02", empty_ordered_dict, pickle.MARK]
    for key, (name, array) in enumerate(arrays.items()):
        storage_id = _pickle_tuple([
            _pickle_str("storage"), _pickle_global("torch", _storage_name(array.dtype)),
            _pickle_str(str(key)), _pickle_str("cpu"), _pickle_int(array.size)])
        args = _pickle_tuple([
            storage_id + pickle.BINPERSID, _pickle_int(0),
            _pickle_tuple(_pickle_int(n) for n in array.shape),
            _pickle_tuple(_pickle_int(s) for s in _contiguous_strides(array.shape)),
            pickle.NEWFALSE, empty_ordered_dict])
        out += [_pickle_str(name), _pickle_global("torch._utils", "_rebuild_tensor_v2"), args, pickle.REDUCE]
    out += [pickle.SETITEMS, pickle.STOP]
    return b"".join(out)


def _write_entry(archive: zipfile.ZipFile, name: str, data) -> None:
    """One uncompressed entry whose data starts on a 64-byte boundary (padding in the extra field)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = memoryview(data).nbytes
    zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # the rule ZipFile.open applies
    header = _LOCAL_HEADER.size + len(name.encode("utf-8")) + (20 if zip64 else 0)
    offset = archive.fp.tell()
    pad = -(offset + header + 4) % _ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"\0" * pad  # "FB": padding, as torch's writer does
    with archive.open(info, mode="w", force_zip64=zip64) as handle:
        handle.write(data)


def save_torch_file(path: Path, tensors: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``tensors`` as a ``torch.save``-compatible zip atomically; returns the tensor bytes written.

    ``metadata`` is accepted for symmetry with :func:`save_safetensors`; the torch
    format has no place for it and it is dropped.
    """
    arrays = {str(k): _c_order(np.asarray(v)) for k, v in tensors.items()}
    total = 0
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            _write_entry(archive, "archive/data.pkl", _state_dict_pickle(arrays))
            _write_entry(archive, "archive/byteorder", b"little")
            for key, array in enumerate(arrays.values()):
                _write_entry(archive, f"archive/data/{key}", memoryview(array.reshape(-1).view(np.uint8)))
                total += array.nbytes
            _write_entry(archive, "archive/version", b"3\n")
    return total
