"""``glm3 demo``: the README's main job: a CPU fine-tune on bundled ADGEN data, before/after metrics."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="fine-tune a small ChatGLM3 on ADGEN on this CPU (a few minutes)")
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs over the 900 rows (default 1.5)")
    parser.add_argument("--train-rows", type=int, default=None, help="rows to train on (default 900)")
    parser.add_argument("--samples", type=int, default=None, help="eval rows answered for ROUGE/BLEU (default 16)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from ..training.demo import DemoSettings, run_demo

    settings = DemoSettings(output_dir=args.output_dir)
    changes = {"epochs": args.epochs, "train_rows": args.train_rows, "generation_samples": args.samples}
    settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
    run_demo(settings)
    return 0
