"""The hub's weight layout: which files hold the weights, reading them shard by shard, writing shards.

Preference when a folder or repo has several formats: sharded safetensors,
single safetensors, sharded ``pytorch_model*.bin``, single ``pytorch_model.bin``.
A path to one weight file (``.safetensors``, ``.bin``, ``.ckpt``) is read as is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..fileio import atomic_copy, atomic_write_text, read_json_object
from ..hub import HubOptions, ModelFileNotFoundError, is_local, resolve_file
from .errors import CheckpointError
from .safetensors_io import iter_safetensors, save_safetensors

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_CANDIDATES = ((SAFE_INDEX, True), (SAFE_WEIGHTS, False), (TORCH_INDEX, True), (TORCH_WEIGHTS, False))
_SHARD_PATTERN = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$")

NamedArrays = Iterable[Tuple[str, np.ndarray]]


def resolve_weight_files(name_or_path, options: HubOptions = HubOptions()) -> List[Path]:
    """The weight files of a model folder, hub repo, or single weight file, in load order."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return [path]
    for filename, is_index in _CANDIDATES:
        found = resolve_file(name_or_path, filename, options, required=False)
        if found is None:
            continue
        if not is_index:
            return [found]
        shards = _shards_from_index(found)
        return [resolve_file(name_or_path, shard, options) for shard in shards]
    where = str(path) if is_local(name_or_path) else f"hub repository {name_or_path!r}"
    raise ModelFileNotFoundError(
        f"no weights in {where}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


def _shards_from_index(index_file: Path) -> List[str]:
    weight_map = read_json_object(index_file, CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_file}: not a valid weight index (needs a 'weight_map' object)")
    shards: List[str] = []
    for shard in weight_map.values():
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise CheckpointError(f"{index_file}: shard name {shard!r} points outside the model folder")
        if shard not in shards:
            shards.append(shard)
    return shards


def _read(path: Path, skipped: Optional[List[str]]) -> Iterator[Tuple[str, np.ndarray]]:
    suffix = path.suffix
    if suffix == ".safetensors":
        return iter_safetensors(path)
    if suffix in (".bin", ".pt", ".pth"):
        from .torch_pickle import iter_torch_file

        return iter_torch_file(path)
    if suffix == ".ckpt":
        from .mindspore_ckpt import iter_ckpt

        return iter_ckpt(path, skipped)
    raise CheckpointError(f"{path}: unknown weight file type {suffix!r} (expected .safetensors, .bin or .ckpt)")


def iter_tensors(files: Iterable[Path], progress: bool = False,
                 skipped: Optional[List[str]] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """``(name, array)`` from each file in turn; only one shard is open at a time.

    ``skipped`` collects the non-model entries (optimizer state, bookkeeping) of
    MindSpore training checkpoints, which are left out.
    """
    files = [Path(f) for f in files]
    bar = None
    if progress and len(files) > 1 or progress and files and files[0].stat().st_size > 1 << 30:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="loading weights")
    try:
        for file in files:
            done = 0
            for name, array in _read(file, skipped):
                yield name, array
                if bar is not None:  # tensor by tensor, so one large file still shows progress
                    bar.update(array.nbytes)
                    done += array.nbytes
            if bar is not None:
                bar.update(max(file.stat().st_size - done, 0))  # headers, padding, skipped entries
    finally:
        if bar is not None:
            bar.close()


def tensor_shapes(files: Iterable[Path]) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every tensor in ``files``, read from the headers (the data is memory-mapped, not read)."""
    return {name: tuple(array.shape) for name, array in iter_tensors(files)}


def parse_size(size: Union[int, str]) -> int:
    """``"5GB"`` / ``"500MB"`` / ``"2GiB"`` / ``1000000`` -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", size.upper())
    if not match:
        raise ValueError(f"cannot read size {size!r}; use e.g. '5GB', '500MB' or a number of bytes")
    number, unit, suffix = float(match.group(1)), match.group(2), match.group(3) or "B"
    base = 1024 if suffix == "IB" else 1000
    return int(number * base ** "_KMGT".index(unit or "_"))


def write_weights(
    folder: Path,
    named_arrays: NamedArrays,
    max_shard_size: Union[int, str] = "5GB",
    safe_serialization: bool = True,
) -> List[Path]:
    """Write shards (``model-0000i-of-0000N.safetensors`` + index, or one file) into ``folder``.

    Shards are written under temporary names and renamed at the end; weight
    files of an earlier save that the new layout does not use are then removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    save = save_safetensors if safe_serialization else _torch_saver()
    pending: List[Tuple[Path, List[str], int]] = []
    shard: Dict[str, np.ndarray] = {}
    shard_bytes = 0
    total = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            tmp = folder / f".shard-{len(pending):05d}.{ext}.partial"
            save(tmp, shard, {"format": "pt"})
            pending.append((tmp, list(shard), shard_bytes))
            shard, shard_bytes = {}, 0

    try:
        for name, array in named_arrays:
            if shard and shard_bytes + array.nbytes > limit:
                flush()
            shard[name] = array
            shard_bytes += array.nbytes
            total += array.nbytes
        flush()
    except BaseException:  # shards already written under temporary names must not stay behind
        for tmp, _, _ in pending:
            tmp.unlink(missing_ok=True)
        raise

    count = len(pending)
    final: List[Path] = []
    weight_map: Dict[str, str] = {}
    for i, (tmp, names, _) in enumerate(pending):
        target = folder / (f"{stem}.{ext}" if count == 1 else f"{stem}-{i + 1:05d}-of-{count:05d}.{ext}")
        tmp.replace(target)
        final.append(target)
        weight_map.update({n: target.name for n in names})
    index_name = SAFE_INDEX if safe_serialization else TORCH_INDEX
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(folder / index_name, json.dumps(index, indent=2) + "\n")
        final.append(folder / index_name)
    _remove_stale_weights(folder, {p.name for p in final})
    return final


def _remove_stale_weights(folder: Path, keep: set) -> None:
    for path in folder.iterdir():
        stale_index = path.name in (SAFE_INDEX, TORCH_INDEX) and path.name not in keep
        if path.name not in keep and (_SHARD_PATTERN.match(path.name) or stale_index):
            path.unlink()


def _torch_saver():
    from .torch_pickle import save_torch_file

    return save_torch_file


# Hub files that travel with the weights (data only; the .py files are copied, never run).
COMPANION_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py", "quantization.py")


def copy_companion_files(source, dst: Path, torch_dtype: Optional[str] = None, quantization=None,
                         options: HubOptions = HubOptions()) -> List[str]:
    """``config.json`` (``torch_dtype`` and quantization updated) and the tokenizer / generation files of a
    folder, hub repo or weight file's folder, copied beside weights written to ``dst``. Returns notes for the
    user (no ``config.json`` found)."""
    where = Path(source).parent if Path(source).is_file() else source
    config_file = resolve_file(where, "config.json", options, required=False)
    notes = []
    if config_file is None:
        notes.append(f"no config.json beside {source}; pass --config FOLDER_OR_REPO to include one")
    else:
        config = read_json_object(config_file, CheckpointError)
        if torch_dtype:
            config["torch_dtype"] = torch_dtype
        if quantization is not None:
            config.update(quantization_bit=quantization.bits, quantization_config=quantization.to_dict())
            config.pop("auto_map", None)  # upstream's code cannot read the quantized format
        atomic_write_text(dst / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for name in COMPANION_FILES:
        found = resolve_file(where, name, options, required=False)
        if found is not None:
            atomic_copy(found, dst / name)
    return notes
