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

from pathlib import Path
from typing import List, Optional

from ..quantization import DEFAULT_GROUP_SIZE, QuantizationConfig, QuantizationError
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
    from ..checkpoints import resolve_weight_files
    from ..checkpoints.convert import convert_weights

    dst: Path = args.dst.expanduser()
    if args.to == "ckpt":
        check_output_file(dst, ".ckpt", args.overwrite)
    else:
        check_output_folder(dst, args.overwrite)
    quantization = _quantization(args)
    files = resolve_weight_files(args.src)
    _check_against_config(files, args.config or args.src)
    converted = convert_weights(files, dst, args.to, dtype=_DTYPE_NAMES.get(args.dtype or ""),
                                quantization=quantization, names=args.names, max_shard_size=args.max_shard_size,
                                companions_from=args.config or args.src, progress=not args.no_progress)
    for note in converted.notes:
        print(f"note: {note}")
    skipped = converted.skipped
    if skipped:
        print(f"skipped {len(skipped)} non-model entries (optimizer state / bookkeeping): "
              f"{', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}")
    written = converted.files
    print(f"wrote {converted.tensor_bytes / 1e9:.2f} GB to {', '.join(str(p) for p in written[:3])}"
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


def _check_against_config(files: List[Path], config_source: str) -> None:
    """The tensors' names and shapes must be those of the model the config describes, as in ``from_pretrained``.

    Only the headers are read, and the model is not built (a lazy skeleton gives the expected shapes).
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
