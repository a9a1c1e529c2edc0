"""``glm3 ckpt``: distributed checkpoints (merge, reshard, strategy files) and MindFormers interop.

    glm3 ckpt merge --strategy output/strategy --src output/checkpoint --dst merged            # -> merged/rank_0/<prefix>0.ckpt
    glm3 ckpt merge --src_ckpt_strategy output/strategy --src_ckpt_dir output/checkpoint \\
        --dst_ckpt_dir merged --prefix glm3_6b                                                  # MindFormers' transform_ckpt.py flags
    glm3 ckpt merge ... --to safetensors --config THUDM/chatglm3-6b                            # hub folder, from_pretrained-ready
    glm3 ckpt reshard --src merged/rank_0/glm3_6b0.ckpt --config run.yaml --world-size 8 --dst resharded
    glm3 ckpt strategy --config run.yaml --world-size 8 --dst strategy                       # strategy files of a layout
    glm3 ckpt import-mindformers --src glm3_6b_lora.ckpt --dst adapter --config run_glm3_6b_lora.yaml
    glm3 ckpt export-mindformers --adapter adapter --base THUDM/chatglm3-6b --dst glm3_6b_lora.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..checkpoints.distributed import ENGINES, NAMES
from . import CliError
from .common import check_output_file, check_output_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser("ckpt", help="merge / reshard distributed checkpoints, MindFormers interop")
    commands = parser.add_subparsers(dest="ckpt_command", metavar="COMMAND")

    merge = commands.add_parser(
        "merge", help="per-rank slices + strategy -> one checkpoint (.ckpt or hub-layout safetensors)",
        description="Merge rank_<N>/*.ckpt slices using the run's strategy files (MindSpore's transform_checkpoints "
                    "or the numpy engine). Accepts MindFormers' transform_ckpt.py flags as well.")
    merge.add_argument("--strategy", "--src_ckpt_strategy", dest="strategy", required=True,
                       help="strategy file, or the folder of per-rank / per-stage strategy files")
    merge.add_argument("--src", "--src_ckpt_dir", dest="src", required=True, type=Path,
                       help="folder holding rank_0/, rank_1/, ... with one .ckpt each (the last in name order is used)")
    merge.add_argument("--dst", "--dst_ckpt_dir", dest="dst", required=True, type=Path, help="output folder")
    merge.add_argument("--prefix", default="checkpoint_", help="output .ckpt name prefix (file: <prefix>0.ckpt)")
    merge.add_argument("--dst_ckpt_strategy", "--dst-strategy", dest="dst_strategy",
                       help="transform into this layout's strategy instead of merging (as transform_ckpt.py)")
    merge.add_argument("--to", choices=("ckpt", "safetensors"), default="ckpt",
                       help="ckpt: <dst>/rank_0/<prefix>0.ckpt (MindSpore's place for it); safetensors: hub folder")
    _common(merge)
    merge.set_defaults(func=run_merge)

    reshard = commands.add_parser(
        "reshard", help="a checkpoint (merged or per-rank) -> per-rank slices of another layout, with strategy files")
    reshard.add_argument("--src", required=True,
                         help="folder with rank_<N>/ slices (with --strategy), or full weights: .ckpt, safetensors, "
                              "hub folder")
    reshard.add_argument("--strategy", help="strategy of --src when it holds per-rank slices")
    reshard.add_argument("--config", required=True, help="run config whose parallel_config is the target layout")
    reshard.add_argument("--world-size", type=int, required=True, help="devices of the target layout")
    reshard.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. parallel_config.model_parallel=4")
    reshard.add_argument("--dst", required=True, type=Path,
                         help="output: <dst>/checkpoint/rank_<N>/<prefix>_rank_<N>.ckpt and <dst>/strategy/")
    reshard.add_argument("--prefix", default="glm3", help="slice file prefix (default glm3)")
    reshard.add_argument("--names", choices=NAMES, default="mindformers",
                         help="parameter names in the slices (default MindFormers')")
    reshard.add_argument("--engine", choices=ENGINES, default="auto", help="numpy (default) or mindspore")
    reshard.add_argument("--overwrite", action="store_true", help="write into a non-empty --dst")
    reshard.set_defaults(func=run_reshard)

    strategy = commands.add_parser("strategy", help="write the strategy files of a run config's layout")
    strategy.add_argument("--config", required=True, help="run config (parallel_config is the layout)")
    strategy.add_argument("--world-size", type=int, required=True)
    strategy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    strategy.add_argument("--dst", required=True, type=Path, help="folder for ckpt_strategy_rank_<N>.ckpt")
    strategy.add_argument("--merged", type=Path, help="also write all stages merged into this one file")
    strategy.add_argument("--names", choices=NAMES, default="mindformers")
    strategy.set_defaults(func=run_strategy)

    imp = commands.add_parser("import-mindformers",
                              help="MindFormers glm3 .ckpt (full or LoRA) -> hub-layout model and/or PEFT adapter")
    imp.add_argument("--src", required=True, type=Path, help="MindFormers .ckpt")
    imp.add_argument("--dst", required=True, type=Path,
                     help="output folder: the PEFT adapter for a LoRA checkpoint, else the hub-layout model")
    imp.add_argument("--base-dst", type=Path, help="LoRA checkpoint: also write its base weights here (hub layout)")
    imp.add_argument("--config", help="run config (pet_config gives lora_alpha; model_config the config.json) or a "
                                      "hub folder / repo for config.json and tokenizer files")
    imp.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the run config's, else 32 as in MindFormers' glm3 LoRA config)")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=run_import)

    exp = commands.add_parser("export-mindformers", help="our model or PEFT adapter -> a .ckpt with MindFormers names")
    exp.add_argument("--dst", required=True, type=Path, help="output .ckpt")
    exp.add_argument("--adapter", help="PEFT adapter folder (LoRA) to export with MindPet names")
    exp.add_argument("--base", help="base model folder / repo / weight file to include (MindFormers LoRA "
                                    "checkpoints hold the base weights too)")
    exp.add_argument("--mindpet-upper", action="store_true",
                     help="write mindpet_delta_lora_A/_B (older MindPet) instead of _a/_b")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=run_export)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _common(parser) -> None:
    parser.add_argument("--config", help="for --to safetensors: hub folder / repo with config.json (and tokenizer), or "
                                         "the run YAML; a run YAML also rebuilds layouts missing from the strategy "
                                         "(LoRA runs saved with only_trainable_params: True)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="mindspore (transform_checkpoints), numpy, or auto: MindSpore when the strategy "
                             "describes every parameter, else numpy")
    parser.add_argument("--names", choices=NAMES, default="mindformers",
                        help="parameter names of an output .ckpt (numpy engine)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --dst")


# ----------------------------------------------------------------------------- merge
def run_merge(args) -> int:
    from ..checkpoints.distributed import RankCheckpoints, choose_engine

    check_output_folder(args.dst, args.overwrite)
    slices = RankCheckpoints.open(args.src, args.strategy)
    engine = choose_engine(args.engine, slices.without_layout)
    if args.dst_strategy:
        if engine != "mindspore":
            raise CliError("--dst_ckpt_strategy transforms with MindSpore's engine, which needs a complete strategy; "
                           "use glm3 ckpt reshard (numpy) instead")
        out = slices.transform(args.dst, args.prefix, args.dst_strategy)
        print(f"transformed {slices.world_size} rank checkpoints into {len(out)} with MindSpore: {args.dst}/rank_*/")
        return 0
    without = slices.without_layout
    print(f"merging {slices.world_size} rank checkpoints with the {engine} engine"
          + (f" ({len(without)} parameters without a strategy entry)" if without else ""))
    fallback = _layouts_from_run_config(args.config, slices.world_size) if engine == "numpy" else None
    report: Dict[str, List[str]] = {}
    if args.to == "ckpt":
        written = [slices.merge_to_ckpt(args.dst, args.prefix, engine, args.names, fallback, report)]
    else:
        workdir = args.dst.parent if args.dst.parent.exists() else None
        with slices.merged(engine, fallback, report, workdir) as tensors:
            written = _write_hub_folder(args.dst, tensors, args.config)
    if report.get("rebuilt"):
        print(f"rebuilt the layout of {len(report['rebuilt'])} parameters missing from the strategy from "
              f"{args.config} (the run saved strategies for trainable parameters only)")
    print(f"wrote {', '.join(str(p) for p in written[:3])}")
    return 0


def _layouts_from_run_config(config, world_size: int):
    """With a run YAML as ``--config``, its layout gives the parameters a strategy file lacks."""
    from ..mindformers.model_config import is_run_yaml
    from ..mindformers.parallel_config import slice_layouts_from_run_config

    return slice_layouts_from_run_config(config, world_size) if is_run_yaml(config) else None


def _write_hub_folder(dst: Path, tensors, config) -> List[Path]:
    """Hub-layout safetensors + config.json (+ tokenizer files) that ``from_pretrained`` loads."""
    from ..mindformers.model_config import write_hub_model

    written, notes = write_hub_model(dst, tensors, config)
    for note in notes:
        print(f"note: {note}")
    return written


# ----------------------------------------------------------------------------- reshard
def run_reshard(args) -> int:
    from ..checkpoints.distributed import is_rank_folder, reshard
    from ..mindformers.parallel_config import layout_from_run_config

    check_output_folder(args.dst, args.overwrite)
    layout = layout_from_run_config(args.config, args.world_size, args.overrides)
    if is_rank_folder(args.src) and not args.strategy:
        raise CliError(f"{args.src} holds per-rank slices: pass their --strategy")
    engine = "numpy" if args.engine == "auto" else args.engine
    checkpoint_dir, strategy_dir = reshard(args.src, args.dst, layout, args.strategy, engine, args.prefix, args.names)
    print(f"wrote {layout.world_size} rank checkpoints ({layout.config.describe()}) to {checkpoint_dir}/rank_*/ "
          f"and their strategy files to {strategy_dir}/")
    return 0


# ----------------------------------------------------------------------------- strategy
def run_strategy(args) -> int:
    from ..checkpoints.distributed import write_merged_strategy, write_strategy_files
    from ..mindformers.parallel_config import layout_from_run_config

    layout = layout_from_run_config(args.config, args.world_size, args.overrides)
    files = write_strategy_files(layout, args.dst, args.names)
    print(f"wrote {len(files)} strategy files ({layout.config.describe()}) to {args.dst}/")
    if args.merged:
        print(f"wrote {write_merged_strategy(layout, args.merged, args.names)}")
    return 0


# ----------------------------------------------------------------------------- MindFormers interop
def run_import(args) -> int:
    from ..mindformers.lora import import_mindformers_checkpoint

    if args.src.suffix != ".ckpt":
        raise CliError(f"--src must be a MindFormers .ckpt, got {args.src}")
    check_output_folder(args.dst, args.overwrite)
    if args.base_dst is not None:
        check_output_folder(args.base_dst, args.overwrite, "--base-dst")
    result = import_mindformers_checkpoint(args.src, args.dst, args.config, args.lora_alpha, args.base_dst)
    for note in result.notes:
        print(f"note: {note}")
    if result.adapter_config is None:
        print(f"no LoRA parameters: wrote the full model to {', '.join(str(p) for p in result.model_files[:3])}")
        return 0
    config = result.adapter_config
    print(f"wrote a PEFT adapter (r={config.r}, alpha={config.lora_alpha}, {result.lora_layers} layers, targets "
          f"{config.target_modules}) to {args.dst}")
    if args.base_dst is not None:
        print(f"wrote the base weights to {', '.join(str(p) for p in result.model_files[:3])}")
    return 0


def run_export(args) -> int:
    from ..mindformers.lora import export_mindformers_checkpoint

    check_output_file(args.dst, ".ckpt", args.overwrite)
    if not args.adapter and not args.base:
        raise CliError("give --adapter (a PEFT LoRA folder) and/or --base (a model)")
    total = export_mindformers_checkpoint(args.dst, args.adapter, args.base, args.mindpet_upper)
    print(f"wrote {total / 1e6:.1f} MB with MindFormers names to {args.dst}")
    return 0
