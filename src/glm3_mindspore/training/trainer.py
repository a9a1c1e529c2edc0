"""``Trainer``: the training loop, evaluation, checkpoints and resume.

Rows (a ``datasets.Dataset`` or any sequence of dicts with ``input_ids`` and
``labels``) are shuffled per epoch from ``args.seed``, padded by the collator
(lengths rounded to 32 when compiling, so only a few graph shapes exist),
and fed to :class:`TrainStep`. Under data parallelism each process takes its
slice of every global batch and gradients are averaged across processes; only
the main process writes logs and checkpoints.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..data.collator import DataCollator, LengthBucketSampler
from ..labels import IGNORE_INDEX
from ..parallel.context import ParallelContext, SingleProcess
from .arguments import TrainingArguments
from .callbacks import (CallbackList, JsonlLogger, ProgressCallback, TensorBoardLogger, TrainerCallback,
                        TrainerControl, TrainerState)
from .checkpointing import (begin_checkpoint, commit_checkpoint, load_optimizer_file, load_trainer_state,
                            resolve_checkpoint, save_checkpoint, shared_staging)
from .optim import (DynamicLossScaler, build_optimizer, learning_rate_at, load_optimizer_state, optimizer_state,
                    set_learning_rate)
from .train_step import BATCH_KEYS, TrainStep

logger = logging.getLogger(__name__)

COMPILED_LENGTH_MULTIPLE = 32


@dataclass
class TrainOutput:
    global_step: int
    training_loss: float
    metrics: Dict[str, float]


@dataclass
class PredictionOutput:
    """Per-row outputs of :meth:`Trainer.predict`, their labels, and summary metrics."""

    predictions: List[Any]
    label_ids: Optional[List[Any]]
    metrics: Dict[str, float]


class _EvalLoss(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, position_ids, attention_mask, labels):
        return self.model(input_ids, position_ids, attention_mask, labels)[0]


class Trainer:
    """Hugging Face-style trainer for MindSpore causal LMs whose ``construct`` returns ``(loss, logits)``.

    What it needs of the model beyond that: ``recompute_cells()`` for
    ``gradient_checkpointing``, and ``save_pretrained`` / ``load_weights`` for
    checkpoints; of the job, a :class:`~glm3_mindspore.parallel.ParallelContext`.
    """

    def __init__(
        self,
        model: nn.Cell,
        args: TrainingArguments,
        train_dataset: Optional[Sequence[Dict[str, Any]]] = None,
        eval_dataset: Optional[Sequence[Dict[str, Any]]] = None,
        data_collator: Optional[Callable] = None,
        tokenizer=None,
        callbacks: Optional[List[TrainerCallback]] = None,
        parallel: Optional[ParallelContext] = None,
    ) -> None:
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.tokenizer = tokenizer
        self.parallel = parallel or SingleProcess()
        multiple = args.pad_to_multiple_of or (COMPILED_LENGTH_MULTIPLE if args.compile else None)
        self.data_collator = data_collator or DataCollator(pad_to=args.max_seq_length, pad_to_multiple_of=multiple)
        self.state = TrainerState(is_world_process_zero=self.parallel.is_main)
        self.control = TrainerControl()
        self.callbacks = CallbackList(self._default_callbacks() + list(callbacks or []))
        self.optimizer = None
        self.train_step: Optional[TrainStep] = None
        self.loss_scaler: Optional[DynamicLossScaler] = None
        self._eval_loss = None
        self._pending_log: List[float] = []
        self._last_saved: Optional[int] = None
        self._prepare_model()

    # ------------------------------------------------------------------ setup
    def _default_callbacks(self) -> List[TrainerCallback]:
        callbacks: List[TrainerCallback] = [ProgressCallback()]
        if "jsonl" in self.args.report_to:
            callbacks.append(JsonlLogger(self.args.output_dir))
        if "tensorboard" in self.args.report_to and self.parallel.is_main:
            callbacks.append(TensorBoardLogger(self.args.output_dir))
        return callbacks

    def _prepare_model(self) -> None:
        """Mixed precision (fp32 master weights, fp16/bf16 compute) and recompute, before any graph is built."""
        compute = ms.float16 if self.args.fp16 else ms.bfloat16 if self.args.bf16 else None
        if compute is not None:
            for _, cell in self.model.cells_and_names():
                if hasattr(cell, "compute_dtype"):
                    cell.compute_dtype = compute
        if self.args.gradient_checkpointing:
            for cell in self._recompute_cells():
                cell.recompute()
        self.parallel.prepare_model(self.model)  # model parallelism: shard strategies and pipeline stages

    def _recompute_cells(self) -> List[nn.Cell]:
        """What the model says gradient checkpointing should recompute (its ``recompute_cells()``)."""
        recompute_cells = getattr(self.model, "recompute_cells", None)
        if recompute_cells is None:
            raise ValueError(f"gradient_checkpointing: {type(self.model).__name__} does not say which cells to "
                             "recompute (it has no recompute_cells() method)")
        return recompute_cells()

    def trainable_parameters(self) -> List:
        return [(name, p) for name, p in self.model.parameters_and_names() if p.requires_grad]

    def create_optimizer(self) -> None:
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.trainable_parameters(), self.args)
        if self.args.fp16 and self.loss_scaler is None:
            self.loss_scaler = DynamicLossScaler(self.args.loss_scale, self.args.loss_scale_factor,
                                                 self.args.loss_scale_window)
        if self.train_step is None:  # model parallelism: the step is one graph the parallel compiler shards
            self.train_step = self.parallel.build_train_step(self.model, self.optimizer, self.args,
                                                             self._strategy_dir(), self.loss_scaler)
        if self.train_step is None:
            self.train_step = TrainStep(self.model, self.optimizer, self.args.compile, self.parallel.grad_reducer,
                                        self.args.max_grad_norm, self.loss_scaler)

    # ------------------------------------------------------------------- data
    def _batches(self, dataset, batch_size: int, epoch: int, shuffle: bool) -> List[List[int]]:
        """Global batches of row indices for ``epoch``; deterministic from ``args.seed``."""
        n = len(dataset)
        if self.args.group_by_length and shuffle:
            lengths = [len(row["input_ids"]) for row in dataset]
            sampler = LengthBucketSampler(lengths, batch_size, seed=self.args.seed, drop_last=self.args.dataloader_drop_last)
            sampler.set_epoch(epoch)
            return list(sampler)
        order = np.random.default_rng((self.args.seed, epoch)).permutation(n) if shuffle else np.arange(n)
        batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
        if self.args.dataloader_drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        return batches

    def _local(self, indices: List[int], per_device: int) -> List[int]:
        """This process's share of a global batch (wrapping around when the batch is short)."""
        world, rank = self.parallel.data_world_size, self.parallel.data_rank
        if world == 1:
            return indices
        share = indices[rank * per_device:(rank + 1) * per_device]
        while len(share) < per_device:  # every rank must run the same number of steps
            share.append(indices[(rank * per_device + len(share)) % len(indices)])
        return share

    def _collate(self, dataset, indices: List[int]) -> Dict[str, np.ndarray]:
        batch = self.data_collator([dataset[int(i)] for i in indices])
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"the data collator did not produce {', '.join(missing)}")
        vocab = getattr(getattr(self.model, "config", None), "padded_vocab_size", None)
        if vocab is not None and (batch["input_ids"].min() < 0 or batch["input_ids"].max() >= vocab):
            raise ValueError(f"rows {indices} hold token ids outside the model's vocabulary [0, {vocab}): "
                             "was the data tokenized with a different tokenizer?")
        return batch

    def steps_per_epoch(self) -> int:
        global_batch = self.args.per_device_train_batch_size * self.parallel.data_world_size
        batches = len(self._batches(self.train_dataset, global_batch, 0, shuffle=False))
        return max(1, math.ceil(batches / self.args.gradient_accumulation_steps))

    def total_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        return max(1, math.ceil(self.args.num_train_epochs * self.steps_per_epoch()))

    # ------------------------------------------------------------------ train
    def train(self, resume_from_checkpoint: Optional[str] = None) -> TrainOutput:
        args = self.args
        if self.train_dataset is None or len(self.train_dataset) == 0:
            raise ValueError("train() needs a non-empty train_dataset")
        quantization = getattr(getattr(self.model, "config", None), "quantization", None)
        if quantization is not None:
            raise ValueError(f"cannot train a quantized model ({quantization.bits}-bit weights are inference-only): "
                             "fine-tune the float checkpoint, then quantize the result (model.quantize or "
                             "glm3 convert --quantize)")
        self._check_output_dir(resume_from_checkpoint or args.resume_from_checkpoint)
        self.create_optimizer()
        total = self.total_steps()
        self.state.max_steps = total
        checkpoint = resolve_checkpoint(Path(args.output_dir), resume_from_checkpoint or args.resume_from_checkpoint)
        if checkpoint is not None:
            self._resume(checkpoint)
            logger.info("resuming from %s at step %d", checkpoint, self.state.global_step)
        self.parallel.same(self.state.global_step, "the step to start or resume training from")
        self.model.set_train(True)
        self.callbacks.fire("on_train_begin", args, self.state, self.control)
        global_batch = args.per_device_train_batch_size * self.parallel.data_world_size
        losses: List[float] = []
        running: List[float] = []
        started = time.perf_counter()
        micro = 0
        while self.state.global_step < total and not self.control.should_stop:
            batches = self._batches(self.train_dataset, global_batch, self.state.epoch, shuffle=True)
            while self.state.batch_in_epoch < len(batches):
                indices = self._local(batches[self.state.batch_in_epoch], args.per_device_train_batch_size)
                batch = self._collate(self.train_dataset, indices)
                set_learning_rate(self.optimizer, learning_rate_at(self.state.global_step, total, args))
                running.append(self.train_step.forward_backward(batch))
                self.state.num_train_tokens += int(batch["attention_mask"].sum()) * self.parallel.data_world_size
                self.state.batch_in_epoch += 1
                micro += 1
                end_of_epoch = self.state.batch_in_epoch == len(batches)
                if micro % args.gradient_accumulation_steps and not end_of_epoch:
                    continue
                loss = self._optimizer_step(running, total)
                losses.append(loss)
                running = []
                if self.state.global_step >= total or self.control.should_stop:
                    break
            if self.state.batch_in_epoch >= len(batches):
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                micro = 0
                self._maybe_save_or_evaluate(epoch_end=True)
        if args.save_strategy != "no" and not self._saved_at(self.state.global_step):
            self.save_checkpoint()
        self.callbacks.fire("on_train_end", args, self.state, self.control)
        self.model.set_train(False)
        metrics = {"train_runtime": time.perf_counter() - started, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def _optimizer_step(self, micro_losses: List[float], total: int) -> float:
        lr = learning_rate_at(self.state.global_step, total, self.args)  # set before the window's first batch
        norm, applied = self.train_step.step()
        loss = self.parallel.mean(float(np.mean(micro_losses)))
        self.state.global_step += 1
        if not applied:
            logger.warning("step %d: non-finite gradients, update skipped (loss scale now %s)",
                           self.state.global_step, self.loss_scaler.scale if self.loss_scaler else "n/a")
        self._pending_log.append(loss)
        if self.state.global_step % self.args.logging_steps == 0 or self.state.global_step == total:
            record = {"loss": float(np.mean(self._pending_log)), "learning_rate": lr, "grad_norm": norm,
                      "epoch": self.state.epoch + self.state.batch_in_epoch / max(1, self._epoch_length())}
            if self.loss_scaler is not None:
                record["loss_scale"] = self.loss_scaler.scale
            self._pending_log = []
            self.log(record)
        self.callbacks.fire("on_step_end", self.args, self.state, self.control)
        control = self.control  # a callback on one rank decides for all of them
        control.should_stop, control.should_save, control.should_evaluate = self.parallel.any(
            control.should_stop, control.should_save, control.should_evaluate)
        self._maybe_save_or_evaluate(epoch_end=False)
        return loss

    def _epoch_length(self) -> int:
        global_batch = self.args.per_device_train_batch_size * self.parallel.data_world_size
        return math.ceil(len(self.train_dataset) / global_batch)

    def _maybe_save_or_evaluate(self, epoch_end: bool) -> None:
        args, step = self.args, self.state.global_step
        evaluate = (args.eval_strategy == "epoch" and epoch_end) or (
            args.eval_strategy == "steps" and not epoch_end and step % args.eval_every == 0)
        if (evaluate or self.control.should_evaluate) and self.eval_dataset is not None:
            self.control.should_evaluate = False
            self.evaluate()
            self.model.set_train(True)
        save = (args.save_strategy == "epoch" and epoch_end) or (
            args.save_strategy == "steps" and not epoch_end and step % args.save_steps == 0)
        if save or self.control.should_save:
            self.control.should_save = False
            self.save_checkpoint()

    def log(self, record: Dict[str, Any]) -> None:
        record = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()}
        self.state.log_history.append({"step": self.state.global_step, **record})
        self.callbacks.fire("on_log", self.args, self.state, self.control, logs=record)

    # --------------------------------------------------------------- evaluate
    def evaluate(self, eval_dataset=None) -> Dict[str, float]:
        """Token-weighted mean loss over ``eval_dataset`` (shifted labels, as the model computes it)."""
        if self.parallel.sliced_parameters:
            return self._evaluation_after_merge()
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset")
        metrics = {"eval_loss": self._eval_loss_over(dataset)}
        self.log(metrics)
        self.callbacks.fire("on_evaluate", self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _evaluation_after_merge(self) -> Dict[str, float]:
        """Model parallelism: the slices a rank holds cannot run the model alone, so evaluation is left to the
        merged model (``glm3 evaluate --model <output_dir>``)."""
        logger.warning("evaluation skipped: under model/pipeline parallelism it runs on the merged model "
                       "(glm3 evaluate --config RUN.yaml --model %s)", self.args.output_dir)
        return {}

    def predict(self, test_dataset) -> PredictionOutput:
        """Greedy next-token ids at every labelled position of each row, with ``test_loss``."""
        was_training = self.model.training
        self.model.set_train(False)
        predictions, labels = [], []
        try:
            for indices in self._batches(test_dataset, self.args.per_device_eval_batch_size, 0, shuffle=False):
                batch = self._collate(test_dataset, indices)
                logits = self.model(*[Tensor(batch[k].astype(np.int32)) for k in BATCH_KEYS[:3]])[1]
                choice = logits.asnumpy().argmax(-1)
                for row, index in enumerate(indices):
                    length = len(test_dataset[int(index)]["input_ids"])
                    predictions.append(choice[row, :length])
                    labels.append(np.asarray(test_dataset[int(index)]["labels"]))
        finally:
            self.model.set_train(was_training)
        return PredictionOutput(predictions, labels, {"test_loss": self._eval_loss_over(test_dataset)})

    def _eval_loss_over(self, dataset) -> float:
        if self._eval_loss is None:
            net = _EvalLoss(self.model)
            self._eval_loss = ms.jit(net.construct) if self.args.compile else net
        was_training = self.model.training
        self.model.set_train(False)
        total, count = 0.0, 0
        try:
            for indices in self._batches(dataset, self.args.per_device_eval_batch_size, 0, shuffle=False):
                batch = self._collate(dataset, indices)
                tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                if tokens == 0:
                    continue
                loss = self._eval_loss(*[Tensor(batch[k].astype(np.int32)) for k in BATCH_KEYS])
                total += float(loss.asnumpy()) * tokens
                count += tokens
        finally:
            self.model.set_train(was_training)
        return total / count if count else float("nan")

    # ------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: Optional[str] = None) -> Path:
        """The trained model in its usable form (hub layout by default), written by the main process.

        Under model parallelism every rank first saves its slices to
        ``<output_dir>/distributed/rank_<r>/``; rank 0 merges them with the
        strategy files and writes the same usable form.
        """
        folder = Path(output_dir or self.args.output_dir)
        state_dict = None
        if self.parallel.sliced_parameters:
            self.parallel.save_slices(self.model, folder / "distributed")
            self.parallel.barrier()
            if self.parallel.is_main:
                names = [param.name for param in self.model.get_parameters()]
                state_dict = self.parallel.merge_slices(folder / "distributed", self._strategy_dir(), names)
        if self.parallel.is_main:
            self.write_model(folder, state_dict)
        self.parallel.barrier()
        return folder

    def write_model(self, folder: Path, state_dict: Optional[Dict[str, np.ndarray]] = None) -> None:
        """The model's files in ``folder``; ``state_dict`` (checkpoint name -> array) replaces its values."""
        self.model.save_pretrained(folder, state_dict=state_dict)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    def _strategy_dir(self) -> Path:
        """Where a model-parallel run's parameter strategy files go (one per rank)."""
        return Path(self.args.output_dir) / "strategy"

    def read_model(self, checkpoint: Path) -> None:
        """Weights back from a checkpoint written by :meth:`write_model`."""
        from ..checkpoints import iter_tensors, resolve_weight_files

        self.model.load_weights(iter_tensors(resolve_weight_files(checkpoint)), strict=True)

    def save_checkpoint(self) -> Optional[Path]:
        state = {
            "trainer": self.state.to_dict(),
            "loss_scaler": self.loss_scaler.state() if self.loss_scaler else None,
            "args": self.args.to_dict(),
            "world_size": self.parallel.world_size,
        }
        if self.parallel.sliced_parameters:
            return self._save_sliced_checkpoint(state)
        if self.parallel.is_main:
            optimizer = optimizer_state(self.optimizer) if self.args.save_optimizer_state and self.optimizer else None
            path = save_checkpoint(Path(self.args.output_dir), self.state.global_step, self.write_model, optimizer,
                                   state, self.args.save_total_limit)
            self.callbacks.fire("on_save", self.args, self.state, self.control, checkpoint=path)
        self.parallel.barrier()
        self._last_saved = self.state.global_step
        return Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"

    def _save_sliced_checkpoint(self, state: Dict[str, Any]) -> Path:
        """Every rank's slices of the model and optimizer state in one staging folder, committed by rank 0."""
        output, step = Path(self.args.output_dir), self.state.global_step
        if self.parallel.is_main:
            begin_checkpoint(output, step, shared=True)
        self.parallel.barrier()
        staging = shared_staging(output, step)
        self.parallel.save_slices(self.train_step.cell, staging)
        self.parallel.barrier()
        if self.parallel.is_main:
            shutil.copytree(self._strategy_dir(), staging / "strategy")
            path = commit_checkpoint(output, staging, step, None, state, self.args.save_total_limit)
            self.callbacks.fire("on_save", self.args, self.state, self.control, checkpoint=path)
        self.parallel.barrier()
        self._last_saved = step
        return output / f"checkpoint-{step}"

    def _saved_at(self, step: int) -> bool:
        return self._last_saved == step

    def _resume(self, checkpoint: Path) -> None:
        saved = load_trainer_state(checkpoint)
        if saved.get("world_size", 1) != self.parallel.world_size:
            logger.warning("%s was written by %s processes, resuming with %s: the data order changes",
                           checkpoint, saved.get("world_size"), self.parallel.world_size)
        if self.parallel.sliced_parameters:  # slices fit the parameters only once the step is compiled
            self.train_step.after_compile(lambda: self.parallel.load_slices(self.train_step.cell, checkpoint))
        else:
            self.read_model(checkpoint)
            optimizer = load_optimizer_file(checkpoint)
            if optimizer is not None:
                load_optimizer_state(self.optimizer, optimizer, str(checkpoint))
        self.state = TrainerState.from_dict({**saved["trainer"], "is_world_process_zero": self.parallel.is_main})
        if saved.get("loss_scaler") and self.loss_scaler is not None:
            self.loss_scaler.load(saved["loss_scaler"])
        self._last_saved = self.state.global_step

    def _check_output_dir(self, resuming) -> None:
        folder = Path(self.args.output_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"output_dir {folder} exists and is not a directory")
        has_checkpoints = folder.is_dir() and any(folder.glob("checkpoint-*"))
        if has_checkpoints and not resuming and not self.args.overwrite_output_dir:
            raise FileExistsError(
                f"output_dir {folder} already has checkpoints: resume with resume_from_checkpoint='latest' "
                "(YAML: resume_training: True), start over with overwrite_output_dir=True "
                "(--set training.overwrite_output_dir=true), or choose another output_dir"
            )
