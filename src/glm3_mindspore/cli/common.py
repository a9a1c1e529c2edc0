"""Arguments shared by the sub-commands: loading a model, decoding, output paths."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from . import CliError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="model folder, hub repo id, or MindFormers-style YAML")
    group.add_argument("--tokenizer", help="tokenizer folder/file/hub id (default: the model's)")
    group.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "auto"],
                       help="parameter dtype (bfloat16 computes in float32 on CPU); default float32, "
                            "or the checkpoint's for a quantized model")
    group.add_argument("--quantize", choices=["int8", "int4"],
                       help="quantize the linear layers while loading (weight-only)")
    group.add_argument("--revision", help="hub revision (branch, tag or commit)")
    group.add_argument("--no-compile", action="store_true", help="run op by op (PyNative) instead of compiled graphs")


SAMPLING = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def add_sampling_arguments(parser: argparse.ArgumentParser, chat_defaults: bool) -> None:
    """Decoding flags. Left unset, they are ``model.chat``'s (``CHAT_DEFAULTS``: sampling) with
    ``chat_defaults``, else ``model.generate``'s (``GenerationConfig``'s: greedy)."""
    parser.set_defaults(chat_defaults=chat_defaults)
    default = "model.chat's" if chat_defaults else "model.generate's"
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate at most")
    group.add_argument("--max-length", type=int, default=None, help="prompt + new tokens at most")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--do-sample", dest="do_sample", action="store_true", default=None,
                      help="sample" + (" (default)" if chat_defaults else ""))
    mode.add_argument("--greedy", dest="do_sample", action="store_false", default=None,
                      help="greedy decoding" + ("" if chat_defaults else " (default)"))
    group.add_argument("--temperature", type=float, default=None, help=f"sampling temperature (default: {default})")
    group.add_argument("--top-p", type=float, default=None, help=f"nucleus sampling mass (default: {default})")
    group.add_argument("--top-k", type=int, default=None, help=f"sample among the k likeliest (default: {default})")
    group.add_argument("--repetition-penalty", type=float, default=None, help=f"default: {default}")
    group.add_argument("--seed", type=int, default=None, help="make sampling reproducible")


def sampling_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The decoding keyword arguments of the flags, unset ones from chat's or generate's defaults."""
    from ..generation import CHAT_DEFAULTS, GenerationConfig

    defaults = {**vars(GenerationConfig()), **(CHAT_DEFAULTS if args.chat_defaults else {})}
    kwargs = {name: defaults[name] if getattr(args, name) is None else getattr(args, name) for name in SAMPLING}
    kwargs.update(seed=args.seed, compiled=not args.no_compile)
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    return kwargs


def load_model_and_tokenizer(args: argparse.Namespace):
    from ..auto import AutoModelForCausalLM, AutoTokenizer

    options = {"revision": args.revision} if args.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, **options)
    if args.quantize:
        options["quantization_bit"] = int(args.quantize[3:])
    model = AutoModelForCausalLM.from_pretrained(args.model, ms_dtype=args.dtype, **options)
    return model, tokenizer


def check_output_folder(folder: Path, overwrite: bool, flag: str = "--dst") -> None:
    """Never clobber user data silently: writing into a non-empty folder needs ``--overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{flag} {folder} is a file; it must be a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise CliError(f"{folder} is not empty; pass --overwrite to write into it")


def check_output_file(path: Path, suffix: str, overwrite: bool, flag: str = "--dst") -> None:
    """An output file of the right kind, replaced only with ``--overwrite``."""
    if path.suffix != suffix:
        raise CliError(f"{flag} must be a {suffix} file, got {path}")
    if path.exists() and not overwrite:
        raise CliError(f"{path} exists; pass --overwrite to replace it")
