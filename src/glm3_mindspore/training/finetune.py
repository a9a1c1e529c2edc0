"""From a run config to a fine-tuned model: tokenizer, model (+ LoRA / P-Tuning), data, trainer.

``glm3 finetune --config FILE`` runs :func:`run_finetune`. Training keeps fp32
master weights: a config asking for fp16 parameters and fp16 compute trains
with fp32 parameters and fp16 compute (dynamic loss scaling), which is what
MindFormers' fp32-state optimiser amounts to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..configuration import ConfigError
from ..mindformers.finetune_config import DatasetSpec, FinetuneConfig
from ..peft import apply_tuning_method
from .glm_trainer import ChatGLM3Trainer

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    trainer: ChatGLM3Trainer
    metrics: Dict[str, float]


def build_tokenizer(config: FinetuneConfig):
    from ..tokenization import ChatGLM3Tokenizer

    source = config.vocab_file or config.model_source
    if not source:
        raise ConfigError(f"{config.source}: set train_dataset.tokenizer.vocab_file (or a model to load)")
    return ChatGLM3Tokenizer.from_pretrained(source)


def build_model(config: FinetuneConfig):
    """Base weights (or a random init when the config names none), then the tuning method."""
    from ..modeling import ChatGLM3ForConditionalGeneration

    if config.model_source:
        model = ChatGLM3ForConditionalGeneration.from_pretrained(config.model_source, config=config.model_config,
                                                                 ms_dtype="float32")
    else:
        logger.warning("%s: no load_checkpoint / checkpoint_name_or_path: training from random weights", config.source)
        model = ChatGLM3ForConditionalGeneration.from_config(config.model_config, ms_dtype="float32")
    return apply_tuning_method(model, config.peft)


def build_datasets(spec: Optional[DatasetSpec], tokenizer, training: bool):
    """``(dataset for loss, examples for generation)`` of one dataset spec."""
    from ..data import AdgenProcessor, ConversationProcessor, DataConfig, build_dataset

    if spec is None:
        return None, None
    data_config = DataConfig(max_source_length=spec.max_source_length, max_target_length=spec.max_target_length,
                             format=spec.format, max_seq_length=spec.max_seq_length,
                             ignore_pad_token_for_loss=spec.ignore_pad_token_for_loss)
    if spec.kind == "conversations":
        dataset, stats = build_dataset(spec.path, ConversationProcessor(tokenizer, data_config))
        logger.info("%s", stats.summary())
        return dataset, None
    dataset, stats = build_dataset(spec.path, AdgenProcessor(tokenizer, data_config))
    logger.info("%s", stats.summary())
    examples = None if training else build_dataset(spec.path, AdgenProcessor(tokenizer, data_config, mode="eval"))[0]
    return dataset, examples


def run_finetune(config: FinetuneConfig, parallel=None) -> FinetuneResult:
    tokenizer = build_tokenizer(config)
    model = build_model(config)
    train, _ = build_datasets(config.train, tokenizer, training=True)
    evaluation, examples = build_datasets(config.eval, tokenizer, training=False)
    args = config.args
    if config.eval_num_samples and examples is not None:
        args = args.replace(predict_with_generate=True, generation_num_samples=config.eval_num_samples)
    trainer = ChatGLM3Trainer(model, args, train, evaluation, examples, tokenizer, parallel=parallel)
    trainer.train()
    metrics = trainer.evaluate() if (evaluation is not None or examples is not None) else {}
    trainer.save_model()
    return FinetuneResult(trainer, metrics)


def evaluation_model(config: FinetuneConfig, trained: str):
    """The model a run produced: a full model folder, or the config's base plus an adapter / prefix."""
    from ..modeling import ChatGLM3ForConditionalGeneration
    from ..peft import ADAPTER_CONFIG_NAME, load_pretrained_with_adapter, read_prefix_config
    from pathlib import Path

    folder = Path(trained)
    if (folder / ADAPTER_CONFIG_NAME).is_file() or (read_prefix_config(folder) is not None
                                                     and not (folder / "model.safetensors").is_file()):
        if not config.model_source:
            raise ConfigError(f"{trained} holds an adapter, but {config.source} names no base model to apply it to")
        return load_pretrained_with_adapter(config.model_source, folder, ms_dtype="float32")
    return ChatGLM3ForConditionalGeneration.from_pretrained(folder, ms_dtype="float32")
