"""``glm3 evaluate``: eval loss and ADGEN metrics of a trained model (or adapter) on a config's eval set."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a trained model on a run config's eval_dataset")
    parser.add_argument("--config", required=True, help="the run config (its eval_dataset is used)")
    parser.add_argument("--model", required=True,
                        help="trained output: a full model folder, a LoRA adapter folder or a P-Tuning prefix folder")
    parser.add_argument("--num-samples", type=int, default=None, help="generation samples for ROUGE/BLEU (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def run(args) -> int:
    from . import CliError
    from ..training.finetune import build_datasets, build_tokenizer, evaluation_model
    from ..mindformers.finetune_config import load_finetune_config
    from ..training.glm_trainer import ChatGLM3Trainer

    config = load_finetune_config(args.config, args.overrides)
    if config.eval is None:
        raise CliError(f"{args.config}: eval_dataset.data_loader.dataset_dir is not set")
    tokenizer = build_tokenizer(config)
    model = evaluation_model(config, args.model)
    evaluation, examples = build_datasets(config.eval, tokenizer, training=False)
    training_args = config.args.replace(predict_with_generate=examples is not None, report_to=[], disable_tqdm=True,
                                        generation_num_samples=args.num_samples,
                                        **({"generation_max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
    trainer = ChatGLM3Trainer(model, training_args, eval_dataset=evaluation, eval_examples=examples, tokenizer=tokenizer)
    print(json.dumps(trainer.evaluate(), indent=2))
    return 0
