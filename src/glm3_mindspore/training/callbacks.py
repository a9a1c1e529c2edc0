"""Trainer callbacks (Hugging Face's protocol): progress bar, JSONL metrics, TensorBoard.

A callback overrides any of ``on_train_begin``, ``on_step_end``, ``on_log``,
``on_evaluate``, ``on_save``, ``on_train_end``; each receives the arguments,
the :class:`TrainerState` and a :class:`TrainerControl` it may set
``should_stop`` / ``should_save`` / ``should_evaluate`` on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


@dataclass
class TrainerState:
    """Where training is; saved in every checkpoint."""

    global_step: int = 0
    max_steps: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    num_train_tokens: int = 0
    log_history: List[Dict[str, Any]] = field(default_factory=list)
    best_metric: Optional[float] = None
    is_world_process_zero: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainerState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class TrainerControl:
    should_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False


class TrainerCallback:
    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kw: Any) -> None: ...
    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kw: Any) -> None: ...
    def on_log(self, args, state: TrainerState, control: TrainerControl, logs: Dict[str, Any], **kw: Any) -> None: ...
    def on_evaluate(self, args, state: TrainerState, control: TrainerControl, metrics: Dict[str, Any], **kw: Any) -> None: ...
    def on_save(self, args, state: TrainerState, control: TrainerControl, checkpoint: Path, **kw: Any) -> None: ...
    def on_train_end(self, args, state: TrainerState, control: TrainerControl, **kw: Any) -> None: ...


class ProgressCallback(TrainerCallback):
    """A tqdm bar with loss, learning rate, tokens/s and ETA (main process only)."""

    def __init__(self) -> None:
        self.bar = None
        self._start = 0.0
        self._start_tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        if args.disable_tqdm or not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", dynamic_ncols=True)
        self._start, self._start_tokens = time.perf_counter(), state.num_train_tokens

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs, **kw):
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "learning_rate", "eval_loss", "grad_norm")}
        shown["tok/s"] = f"{(state.num_train_tokens - self._start_tokens) / elapsed:.0f}"
        self.bar.set_postfix(shown, refresh=True)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlLogger(TrainerCallback):
    """Appends every log and evaluation record to ``<output_dir>/metrics.jsonl``."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"

    def _write(self, record: Dict[str, Any], state: TrainerState) -> None:
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_log(self, args, state, control, logs, **kw):
        self._write({"step": state.global_step, **logs}, state)


class TensorBoardLogger(TrainerCallback):
    """Scalars for TensorBoard (``tensorboardX``, in the ``tensorboard`` extra)."""

    def __init__(self, output_dir: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("report_to: tensorboard needs tensorboardX: pip install 'glm3-mindspore[tensorboard]'") from None
        self.writer = SummaryWriter(str(Path(output_dir) / "runs"))

    def on_log(self, args, state, control, logs, **kw):
        if state.is_world_process_zero:
            for key, value in logs.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, state.global_step)
            self.writer.flush()

    def on_train_end(self, args, state, control, **kw):
        self.writer.close()


class CallbackList:
    def __init__(self, callbacks: List[TrainerCallback]) -> None:
        self.callbacks = list(callbacks)

    def fire(self, event: str, args, state: TrainerState, control: TrainerControl, **kw: Any) -> TrainerControl:
        for callback in self.callbacks:
            getattr(callback, event)(args, state, control, **kw)
        return control
