"""Optimiser, learning-rate schedules and dynamic loss scaling.

The optimiser is ``mindspore.experimental.optim.AdamW``, which follows
``torch.optim.AdamW`` step for step (``nn.AdamWeightDecay`` does not). The
learning rate is computed on the host for every step and written into the
optimiser's lr parameters, so compiled graphs never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from mindspore.experimental.optim import AdamW

from ..parameter_io import write_parameter
from .arguments import TrainingArguments


def parameter_groups(named_params: Sequence, weight_decay: float, no_decay: Sequence[str]) -> List[Dict]:
    """Two AdamW groups: decayed weights, and parameters whose name contains a ``no_decay`` word."""
    words = [w.lower() for w in no_decay]
    decay, plain = [], []
    for name, param in named_params:
        (plain if any(w in name.lower() for w in words) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(named_params: Sequence, args: TrainingArguments) -> AdamW:
    if not named_params:
        raise ValueError("no trainable parameters: nothing to optimise (is everything frozen?)")
    groups = parameter_groups(named_params, float(args.weight_decay), args.no_decay)
    return AdamW(groups, lr=float(args.learning_rate), betas=(float(args.adam_beta1), float(args.adam_beta2)),
                 eps=float(args.adam_epsilon), weight_decay=float(args.weight_decay))


def learning_rate_at(step: int, total_steps: int, args: TrainingArguments) -> float:
    """Hugging Face's schedules (with warmup), as a function of the optimiser step."""
    base = args.learning_rate
    warmup = args.warmup_for(total_steps)
    if step < warmup:
        return base * step / max(1, warmup)
    kind = args.lr_scheduler_type
    if kind in ("constant", "constant_with_warmup"):
        return base
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "linear":
        return base * (1.0 - progress)
    if kind == "cosine":
        return args.lr_end + (base - args.lr_end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # polynomial decay to lr_end (MindFormers' default for ChatGLM3 fine-tuning)
    return args.lr_end + (base - args.lr_end) * (1.0 - progress) ** args.lr_power


def set_learning_rate(optimizer: AdamW, lr: float) -> None:
    for group in optimizer.param_groups:
        write_parameter(group["lr"], np.float32(lr))


def optimizer_state(optimizer: AdamW) -> Dict[str, np.ndarray]:
    """Moments and step count, keyed by parameter name, as numpy (for checkpoints)."""
    state = {"state_step": optimizer.state_step.asnumpy()}
    for prefix in ("exp_avg", "exp_avg_sq"):
        for param, moment in zip(optimizer.parameters, getattr(optimizer, prefix)):
            state[f"{prefix}.{param.name}"] = moment.asnumpy()
    return state


def load_optimizer_state(optimizer: AdamW, state: Dict[str, np.ndarray], where: str) -> None:
    expected = {"state_step"} | {f"{p}.{param.name}" for p in ("exp_avg", "exp_avg_sq") for param in optimizer.parameters}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{where}: optimizer state lacks {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    write_parameter(optimizer.state_step, state["state_step"].reshape(optimizer.state_step.shape))
    for prefix in ("exp_avg", "exp_avg_sq"):
        for param, moment in zip(optimizer.parameters, getattr(optimizer, prefix)):
            value = state[f"{prefix}.{param.name}"]
            if tuple(value.shape) != tuple(moment.shape):
                raise ValueError(f"{where}: {prefix}.{param.name} has shape {value.shape}, expected {moment.shape}")
            write_parameter(moment, value)


@dataclass
class DynamicLossScaler:
    """fp16 loss scaling: halve on overflow (and skip the step), double after ``window`` good steps."""

    scale: float = 65536.0
    factor: float = 2.0
    window: int = 1000
    good_steps: int = 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale = max(self.scale / self.factor, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.scale *= self.factor
            self.good_steps = 0

    def state(self) -> Dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load(self, state: Dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
