"""Fine-tuning run configs in the MindFormers YAML layout of MindFormers' glm3 model card.

``configs/glm3/run_glm3_6b_finetune*.yaml`` keep MindFormers' key names
(``runner_config``, ``optimizer``, ``lr_schedule``, ``runner_wrapper``,
``train_dataset``, ``callbacks``, ``model.model_config``, ``pet_config``,
``parallel_config``, ``recompute_config`` ...). They are mapped onto
:class:`TrainingArguments`, :class:`~glm3_mindspore.data.DataConfig`, the
model config and the PEFT settings; an optional ``training:`` section takes
``TrainingArguments`` fields by their Hugging Face names and wins. Sections
MindFormers uses for its own runtime (``context``, ``parallel``, ``trainer``,
``metric``, ``processor`` apart from the tokenizer path) are accepted and
ignored. Any other key is an error naming its line:
``run.yaml:12: runner_config.epoch: unknown key``.

``--set a.b=value`` overrides are applied to the YAML before it is read, so
they are checked the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..configuration import ConfigError
from ..training.arguments import ArgumentError, TrainingArguments
from .documents import YamlDocument, apply_overrides
from .model_config import model_config_from_yaml_values
from .names import resolve_checkpoint_name

logger = logging.getLogger(__name__)

# Known keys of each mapped section (None: any content accepted).
SCHEMA: Dict[str, Any] = {
    "seed": None, "output_dir": None, "run_mode": None, "load_checkpoint": None, "resume_training": None,
    "auto_trans_ckpt": None, "src_strategy_path_or_dir": None, "only_save_strategy": None, "use_parallel": None,
    "do_eval": None, "eval_step_interval": None, "eval_epoch_interval": None,
    "runner_config": {"epochs", "batch_size", "sink_mode", "sink_size", "gradient_accumulation_steps",
                      "initial_epoch", "initial_step"},
    "runner_wrapper": {"type", "scale_sense", "use_clip_grad", "max_grad_norm", "local_norm"},
    "optimizer": {"type", "beta1", "beta2", "eps", "weight_decay", "learning_rate"},
    "lr_schedule": {"type", "learning_rate", "lr_end", "warmup_steps", "warmup_ratio", "warmup_lr_init",
                    "total_steps", "power", "decay_steps"},
    "train_dataset": "dataset", "eval_dataset": "dataset", "train_dataset_task": None, "eval_dataset_task": None,
    "callbacks": None, "model": None, "processor": None, "pet_config": None,
    "parallel_config": {"data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num", "vocab_emb_dp",
                        "use_seq_parallel", "gradient_aggregation_group", "optimizer_shard", "expert_parallel",
                        "context_parallel"},
    "micro_batch_interleave_num": None, "recompute_config": None, "context": None, "parallel": None,
    "trainer": None, "metric": None, "profile": None, "profile_start_step": None, "profile_stop_step": None,
    "init_start_profile": None, "profile_communication": None, "profile_memory": None, "moe_config": None,
    "layer_scale": None, "layer_decay": None, "lr_scale": None, "lr_scale_factor": None,
    "training": "training", "evaluation": {"num_samples", "max_new_tokens"},
}
DATASET_KEYS = {"data_loader", "tokenizer", "input_columns", "output_columns", "max_source_length",
                "max_target_length", "max_seq_length", "ignore_pad_token_for_loss", "num_parallel_workers",
                "python_multiprocessing", "drop_remainder", "batch_size", "repeat", "numa_enable", "prefetch_size",
                "seed", "format", "column_order"}
DATA_LOADER_KEYS = {"type", "dataset_dir", "shuffle", "phase", "origin_columns", "version"}
DATA_LOADERS = {"ADGenDataLoader": "adgen", "adgen": "adgen", "ToolAlpacaDataLoader": "conversations",
                "conversations": "conversations"}
# MindFormers' AdamW-family names: all train with the torch-identical AdamW (fp32 state).
OPTIMIZERS = ("AdamW", "AdamWeightDecay", "FP32StateAdamWeightDecay", "FusedAdamWeightDecay")
SCHEDULES = {"polynomial": "polynomial", "cosine": "cosine", "warmupcosine": "cosine", "linear": "linear",
             "constant": "constant", "constantwarmup": "constant_with_warmup"}


@dataclass
class DatasetSpec:
    """Where a dataset is and how to tokenise it."""

    path: str
    kind: str  # "adgen" or "conversations"
    max_source_length: int = 64
    max_target_length: int = 127
    max_seq_length: Optional[int] = None
    format: str = "chat"
    ignore_pad_token_for_loss: bool = True


@dataclass
class FinetuneConfig:
    source: Path
    model_config: Any
    model_source: Optional[str]
    param_dtype: Optional[str]
    compute_dtype: Optional[str]
    vocab_file: Optional[str]
    args: TrainingArguments
    train: Optional[DatasetSpec]
    eval: Optional[DatasetSpec]
    peft: Optional[Dict[str, Any]]
    parallel_config: Dict[str, Any] = field(default_factory=dict)
    eval_num_samples: Optional[int] = None

    @property
    def method(self) -> str:
        if self.peft:
            return "lora"
        return "ptuning" if self.model_config.pre_seq_len else "full"


def load_finetune_config(path, overrides: Sequence[str] = ()) -> FinetuneConfig:
    doc = YamlDocument(path)
    apply_overrides(doc, overrides)
    _check_schema(doc)
    data = doc.data
    model_values = doc.section("model", "model_config")
    model_config = model_config_from_yaml_values(doc, model_values)
    args = _training_arguments(doc)
    train = _dataset(doc, "train_dataset")
    evaluation = _dataset(doc, "eval_dataset")
    if train is None:
        raise ConfigError(f"{doc.path}: train_dataset.data_loader.dataset_dir is not set")
    peft = data.get("pet_config") or model_values.get("pet_config")
    vocab = (doc.get("train_dataset", "tokenizer", "vocab_file") or doc.get("processor", "tokenizer", "vocab_file"))
    source = data.get("load_checkpoint") or model_values.get("checkpoint_name_or_path") or None
    return FinetuneConfig(
        source=doc.path,
        model_config=model_config,
        model_source=doc.resolve_path(resolve_checkpoint_name(str(source))) if source else None,
        param_dtype=model_values.get("param_init_type"),
        compute_dtype=model_values.get("compute_dtype"),
        vocab_file=doc.resolve_path(str(vocab)) if vocab else None,
        args=args,
        train=train,
        eval=evaluation,
        peft=dict(peft) if peft else None,
        parallel_config=dict(doc.section("parallel_config")),
        eval_num_samples=doc.get("evaluation", "num_samples"),
    )


def _check_schema(doc: YamlDocument) -> None:
    for key, value in doc.data.items():
        if key not in SCHEMA:
            raise ConfigError(f"{doc.where(key)}: unknown key")
        spec = SCHEMA[key]
        if spec is None or value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{doc.where(key)}: expected a mapping, got {type(value).__name__}")
        if spec == "training":
            unknown = [k for k in value if k not in TrainingArguments.field_names()]
        elif spec == "dataset":
            unknown = [k for k in value if k not in DATASET_KEYS]
            loader = value.get("data_loader") or {}
            bad_loader = [k for k in loader if k not in DATA_LOADER_KEYS]
            if bad_loader:
                raise ConfigError(f"{doc.where(key, 'data_loader', bad_loader[0])}: unknown key")
        else:
            unknown = [k for k in value if k not in spec]
        if unknown:
            raise ConfigError(f"{doc.where(key, unknown[0])}: unknown key")


def _training_arguments(doc: YamlDocument) -> TrainingArguments:
    values: Dict[str, Any] = {}
    data = doc.data
    for key, target in (("seed", "seed"), ("output_dir", "output_dir")):
        if data.get(key) is not None:
            values[target] = data[key]
    runner = doc.section("runner_config")
    _take(values, runner, {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
                           "gradient_accumulation_steps": "gradient_accumulation_steps"})
    optimizer = doc.section("optimizer")
    if optimizer.get("type") is not None and optimizer["type"] not in OPTIMIZERS:
        raise ConfigError(f"{doc.where('optimizer', 'type')}: unknown optimizer {optimizer['type']!r}; "
                          f"use one of {', '.join(OPTIMIZERS)}")
    _take(values, optimizer, {"beta1": "adam_beta1", "beta2": "adam_beta2", "eps": "adam_epsilon",
                              "weight_decay": "weight_decay", "learning_rate": "learning_rate"})
    schedule = doc.section("lr_schedule")
    _take(values, schedule, {"learning_rate": "learning_rate", "lr_end": "lr_end", "warmup_steps": "warmup_steps",
                             "warmup_ratio": "warmup_ratio", "power": "lr_power"})
    if schedule.get("type"):
        kind = str(schedule["type"]).lower().replace("_", "").replace("lr", "")
        if kind not in SCHEDULES:
            raise ConfigError(f"{doc.where('lr_schedule', 'type')}: unknown schedule {schedule['type']!r}; "
                              f"use one of {', '.join(sorted(SCHEDULES))}")
        values["lr_scheduler_type"] = SCHEDULES[kind]
    if schedule.get("total_steps") not in (None, -1):
        values["max_steps"] = int(schedule["total_steps"])
    wrapper = doc.section("runner_wrapper")
    if wrapper.get("use_clip_grad") is False:
        values["max_grad_norm"] = None
    elif wrapper.get("max_grad_norm") is not None:
        values["max_grad_norm"] = wrapper["max_grad_norm"]
    scale = wrapper.get("scale_sense")
    if isinstance(scale, dict):
        _take(values, scale, {"loss_scale_value": "loss_scale", "scale_factor": "loss_scale_factor",
                              "scale_window": "loss_scale_window"})
    elif isinstance(scale, (int, float)):
        values["loss_scale"] = scale
    compute = str(doc.get("model", "model_config", "compute_dtype") or "").lower()
    params = str(doc.get("model", "model_config", "param_init_type") or "float32").lower()
    if compute in ("float16", "fp16") and params in ("float32", "fp32"):
        values["fp16"] = True  # MindFormers' fp32 weights + fp16 compute = mixed precision
    for callback in data.get("callbacks") or []:
        if isinstance(callback, dict) and callback.get("type") == "CheckpointMonitor":
            _take(values, callback, {"save_checkpoint_steps": "save_steps", "keep_checkpoint_max": "save_total_limit"})
        if isinstance(callback, dict) and callback.get("type") == "MFLossMonitor" and callback.get("per_print_times"):
            values["logging_steps"] = callback["per_print_times"]
    if data.get("do_eval"):
        if (data.get("eval_epoch_interval") or -1) > 0:
            values["eval_strategy"] = "epoch"
        else:
            values["eval_strategy"] = "steps"
            values["eval_steps"] = data.get("eval_step_interval") or 500
    recompute = doc.section("recompute_config")
    if recompute.get("recompute"):
        values["gradient_checkpointing"] = True
    if data.get("resume_training"):
        values["resume_from_checkpoint"] = "latest" if data["resume_training"] is True else str(data["resume_training"])
    values.update(doc.section("training"))
    try:
        return TrainingArguments.from_dict(values, str(doc.path))
    except ArgumentError as exc:
        raise ConfigError(f"{doc.path}: {exc}") from None


def _take(values: Dict[str, Any], section: Dict[str, Any], mapping: Dict[str, str]) -> None:
    for source, target in mapping.items():
        if section.get(source) is not None:
            values[target] = section[source]


def _dataset(doc: YamlDocument, name: str) -> Optional[DatasetSpec]:
    section = doc.section(name)
    loader = section.get("data_loader") or {}
    path = loader.get("dataset_dir")
    if not path:
        return None
    kind = DATA_LOADERS.get(str(loader.get("type", "ADGenDataLoader")))
    if kind is None:
        raise ConfigError(f"{doc.where(name, 'data_loader', 'type')}: unknown data loader {loader.get('type')!r}; "
                          f"use one of {', '.join(sorted(DATA_LOADERS))}")
    spec = DatasetSpec(path=doc.resolve_path(str(path)), kind=kind)
    for key in ("max_source_length", "max_target_length", "max_seq_length", "format", "ignore_pad_token_for_loss"):
        if section.get(key) is not None:
            setattr(spec, key, section[key])
    if kind == "conversations" and spec.max_seq_length is None:
        spec.max_seq_length = doc.get("model", "model_config", "seq_length")
    return spec


__all__ = ["DatasetSpec", "FinetuneConfig", "SCHEMA", "apply_overrides", "load_finetune_config"]
