"""``glm3 lora merge``: base model + PEFT LoRA adapter -> one hub-layout model folder.

    glm3 lora merge --base THUDM/chatglm3-6b --adapter out/adapter --out chatglm3-6b-merged

The merged folder loads with ``from_pretrained`` here and with upstream's
PyTorch code (config with ``auto_map``, tokenizer files copied from the base).
"""

from __future__ import annotations

from pathlib import Path

from . import CliError


def register(subparsers) -> None:
    parser = subparsers.add_parser("lora", help="LoRA adapters: merge into the base weights",
                                   description="Work with PEFT-layout LoRA adapters.")
    actions = parser.add_subparsers(dest="lora_command", metavar="ACTION")
    merge = actions.add_parser(
        "merge", help="base + adapter -> merged hub-layout folder",
        description="Load the base model, add the LoRA adapter's scaling * B @ A to each targeted weight, and "
                    "save the result as a hub-layout safetensors folder with the base's tokenizer files.")
    merge.add_argument("--base", required=True, help="base model folder or hub repo id")
    merge.add_argument("--adapter", required=True, help="adapter folder or hub repo id (adapter_config.json + "
                                                        "adapter_model.safetensors)")
    merge.add_argument("--out", required=True, type=Path, help="output folder")
    merge.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                       help="dtype of the merged weights (default: the base checkpoint's torch_dtype)")
    merge.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    merge.add_argument("--revision", help="hub revision of the base model")
    merge.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    merge.set_defaults(func=run_merge)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser) -> int:
    parser.print_help()
    return 2


def run_merge(args) -> int:
    from ..auto import AutoModelForCausalLM
    from ..fileio import atomic_copy
    from ..hub import HubOptions, resolve_file
    from ..peft import ADAPTER_CONFIG_NAME, load_adapter, lora_layers, merge_and_unload
    from ..checkpoints.hub_layout import COMPANION_FILES
    from .common import check_output_folder

    out: Path = args.out.expanduser()
    check_output_folder(out, args.overwrite, "--out")
    if resolve_file(args.adapter, ADAPTER_CONFIG_NAME, required=False) is None:
        raise CliError(f"{args.adapter}: not a LoRA adapter ({ADAPTER_CONFIG_NAME} not found)")
    base_options = HubOptions(revision=args.revision)
    model = AutoModelForCausalLM.from_pretrained(args.base, ms_dtype=args.dtype, **vars(base_options))
    load_adapter(model, args.adapter)
    layers, config = len(lora_layers(model)), model.peft_config
    merge_and_unload(model)
    model.save_pretrained(out, max_shard_size=args.max_shard_size)
    for name in COMPANION_FILES:
        if not (out / name).exists():
            found = resolve_file(args.base, name, base_options, required=False)
            if found is not None:
                atomic_copy(found, out / name)
    print(f"merged LoRA (r={config.r}, lora_alpha={config.lora_alpha:g}) into {layers} layers; wrote {out}")
    return 0
