"""``glm3 parallel plan``: check a run config's parallel layout and size it per device, without any device."""

from __future__ import annotations

import json

from . import CliError


def register(subparsers) -> None:
    parser = subparsers.add_parser("parallel", help="plan model/pipeline/data parallel layouts (no device needed)")
    commands = parser.add_subparsers(dest="parallel_command", metavar="COMMAND")
    plan = commands.add_parser(
        "plan", help="per-parameter layout, operator strategies and memory per device of a run config's layout")
    plan.add_argument("--config", required=True, help="run config, e.g. configs/glm3/run_glm3_6b_finetune_2k.yaml")
    plan.add_argument("--world-size", type=int, required=True, help="devices of the job (all nodes)")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. parallel_config.model_parallel=2 (repeatable)")
    plan.add_argument("--batch-size", type=int, help="micro-batch per data-parallel rank (default runner_config.batch_size)")
    plan.add_argument("--seq-length", type=int, help="tokens per sequence (default model_config.seq_length)")
    plan.add_argument("--full", action="store_true", help="list every parameter instead of collapsing layers")
    plan.add_argument("--strategies", action="store_true", help="also print the operator shard strategies")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=run_plan)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_plan(args) -> int:
    from ..mindformers.parallel_config import read_run_parallel_settings
    from ..parallel.layout import LayoutError, build_layout, valid_shapes
    from ..parallel.plan import format_plan, plan_dict

    if args.world_size < 1:
        raise CliError(f"--world-size must be a positive integer, got {args.world_size}")
    settings = read_run_parallel_settings(args.config, args.overrides)
    memory = settings.memory
    if args.batch_size:
        memory.batch_size = args.batch_size
    if args.seq_length:
        memory.seq_length = args.seq_length
    try:
        layout = build_layout(settings.model_config, settings.parallel, args.world_size, settings.peft, memory.seq_length)
    except LayoutError as exc:
        shapes = valid_shapes(settings.model_config, args.world_size, settings.parallel)
        hint = ", ".join(f"({dp}, {mp}, {pp})" for dp, mp, pp in shapes) or "none"
        raise CliError(f"{exc}\n  layouts (data_parallel, model_parallel, pipeline_stage) that fit "
                       f"{args.world_size} devices: {hint}") from None
    if args.json:
        print(json.dumps(plan_dict(layout, memory, settings.source), indent=2))
    else:
        print(format_plan(layout, memory, settings.source, full=args.full, strategies=args.strategies))
    return 0
