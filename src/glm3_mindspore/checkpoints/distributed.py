"""Distributed checkpoints: per-rank slices with MindSpore strategy files, merged, split and resharded.

Layout on disk, as MindSpore / MindFormers write it::

    output/checkpoint/rank_0/<prefix>_rank_0-<epoch>_<step>.ckpt    # that rank's slices (last file in name order wins)
    output/checkpoint/rank_1/...
    output/strategy/ckpt_strategy_rank_0.ckpt                         # protobuf ParallelStrategyMap, one per rank

A strategy file holds, for each parameter, the device matrix of its stage,
its ``tensor_map`` (for each tensor dimension the device axis it is split
over, counted from the right, ``-1`` for none) and the parallel optimizer's
``opt_weight_shard_step`` / ``opt_weight_shard_size``; with pipeline
parallelism each stage's file holds its own parameters and the files of all
stages are merged into one (``mindspore.merge_pipeline_strategys``: names
become ``<stage>-<name>``).

Two engines merge and transform slices:

* ``mindspore``: ``mindspore.transform_checkpoints`` (what MindFormers'
  ``transform_ckpt.py`` calls). It runs on CPU; it loads each needed rank file
  whole.
* ``numpy``: implemented here from the same rules (the rank's coordinate in
  the device matrix picks its slice of every split dimension; with optimizer
  sharding, rank ``r`` holds chunk ``(r // step) % size`` of its slice's first
  dimension). Files are memory-mapped and the output is written tensor by
  tensor, so memory stays near the largest parameter. It also rebuilds layouts
  missing from a strategy file (LoRA runs saved with MindSpore's default
  ``only_trainable_params: True`` describe the adapter only) from the run
  config's ``parallel_config``.

Both give the same arrays (``tests/test_parallel_checkpoints.py`` checks them
against each other and against the unsplit weights).

Slices are written for a :class:`ShardedLayout`, which
:class:`glm3_mindspore.parallel.Layout` is: this module knows the files, the
parallel package knows where each parameter goes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from ..fileio import read_json_object
from ..mindformers.names import from_mindformers_name, to_mindformers_name
from .errors import CheckpointError
from .hub_layout import iter_tensors, resolve_weight_files
from .mindspore_ckpt import iter_ckpt, save_ckpt

logger = logging.getLogger(__name__)

STRATEGY_FILE = "ckpt_strategy_rank_{rank}.ckpt"
ENGINES = ("auto", "mindspore", "numpy")
NAMES = ("mindformers", "hub")
_RANK_DIR = re.compile(r"^rank_(\d+)$")
_STAGE_PREFIX = re.compile(r"^(\d+)-(.+)$")


# ----------------------------------------------------------------------------- strategy entries
@dataclass
class SliceLayout:
    """One parameter's entry of a strategy file."""

    dev_matrix: List[int]
    tensor_map: List[int]
    opt_step: int = 0
    opt_size: int = 0
    stages: List[int] = field(default_factory=lambda: [0])

    @property
    def devices(self) -> int:
        return int(np.prod(self.dev_matrix)) if self.dev_matrix else 1

    def splits(self) -> List[int]:
        return [1 if t < 0 else self.dev_matrix[len(self.dev_matrix) - 1 - t] for t in self.tensor_map]

    def slice_index(self, local_rank: int) -> List[int]:
        coord, rest = [0] * len(self.dev_matrix), local_rank
        for i in range(len(self.dev_matrix) - 1, -1, -1):
            coord[i] = rest % self.dev_matrix[i]
            rest //= self.dev_matrix[i]
        return [0 if t < 0 else coord[len(self.dev_matrix) - 1 - t] for t in self.tensor_map]

    def opt_index(self, local_rank: int) -> int:
        if self.opt_size <= 1:
            return 0
        return (local_rank // max(self.opt_step, 1)) % self.opt_size

    def full_shape(self, stored_shape: Sequence[int]) -> Tuple[int, ...]:
        shape = [d * s for d, s in zip(stored_shape, self.splits())]
        if shape and self.opt_size > 1:
            shape[0] *= self.opt_size
        return tuple(shape)

    def stored_slice(self, full: np.ndarray, local_rank: int) -> np.ndarray:
        """What ``local_rank`` stores of ``full``."""
        splits = self.splits()
        sizes = [d // s for d, s in zip(full.shape, splits)]
        index = [slice(i * n, (i + 1) * n) for i, n in zip(self.slice_index(local_rank), sizes)]
        part = full[tuple(index)]
        if self.opt_size > 1 and part.ndim:
            chunk = part.shape[0] // self.opt_size
            j = self.opt_index(local_rank)
            part = part[j * chunk:(j + 1) * chunk]
        return part


class ShardedLayout(Protocol):
    """What writing slices and strategy files needs of a parallel layout (``glm3_mindspore.parallel.Layout``)."""

    world_size: int
    num_stages: int
    params: Mapping[str, Any]  # hub name -> an entry with ``shape`` and ``trainable``

    def stage_of_rank(self, rank: int) -> int:
        """The pipeline stage global ``rank`` runs."""

    def local_rank(self, rank: int) -> int:
        """``rank``'s place among the ranks of its stage."""

    def slice_layouts(self) -> Dict[int, Dict[str, SliceLayout]]:
        """``stage -> {hub name: SliceLayout}``."""


def _renamer(names: str):
    if names not in NAMES:
        raise ValueError(f"names must be one of {', '.join(NAMES)}, got {names!r}")
    return to_mindformers_name if names == "mindformers" else (lambda n: n)


def layout_entries(layout: ShardedLayout, names: str = "mindformers") -> Dict[int, Dict[str, SliceLayout]]:
    """``stage -> {checkpoint name: SliceLayout}`` of a layout, with MindFormers' or the hub's names."""
    rename = _renamer(names)
    return {stage: {rename(name): entry for name, entry in entries.items()}
            for stage, entries in layout.slice_layouts().items()}


def all_entries(layout: ShardedLayout) -> Dict[str, SliceLayout]:
    """Every parameter's :class:`SliceLayout` (hub names), whatever its stage."""
    return {name: entry for entries in layout.slice_layouts().values() for name, entry in entries.items()}


def _proto():
    from mindspore.train import node_strategy_pb2

    return node_strategy_pb2


def strategy_message(entries: Mapping[str, SliceLayout], stage: int, merged: bool = False):
    """A ``ParallelStrategyMap`` holding ``entries`` for ``stage`` (``merged``: names prefixed ``<stage>-``)."""
    pb = _proto()
    message = pb.ParallelStrategyMap()
    message.current_stage = 1 if merged else stage
    item = message.parallel_strategy_item.add()
    item.node_name = f"glm3_mindspore/stage{stage}"
    item.parallel_strategys.stage = stage
    strategy = item.parallel_strategys.parallel_strategy.add()
    strategy.dim.append(1)
    for name, entry in entries.items():
        layout_item = message.parallel_layout_item.add()
        layout_item.param_name = f"{stage}-{name}" if merged else name
        layouts = layout_item.parallel_layouts
        layouts.dev_matrix.add().dim.extend(int(d) for d in entry.dev_matrix)
        layouts.tensor_map.add().dim.extend(int(t) for t in entry.tensor_map)
        layouts.param_split_shape.add()
        layouts.indices_offset.add()
        layouts.field = 0
        layouts.opt_weight_shard_step = int(entry.opt_step)
        layouts.opt_weight_shard_size = int(entry.opt_size)
    return message


def write_strategy_files(layout: ShardedLayout, folder, names: str = "mindformers",
                         only_trainable: bool = False) -> List[Path]:
    """One strategy file per rank (``ckpt_strategy_rank_<r>.ckpt``), as a training run writes them.

    ``only_trainable=True`` reproduces MindSpore's default (frozen parameters left
    out), for testing the LoRA pitfall.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = layout_entries(layout, names)
    rename = _renamer(names)
    trainable = {rename(name) for name, p in layout.params.items() if p.trainable}
    written = []
    for rank in range(layout.world_size):
        stage = layout.stage_of_rank(rank)
        kept = {k: v for k, v in entries[stage].items() if not only_trainable or k in trainable}
        path = folder / STRATEGY_FILE.format(rank=rank)
        path.write_bytes(strategy_message(kept, stage).SerializeToString())
        written.append(path)
    return written


def write_merged_strategy(layout: ShardedLayout, path, names: str = "mindformers") -> Path:
    """All stages in one file, the way ``mindspore.merge_pipeline_strategys`` writes it (plain file when pp = 1)."""
    pb = _proto()
    entries = layout_entries(layout, names)
    if layout.num_stages == 1:
        message = strategy_message(entries[0], 0)
    else:
        message = pb.ParallelStrategyMap()
        message.current_stage = 1
        for stage, stage_entries in entries.items():
            part = strategy_message(stage_entries, stage, merged=True)
            message.parallel_strategy_item.extend(part.parallel_strategy_item)
            message.parallel_layout_item.extend(part.parallel_layout_item)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(message.SerializeToString())
    return Path(path)


def _strategy_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"strategy file or folder not found: {path}")
    files = sorted(path.glob("*.ckpt")) or sorted(path.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{path}: no strategy files (*.ckpt or *.json)")
    return files


def _read_one(path: Path) -> Tuple[Dict[str, SliceLayout], Optional[int]]:
    """Entries of one strategy file (protobuf or JSON) and the stage it belongs to (None: merged)."""
    if path.suffix == ".json":
        data = read_json_object(path, CheckpointError)
        items = data.get("parallel_layout_item") or {}
        strategy_items = data.get("parallel_strategy_item") or {}
        stage = next(iter(strategy_items.values()), {}).get("stage", 0) if strategy_items else 0
        raw = {name: (item.get("dev_matrix", []), item.get("tensor_map", []), item.get("opt_weight_shard_step", 0),
                      item.get("opt_weight_shard_size", 0)) for name, item in items.items()}
    else:
        message = _proto().ParallelStrategyMap()
        try:
            message.ParseFromString(path.read_bytes())
        except Exception as exc:  # protobuf raises DecodeError
            raise CheckpointError(f"{path}: not a MindSpore strategy file ({exc})") from None
        stage = message.parallel_strategy_item[0].parallel_strategys.stage if message.parallel_strategy_item else 0
        raw = {}
        for item in message.parallel_layout_item:
            layouts = item.parallel_layouts
            maps = [list(m.dim) for m in layouts.tensor_map]
            if len(maps) > 1:
                raise CheckpointError(f"{path}: {item.param_name} has a multi-axis tensor map {maps}; merge it with "
                                      "--engine mindspore")
            raw[item.param_name] = (list(layouts.dev_matrix[0].dim) if layouts.dev_matrix else [],
                                    maps[0] if maps else [], layouts.opt_weight_shard_step,
                                    layouts.opt_weight_shard_size)
    prefixed = bool(raw) and all(_STAGE_PREFIX.match(name) for name in raw)
    entries: Dict[str, SliceLayout] = {}
    for name, (dev, tmap, step, size) in raw.items():
        entry_stage = stage
        if prefixed:
            match = _STAGE_PREFIX.match(name)
            entry_stage, name = int(match.group(1)), match.group(2)
        key = from_mindformers_name(name)
        if key in entries:
            entries[key].stages.append(entry_stage)
        else:
            entries[key] = SliceLayout(list(dev), list(tmap), int(step), int(size), [entry_stage])
    return entries, (None if prefixed else stage)


def read_strategy(path) -> Dict[str, SliceLayout]:
    """Parameter layouts (keyed by hub name) of a strategy file or a folder of per-rank / per-stage files."""
    merged: Dict[str, SliceLayout] = {}
    seen_stages = set()
    for file in _strategy_files(Path(path)):
        entries, stage = _read_one(file)
        if stage is not None and stage in seen_stages:
            continue  # the ranks of one stage write identical files
        if stage is not None:
            seen_stages.add(stage)
        for name, entry in entries.items():
            if name in merged:
                merged[name].stages += [s for s in entry.stages if s not in merged[name].stages]
            else:
                merged[name] = entry
    return merged


# ----------------------------------------------------------------------------- rank files
def rank_checkpoint_files(src_dir) -> Dict[int, Path]:
    """``rank -> .ckpt`` of ``src_dir/rank_<r>/`` (the last file in name order, as MindSpore picks)."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {src_dir}")
    found = {}
    for child in src_dir.iterdir():
        match = _RANK_DIR.match(child.name)
        if match and child.is_dir():
            files = sorted(child.glob("*.ckpt"))
            if files:
                found[int(match.group(1))] = files[-1]
    if not found:
        raise FileNotFoundError(f"{src_dir}: no rank_<N>/*.ckpt folders")
    return dict(sorted(found.items()))


def split_checkpoint(arrays: Mapping[str, np.ndarray], layout: ShardedLayout, dst_dir, prefix: str = "glm3",
                     names: str = "mindformers", strategy_dir=None, only_trainable_strategy: bool = False) -> List[Path]:
    """Write every rank's slices of ``arrays`` (hub names, full tensors) as ``dst/rank_<r>/<prefix>_rank_<r>.ckpt``.

    Strategy files go to ``strategy_dir`` (default ``dst/../strategy``).
    """
    dst_dir = Path(dst_dir)
    missing = [n for n in layout.params if n not in arrays]
    if missing:
        raise CheckpointError(f"the weights lack {len(missing)} parameters of the layout, e.g. {missing[:3]}")
    for name, p in layout.params.items():
        if tuple(np.shape(arrays[name])) != p.shape:
            raise CheckpointError(f"{name}: weights have shape {tuple(np.shape(arrays[name]))}, layout expects {p.shape}")
    entries = layout.slice_layouts()
    written = []
    for rank in range(layout.world_size):
        stage, local = layout.stage_of_rank(rank), layout.local_rank(rank)
        pieces = ((name, np.array(entry.stored_slice(np.asarray(arrays[name]), local), order="C"))
                  for name, entry in entries[stage].items())
        folder = dst_dir / f"rank_{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prefix}_rank_{rank}.ckpt"
        save_ckpt(path, pieces, names=names)
        written.append(path)
    write_strategy_files(layout, Path(strategy_dir) if strategy_dir else dst_dir.parent / "strategy", names,
                         only_trainable=only_trainable_strategy)
    return written


# ----------------------------------------------------------------------------- merging (numpy engine)
class _RankReader:
    """Lazily opened rank files: ``name -> array`` (memory-mapped) per rank."""

    def __init__(self, files: Mapping[int, Path]) -> None:
        self.files = dict(files)
        self._cache: Dict[int, Dict[str, np.ndarray]] = {}

    def tensors(self, rank: int) -> Dict[str, np.ndarray]:
        if rank not in self._cache:
            if rank not in self.files:
                raise CheckpointError(f"the checkpoint of rank {rank} is needed but missing "
                                      f"(found ranks {sorted(self.files)})")
            self._cache[rank] = dict(iter_ckpt(self.files[rank]))
        return self._cache[rank]

    def names(self, rank: int) -> List[str]:
        return list(self.tensors(rank))


def merge_tensor(name: str, entry: SliceLayout, reader: _RankReader) -> np.ndarray:
    """The full tensor ``name`` assembled from the ranks of the first stage holding it."""
    for stage in entry.stages:
        ranks = range(stage * entry.devices, (stage + 1) * entry.devices)
        if all(r in reader.files for r in ranks) and name in reader.tensors(ranks[0]):
            break
    else:
        stage = entry.stages[0]
        ranks = range(stage * entry.devices, (stage + 1) * entry.devices)
    first = reader.tensors(ranks[0]).get(name)
    if first is None:
        raise CheckpointError(f"{name}: not in the checkpoint of rank {ranks[0]} ({reader.files.get(ranks[0])})")
    if not entry.tensor_map and first.ndim == 0:
        return np.array(first)
    if len(entry.tensor_map) != first.ndim:
        raise CheckpointError(f"{name}: the strategy maps {len(entry.tensor_map)} dimensions, the slice of rank "
                              f"{ranks[0]} has shape {first.shape}")
    full = np.empty(entry.full_shape(first.shape), dtype=first.dtype)
    splits = entry.splits()
    sizes = [d // s for d, s in zip(full.shape, splits)]
    filled = set()
    for local, rank in enumerate(ranks):
        part = reader.tensors(rank).get(name)
        if part is None:
            raise CheckpointError(f"{name}: missing from the checkpoint of rank {rank} ({reader.files[rank]})")
        key = (tuple(entry.slice_index(local)), entry.opt_index(local))
        if key in filled:
            continue  # a replica of a slice already placed
        index = [slice(i * n, (i + 1) * n) for i, n in zip(key[0], sizes)]
        if entry.opt_size > 1:
            chunk = sizes[0] // entry.opt_size
            start = key[0][0] * sizes[0] + key[1] * chunk
            index[0] = slice(start, start + chunk)
        target = full[tuple(index)]
        if target.shape != part.shape:
            raise CheckpointError(f"{name}: rank {rank} holds shape {part.shape}, its place in the strategy is "
                                  f"{target.shape}")
        full[tuple(index)] = part
        filled.add(key)
    expected = int(np.prod(splits)) * max(entry.opt_size, 1)
    if len(filled) != expected:
        raise CheckpointError(f"{name}: {len(filled)} of {expected} slices found on ranks {list(ranks)}")
    return full


def merged_tensors(strategy: Mapping[str, SliceLayout], rank_files: Mapping[int, Path],
                   fallback: Optional[Mapping[str, SliceLayout]] = None,
                   report: Optional[Dict[str, List[str]]] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """``(hub name, full array)`` of every weight in the rank files, in rank 0's order then later stages'.

    Parameters the strategy does not describe take their layout from
    ``fallback`` (e.g. rebuilt from the run's ``parallel_config``); without one
    they must be the same, unsplit, on every rank holding them, else an error
    explains the ``only_trainable_params`` pitfall.
    """
    reader = _RankReader(rank_files)
    order: List[str] = []
    for rank in sorted(rank_files):
        for name in reader.names(rank):
            if name not in order:
                order.append(name)
    missing = [n for n in order if n not in strategy]
    rebuilt, unresolved = [], []
    for name in missing:
        if fallback is not None and name in fallback:
            rebuilt.append(name)
        else:
            unresolved.append(name)
    if unresolved and len(rank_files) > 1:
        inconsistent = [n for n in unresolved if not _same_everywhere(n, reader)]
        if inconsistent:
            raise CheckpointError(
                f"the strategy has no layout for {len(unresolved)} parameters and {len(inconsistent)} of them differ "
                f"between ranks (e.g. {inconsistent[:3]}): they are split but their split is unknown. The run saved "
                "strategies for trainable parameters only (MindSpore's default only_trainable_params: True; the "
                "pitfall of LoRA runs). Pass --config RUN.yaml to rebuild the missing layouts from its "
                "parallel_config, or rerun with only_trainable_params: False (glm3's parallel training sets it).")
    if report is not None:
        report["rebuilt"] = rebuilt
        report["unsplit"] = unresolved
    for name in order:
        entry = strategy.get(name) or (fallback or {}).get(name)
        if entry is None:
            holder = next(r for r in sorted(rank_files) if name in reader.tensors(r))
            yield name, np.array(reader.tensors(holder)[name])
        else:
            yield name, merge_tensor(name, entry, reader)


def _same_everywhere(name: str, reader: _RankReader) -> bool:
    arrays = [reader.tensors(r)[name] for r in sorted(reader.files) if name in reader.tensors(r)]
    return all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])


# ----------------------------------------------------------------------------- MindSpore engine
def merged_strategy_file(strategy_path, workdir) -> Optional[str]:
    """One strategy file for MindSpore: the file itself, or the stage files of a folder merged."""
    path = Path(strategy_path)
    if path.is_file():
        return str(path)
    files = _strategy_files(path)
    stages = {}
    for file in files:
        entries, stage = _read_one(file)
        if stage is None:
            return str(file)  # already a merged file
        stages.setdefault(stage, file)
    if len(stages) == 1:
        return str(next(iter(stages.values())))
    import mindspore as ms

    src = Path(workdir) / "stage_strategies"
    src.mkdir(parents=True, exist_ok=True)
    for stage, file in stages.items():
        (src / f"stage_{stage}.ckpt").write_bytes(file.read_bytes())
    dst = Path(workdir) / "merged_strategy.ckpt"
    ms.merge_pipeline_strategys(str(src), str(dst))
    return str(dst)


def transform_with_mindspore(src_dir, dst_dir, prefix: str, src_strategy, dst_strategy=None) -> Dict[int, Path]:
    """``mindspore.transform_checkpoints``: ``src_dir/rank_*`` -> ``dst_dir/rank_*/<prefix><rank>.ckpt``."""
    import mindspore as ms

    with tempfile.TemporaryDirectory() as work:
        src_file = merged_strategy_file(src_strategy, work)
        dst_file = merged_strategy_file(dst_strategy, Path(work) / "dst") if dst_strategy else None
        ms.transform_checkpoints(str(src_dir), str(dst_dir), prefix, src_file, dst_file)
    return rank_checkpoint_files(dst_dir)


def strategy_is_complete(strategy: Mapping[str, SliceLayout], rank_files: Mapping[int, Path]) -> List[str]:
    """Names in the rank files the strategy does not describe (empty: complete)."""
    reader = _RankReader({r: f for r, f in rank_files.items()})
    names = []
    for rank in sorted(rank_files):
        for name in reader.names(rank):
            if name not in strategy and name not in names:
                names.append(name)
    return names


# ----------------------------------------------------------------------------- merging a run
def is_rank_folder(path) -> bool:
    """A folder holding ``rank_<N>/`` slices (rather than full weights)."""
    path = Path(path)
    return path.is_dir() and any(_RANK_DIR.match(p.name) for p in path.iterdir())


def check_ranks(strategy: Mapping[str, SliceLayout], rank_files: Mapping[int, Path]) -> None:
    """Every rank the strategy spans has its slices."""
    if not strategy:
        raise CheckpointError("the strategy file describes no parameters")
    needed = set()
    for entry in strategy.values():
        for stage in entry.stages:
            needed.update(range(stage * entry.devices, (stage + 1) * entry.devices))
    missing = sorted(needed - set(rank_files))
    if missing:
        raise CheckpointError(f"the strategy spans {len(needed)} ranks but rank_<N> folders are missing for ranks "
                              f"{missing[:16]}{' ...' if len(missing) > 16 else ''}")


def choose_engine(engine: str, without_layout: Sequence[str]) -> str:
    """``auto``: MindSpore's when the strategy describes every parameter, else numpy (which can rebuild them)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "mindspore" if not without_layout else "numpy"
    if engine == "mindspore" and without_layout:
        raise CheckpointError(
            f"the strategy has no layout for {len(without_layout)} parameters (e.g. {list(without_layout)[:3]}): "
            "MindSpore's transform_checkpoints would copy rank 0's slice of them; use --engine numpy with "
            "--config RUN.yaml (the run saved strategies for trainable parameters only: it needed "
            "only_trainable_params: False)")
    return engine


@dataclass
class RankCheckpoints:
    """A run's per-rank slices and the strategy that lays them out, checked to fit each other."""

    src: Path
    strategy_path: Path
    files: Dict[int, Path]
    strategy: Dict[str, SliceLayout]
    without_layout: List[str]  # parameters in the files the strategy does not describe

    @classmethod
    def open(cls, src, strategy) -> "RankCheckpoints":
        files = rank_checkpoint_files(src)
        entries = read_strategy(strategy)
        check_ranks(entries, files)
        return cls(Path(src), Path(strategy), files, entries, strategy_is_complete(entries, files))

    @property
    def world_size(self) -> int:
        return len(self.files)

    def tensors(self, fallback: Optional[Mapping[str, SliceLayout]] = None,
                report: Optional[Dict[str, List[str]]] = None) -> Iterator[Tuple[str, np.ndarray]]:
        """The full tensors, merged by the numpy engine (see :func:`merged_tensors`)."""
        return merged_tensors(self.strategy, self.files, fallback, report)

    @contextlib.contextmanager
    def merged(self, engine: str, fallback: Optional[Mapping[str, SliceLayout]] = None,
               report: Optional[Dict[str, List[str]]] = None, workdir=None) -> Iterator[Iterator[Tuple[str, np.ndarray]]]:
        """The full tensors, merged by ``engine`` (MindSpore's writes one ``.ckpt`` in a temporary folder)."""
        if engine == "numpy":
            yield self.tensors(fallback, report)
            return
        with tempfile.TemporaryDirectory(dir=workdir) as work:
            out = transform_with_mindspore(self.src, Path(work) / "merged", "merged", self.strategy_path)
            yield iter_ckpt(out[0])

    def merge_to_ckpt(self, dst, prefix: str, engine: str, names: str = "mindformers",
                      fallback: Optional[Mapping[str, SliceLayout]] = None,
                      report: Optional[Dict[str, List[str]]] = None) -> Path:
        """One ``.ckpt`` at ``dst/rank_0/<prefix>0.ckpt``, where MindSpore's ``transform_checkpoints`` puts it."""
        if engine == "mindspore":
            return transform_with_mindspore(self.src, dst, prefix, self.strategy_path)[0]
        path = Path(dst) / "rank_0" / f"{prefix}0.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_ckpt(path, self.tensors(fallback, report), names=names)
        return path

    def transform(self, dst, prefix: str, dst_strategy) -> Dict[int, Path]:
        """Into another layout's slices with MindSpore's engine (``transform_ckpt.py``'s ``--dst_ckpt_strategy``)."""
        if self.without_layout:
            choose_engine("mindspore", self.without_layout)  # raises: MindSpore would copy rank 0's slices
        return transform_with_mindspore(self.src, dst, prefix, self.strategy_path, dst_strategy)


# ----------------------------------------------------------------------------- resharding
def full_weights(src) -> Iterator[Tuple[str, np.ndarray]]:
    """The weights of a ``.ckpt``, safetensors file or hub folder, without the rotary buffer."""
    for name, array in iter_tensors(resolve_weight_files(src)):
        if not name.endswith("rotary_pos_emb.inv_freq"):
            yield name, array


def reshard(src, dst, layout: ShardedLayout, strategy=None, engine: str = "numpy", prefix: str = "glm3",
            names: str = "mindformers") -> Tuple[Path, Path]:
    """Full weights, or a run's slices with their ``strategy``, into ``layout``'s slices.

    Writes ``dst/checkpoint/rank_<r>/<prefix>_rank_<r>.ckpt`` and the strategy files in
    ``dst/strategy/``; returns both folders. ``engine``: ``numpy`` merges and
    splits tensor by tensor; ``mindspore`` hands both strategies to
    ``mindspore.transform_checkpoints``.
    """
    src, dst = Path(src), Path(dst)
    distributed = is_rank_folder(src)
    if distributed and strategy is None:
        raise CheckpointError(f"{src} holds per-rank slices: give their strategy")
    dst.mkdir(parents=True, exist_ok=True)
    checkpoint_dir, strategy_dir = dst / "checkpoint", dst / "strategy"
    with tempfile.TemporaryDirectory(dir=dst) as work:
        if engine == "mindspore":
            _reshard_with_mindspore(src, strategy if distributed else None, layout, Path(work), checkpoint_dir,
                                    strategy_dir, prefix, names)
        else:
            merged_file = Path(work) / "merged.ckpt"
            if distributed:
                slices = RankCheckpoints.open(src, strategy)
                save_ckpt(merged_file, slices.tensors(), names="hub")
            else:
                save_ckpt(merged_file, full_weights(src), names="hub")
            arrays = {k: v for k, v in iter_ckpt(merged_file) if k in layout.params}  # memory-mapped
            split_checkpoint(arrays, layout, checkpoint_dir, prefix, names, strategy_dir)
    return checkpoint_dir, strategy_dir


def _reshard_with_mindspore(src: Path, strategy, layout: ShardedLayout, work: Path, checkpoint_dir: Path,
                            strategy_dir: Path, prefix: str, names: str) -> None:
    """MindSpore's engine: slices (with their ``strategy``) or, without one, full weights, which MindSpore reads
    from ``rank_0/`` of a folder of their own."""
    write_strategy_files(layout, strategy_dir, names)
    if strategy is not None:
        transform_with_mindspore(src, checkpoint_dir, prefix + "_rank_", strategy, strategy_dir)
        return
    import mindspore as ms

    (work / "src" / "rank_0").mkdir(parents=True)
    save_ckpt(work / "src" / "rank_0" / "full.ckpt", full_weights(src), names=names)
    ms.transform_checkpoints(str(work / "src"), str(checkpoint_dir), prefix + "_rank_", None,
                             merged_strategy_file(strategy_dir, work / "dst"))


__all__ = [
    "ENGINES", "NAMES", "RankCheckpoints", "ShardedLayout", "SliceLayout", "all_entries", "check_ranks",
    "choose_engine", "full_weights", "is_rank_folder", "layout_entries", "merge_tensor", "merged_strategy_file",
    "merged_tensors", "rank_checkpoint_files", "read_strategy", "reshard", "split_checkpoint", "strategy_is_complete",
    "strategy_message", "transform_with_mindspore", "write_merged_strategy", "write_strategy_files",
]
