"""``TrainingArguments``: every knob of a fine-tuning run, checked when it is made.

Loadable from a dict (a YAML section) and overridable with ``key=value``
strings from the command line; a wrong key or value is reported by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from ..mindformers.documents import parse_assignment

SCHEDULES = ("linear", "cosine", "polynomial", "constant", "constant_with_warmup")
STRATEGIES = ("no", "steps", "epoch")
REPORTERS = ("jsonl", "tensorboard")


class ArgumentError(ValueError):
    """A training argument is unknown or invalid; the message names it."""


@dataclass
class TrainingArguments:
    """Hugging Face ``TrainingArguments`` names, for the parts that apply here."""

    output_dir: str = "output"
    overwrite_output_dir: bool = False
    seed: int = 42

    # how long
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1

    # optimiser (torch-identical AdamW) and schedule
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    no_decay: List[str] = field(default_factory=lambda: ["bias", "layernorm", "norm"])
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    lr_end: float = 0.0
    lr_power: float = 1.0

    # numerics
    fp16: bool = False
    bf16: bool = False
    loss_scale: float = 65536.0
    loss_scale_factor: float = 2.0
    loss_scale_window: int = 1000
    gradient_checkpointing: bool = False
    compile: bool = True

    # logging, evaluation, checkpoints
    logging_steps: int = 10
    eval_strategy: str = "no"
    eval_steps: Optional[int] = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    save_optimizer_state: bool = True
    resume_from_checkpoint: Optional[str] = None
    report_to: List[str] = field(default_factory=lambda: ["jsonl"])
    disable_tqdm: bool = False

    # data
    dataloader_drop_last: bool = False
    group_by_length: bool = False
    pad_to_multiple_of: Optional[int] = None
    max_seq_length: Optional[int] = None

    # generation-based evaluation (ChatGLM3Trainer)
    predict_with_generate: bool = False
    generation_max_new_tokens: int = 128
    generation_num_samples: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(condition: bool, name: str, message: str) -> None:
            if not condition:
                raise ArgumentError(f"training argument {name!r} {message}, got {getattr(self, name)!r}")

        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_steps", "generation_max_new_tokens"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive int")
        need(isinstance(self.max_steps, int), "max_steps", "must be an int (-1: from num_train_epochs)")
        need(self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs", "must be > 0 when max_steps is -1")
        need(self.learning_rate >= 0, "learning_rate", "must be >= 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)")
        need(0 <= self.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)")
        need(self.adam_epsilon >= 0, "adam_epsilon", "must be >= 0")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")
        need(self.lr_scheduler_type in SCHEDULES, "lr_scheduler_type", f"must be one of {', '.join(SCHEDULES)}")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(not (self.fp16 and self.bf16), "bf16", "cannot be combined with fp16")
        need(self.loss_scale > 0 and self.loss_scale_factor > 1, "loss_scale", "and loss_scale_factor must be > 0 and > 1")
        need(self.eval_strategy in STRATEGIES, "eval_strategy", f"must be one of {', '.join(STRATEGIES)}")
        need(self.save_strategy in STRATEGIES, "save_strategy", f"must be one of {', '.join(STRATEGIES)}")
        need(self.eval_steps is None or self.eval_steps > 0, "eval_steps", "must be > 0 or null")
        need(self.save_total_limit is None or self.save_total_limit > 0, "save_total_limit", "must be > 0 or null")
        need(all(r in REPORTERS for r in self.report_to), "report_to", f"may contain {', '.join(REPORTERS)}")
        need(self.generation_num_samples is None or self.generation_num_samples > 0, "generation_num_samples",
             "must be > 0 or null")

    # ------------------------------------------------------------- derived
    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps > 0 else int(round(self.warmup_ratio * total_steps))

    @property
    def eval_every(self) -> int:
        return self.eval_steps or self.logging_steps

    # ------------------------------------------------------------ building
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Dict[str, Any], where: str = "training arguments") -> "TrainingArguments":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ArgumentError(f"{where}: unknown training argument(s): {', '.join(unknown)}")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> "TrainingArguments":
        return dataclasses.replace(self, **{k: _coerce(type(self), k, v) for k, v in changes.items()})

    def with_overrides(self, assignments: Iterable[str]) -> "TrainingArguments":
        """Apply ``name=value`` strings (values parsed as JSON when they can be)."""
        changes = {}
        for item in assignments:
            name, value = parse_assignment(item, ArgumentError)
            if name not in self.field_names():
                raise ArgumentError(f"--set {item}: unknown training argument {name!r}")
            changes[name] = value
        return self.replace(**changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(cls, name: str, value: Any) -> Any:
    """Ints where floats are expected (``learning_rate: 1``) and numbers written as strings (``1e-5``)."""
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    hint = str(hints.get(name, ""))
    if isinstance(value, str) and ("float" in hint or "int" in hint):
        try:
            value = float(value) if "float" in hint else int(value)
        except ValueError:
            raise ArgumentError(f"training argument {name!r} must be a number, got {value!r}") from None
    if "float" in hint and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if "List" in hint and isinstance(value, str):
        value = [value]
    return value
