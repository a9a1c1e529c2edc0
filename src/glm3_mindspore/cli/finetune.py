"""``glm3 finetune``: fine-tune from a MindFormers-style YAML run config."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune ChatGLM3 from a YAML run config")
    parser.add_argument("--config", required=True, help="run config, e.g. configs/glm3/run_glm3_6b_finetune.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted path, e.g. runner_config.epochs=3 (repeatable)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..parallel import parallel_from_environment
    from ..training.finetune import run_finetune
    from ..mindformers.finetune_config import load_finetune_config

    config = load_finetune_config(args.config, args.overrides)
    parallel = parallel_from_environment(config.parallel_config, config.model_config, config.peft)
    result = run_finetune(config, parallel=parallel)
    if result.trainer.parallel.is_main:
        for name, value in result.metrics.items():
            print(f"{name}: {value:.4f}")
        print(f"saved to {config.args.output_dir}")
    return 0
