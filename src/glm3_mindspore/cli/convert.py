"""``glm3 convert``: hub checkpoint <-> MindSpore ``.ckpt`` / safetensors, without torch and without a model.

Replaces the two steps of MindFormers' glm3 model card (torch -> ``.pth`` ->
``.ckpt``). The tensors' names and shapes are first checked against the config,
as ``from_pretrained`` does (a wrong, transposed or missing tensor is an error
and nothing is written); then they are streamed from the source one at a time,
cast if asked and written out, so memory stays near one output shard; the
model itself is never built. A failed conversion leaves no new output behind.

    glm3 convert --src THUDM/chatglm3-6b --dst glm3_6b.ckpt --to ckpt
    glm3 convert --src glm3_6b.ckpt --config THUDM/chatglm3-6b --dst chatglm3-6b-st --to safetensors --dtype bf16
    glm3 convert --src THUDM/chatglm3-6b --dst chatglm3-6b-int4 --to safetensors --quantize int4

``--quantize`` quantizes the linear layers as they stream
(:mod:`glm3_mindspore.quantization`); the folder loads with ``from_pretrained``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..quantization import DEFAULT_GROUP_SIZE, QuantizationConfig, QuantizationError, quantize_tensors
from . import CliError
from .common import check_output_file, check_output_folder

_DTYPE_NAMES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
                "fp32": "float32", "float32": "float32"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert weights: hub folder/repo/file -> .ckpt or hub-layout safetensors",
        description="Stream weights from a hub folder, hub repo id or single weight file (.safetensors, "
                    ".bin, .ckpt) into a MindSpore .ckpt or a hub-layout safetensors folder. No torch needed.")
    parser.add_argument("--src", required=True, help="model folder, hub repo id, or one weight file")
    parser.add_argument("--dst", required=True, type=Path,
                        help="output: a .ckpt file (--to ckpt) or a folder (--to safetensors)")
    parser.add_argument("--to", required=True, choices=("ckpt", "safetensors"), help="output format")
    parser.add_argument("--dtype", choices=sorted(_DTYPE_NAMES), help="cast floating-point weights to this dtype")
    parser.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    parser.add_argument("--quantize", choices=("int8", "int4"),
                        help="quantize the linear layers (weight-only; --to safetensors)")
    parser.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE,
                        help=f"int4 values per scale (default {DEFAULT_GROUP_SIZE})")
    parser.add_argument("--names", choices=("mindformers", "hub"), default="mindformers",
                        help=".ckpt parameter names: MindFormers' (embedding_table, default) or the hub's")
    parser.add_argument("--config", help="folder or repo to take config.json and tokenizer files from "
                                         "(default: beside --src)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --dst")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    dst: Path = args.dst.expanduser()
    if args.to == "ckpt":
        check_output_file(dst, ".ckpt", args.overwrite)
    else:
        check_output_folder(dst, args.overwrite)
    quantization = _quantization(args)
    files = _weight_files(args.src)
    _check_against_config(files, args.config or args.src)
    skipped: List[str] = []
    tensors = _cast(_read(files, skipped, progress=not args.no_progress), _DTYPE_NAMES.get(args.dtype or ""))
    if quantization is not None:
        tensors = quantize_tensors(tensors, quantization)
    created = not dst.exists()
    try:
        written, total = _write(tensors, dst, args, quantization)
    except BaseException:
        if created and args.to == "safetensors":  # a failed convert leaves no folder behind
            shutil.rmtree(dst, ignore_errors=True)
        raise
    if skipped:
        print(f"skipped {len(skipped)} non-model entries (optimizer state / bookkeeping): "
              f"{', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}")
    print(f"wrote {total / 1e9:.2f} GB to {', '.join(str(p) for p in written[:3])}"
          f"{' ...' if len(written) > 3 else ''}")
    return 0


def _quantization(args) -> Optional[QuantizationConfig]:
    if args.quantize is None:
        return None
    if args.to != "safetensors":
        raise CliError("--quantize writes a hub folder: use --to safetensors (MindFormers' .ckpt has no "
                       "quantized format)")
    try:
        return QuantizationConfig(bits=int(args.quantize[3:]), group_size=args.group_size)
    except QuantizationError as exc:
        raise CliError(f"--group-size: {exc}") from None


def _write(tensors: Iterator[Tuple[str, np.ndarray]], dst: Path, args,
           quantization: Optional[QuantizationConfig]) -> Tuple[List[Path], int]:
    """Write the output; returns the files written and the tensor bytes."""
    from ..checkpoints import write_weights
    from ..checkpoints.hub_layout import copy_companion_files
    from ..checkpoints.mindspore_ckpt import save_ckpt

    if args.to == "ckpt":
        return [dst], save_ckpt(dst, tensors, names=args.names)
    dst.mkdir(parents=True, exist_ok=True)
    written = write_weights(dst, tensors, max_shard_size=args.max_shard_size)
    for note in copy_companion_files(args.config or args.src, dst, _DTYPE_NAMES.get(args.dtype or ""), quantization):
        print(f"note: {note}")
    return written, sum(p.stat().st_size for p in written if p.suffix == ".safetensors")


def _check_against_config(files: List[Path], config_source: str) -> None:
    """The tensors' names and shapes must be those of the model the config describes, as in ``from_pretrained``.

    Only the headers are read, and only a one-layer skeleton of the model is built.
    """
    from ..checkpoints import tensor_shapes
    from ..configuration import ChatGLM3Config
    from ..modeling import ChatGLM3ForConditionalGeneration
    from ..modeling.pretrained import WeightLoadingError

    config = ChatGLM3Config.from_pretrained(config_source)
    try:
        ChatGLM3ForConditionalGeneration.check_checkpoint(config, tensor_shapes(files))
    except WeightLoadingError as exc:
        raise CliError(f"the weights of {config_source} do not fit its config (pass --config FOLDER_OR_REPO "
                       f"if it belongs to another model): {exc}") from None


def _weight_files(src: str) -> List[Path]:
    from ..checkpoints import resolve_weight_files

    return resolve_weight_files(src)


def _read(files: List[Path], skipped: List[str], progress: bool) -> Iterator[Tuple[str, np.ndarray]]:
    """Tensors of all files in turn; ``.ckpt`` training state is skipped into ``skipped``."""
    from ..checkpoints import iter_tensors
    from ..checkpoints.mindspore_ckpt import iter_ckpt

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="converting")
    try:
        for file in files:
            source = iter_ckpt(file, skipped) if file.suffix == ".ckpt" else iter_tensors([file])
            for name, array in source:
                yield name, array
                if bar is not None:
                    bar.update(array.nbytes)
    finally:
        if bar is not None:
            bar.close()


def _cast(tensors: Iterator[Tuple[str, np.ndarray]], dtype_name: Optional[str]) -> Iterator[Tuple[str, np.ndarray]]:
    if dtype_name is None:
        yield from tensors
        return
    from ..modeling.pretrained import resolve_dtype
    from ..parameter_io import numpy_dtype

    target = np.dtype(numpy_dtype(resolve_dtype(dtype_name)))
    for name, array in tensors:
        floating = array.dtype.kind == "f" or array.dtype.name == "bfloat16"  # ints and bools stay as they are
        yield name, array.astype(target) if floating and array.dtype != target else array
