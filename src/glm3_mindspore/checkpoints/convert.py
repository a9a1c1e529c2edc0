"""Weights from one format into another without building the model (what ``glm3 convert`` runs).

Tensors stream from the source one at a time, are cast and quantized on the
way if asked, and are written as a MindSpore ``.ckpt`` or a hub-layout folder
(safetensors shards, ``config.json`` and tokenizer files from the source), so
memory stays near one output shard. A failed conversion leaves no folder it
created behind. Checking the tensors against a model config is the caller's
(it needs the model: ``ChatGLM3PreTrainedModel.check_checkpoint``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..parameter_io import numpy_bfloat16
from ..quantization import QuantizationConfig, quantize_tensors
from .errors import CheckpointError
from .hub_layout import copy_companion_files, iter_tensors, write_weights
from .mindspore_ckpt import save_ckpt

FORMATS = ("ckpt", "safetensors")
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

NamedArrays = Iterable[Tuple[str, np.ndarray]]


@dataclass
class Converted:
    """What :func:`convert_weights` wrote."""

    files: List[Path]
    tensor_bytes: int
    skipped: List[str] = field(default_factory=list)  # non-model entries of a training .ckpt
    notes: List[str] = field(default_factory=list)


def cast_floats(tensors: NamedArrays, dtype_name: Optional[str]) -> Iterator[Tuple[str, np.ndarray]]:
    """Floating-point tensors cast to ``dtype_name`` (``float32``, ``float16``, ``bfloat16``); ints and bools
    pass as they are."""
    if dtype_name is None:
        yield from tensors
        return
    if dtype_name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype_name!r}")
    target = numpy_bfloat16() if dtype_name == "bfloat16" else np.dtype(dtype_name)
    for name, array in tensors:
        floating = array.dtype.kind == "f" or array.dtype == numpy_bfloat16()
        yield name, array.astype(target) if floating and array.dtype != target else array


def convert_weights(files: List[Path], dst: Path, to: str, *, dtype: Optional[str] = None,
                    quantization: Optional[QuantizationConfig] = None, names: str = "mindformers",
                    max_shard_size="5GB", companions_from=None, progress: bool = True) -> Converted:
    """Stream ``files`` into ``dst``: one ``.ckpt`` (``to="ckpt"``, with MindFormers' or the hub's ``names``)
    or a hub folder (``to="safetensors"``; ``config.json`` and tokenizer files copied from ``companions_from``,
    ``torch_dtype`` and quantization updated)."""
    if to not in FORMATS:
        raise ValueError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    if quantization is not None and to != "safetensors":
        raise CheckpointError("quantized weights are written as a hub folder: MindFormers' .ckpt has no "
                              "quantized format")
    skipped: List[str] = []
    tensors = cast_floats(iter_tensors(files, progress=progress, skipped=skipped), dtype)
    if quantization is not None:
        tensors = quantize_tensors(tensors, quantization)
    if to == "ckpt":
        return Converted([dst], save_ckpt(dst, tensors, names=names), skipped)
    created = not dst.exists()
    try:
        dst.mkdir(parents=True, exist_ok=True)
        written = write_weights(dst, tensors, max_shard_size=max_shard_size)
        notes = copy_companion_files(companions_from, dst, dtype, quantization) if companions_from else []
    except BaseException:
        if created:
            shutil.rmtree(dst, ignore_errors=True)
        raise
    tensor_bytes = sum(p.stat().st_size for p in written if p.suffix == ".safetensors")
    return Converted(written, tensor_bytes, skipped, notes)


__all__ = ["Converted", "FLOAT_DTYPES", "FORMATS", "cast_floats", "convert_weights"]
