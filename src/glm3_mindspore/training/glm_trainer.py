"""``ChatGLM3Trainer``: the Trainer that knows ChatGLM3.

It adds what the generic loop does not: generation-based evaluation with the
ADGEN metric (prompts ending at ``<|assistant|>``, greedy decoding stopped at
ChatGLM3's stop tokens), and saving / resuming only what is trained when the
model carries LoRA adapters (PEFT layout) or a P-Tuning v2 prefix encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .trainer import Trainer

logger = logging.getLogger(__name__)


def tuning_method(model) -> str:
    """``"lora"`` when the model has LoRA layers, ``"ptuning"`` with a trained prefix, else ``"full"``."""
    from ..peft.lora import lora_layers

    if lora_layers(model):
        return "lora"
    config = getattr(model, "config", None)
    if config is not None and config.pre_seq_len and not any(
            p.requires_grad for n, p in model.parameters_and_names() if "prefix_encoder" not in n):
        return "ptuning"
    return "full"


class ChatGLM3Trainer(Trainer):
    """Trainer plus ADGEN generation metrics and adapter-aware checkpoints.

    ``eval_examples`` are rows with prompt ``input_ids`` and a ``reference`` text
    (``AdgenProcessor(..., mode="eval")``); with ``predict_with_generate`` the
    first ``generation_num_samples`` of them are answered greedily at each
    evaluation and scored (ROUGE-1/2/L, BLEU-4).
    """

    def __init__(self, model, args, train_dataset=None, eval_dataset=None, eval_examples=None, tokenizer=None,
                 **kwargs: Any) -> None:
        super().__init__(model, args, train_dataset, eval_dataset, tokenizer=tokenizer, **kwargs)
        self.eval_examples = eval_examples
        self.method = tuning_method(model)

    # ---------------------------------------------------------------- metrics
    def evaluate(self, eval_dataset=None) -> Dict[str, float]:
        if self.parallel.sliced_parameters:
            return self._evaluation_after_merge()
        metrics: Dict[str, float] = {}
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is not None:
            metrics["eval_loss"] = self._eval_loss_over(dataset)
        if self.args.predict_with_generate and self.eval_examples is not None:
            predictions, references = self.generate_predictions(self.eval_examples, self.args.generation_num_samples)
            from ..metrics import compute_adgen_metrics

            scores = compute_adgen_metrics(predictions, references)
            metrics.update({f"eval_{name}": value for name, value in scores.items()})
        if not metrics:
            raise ValueError("evaluate() needs an eval_dataset, or eval_examples with predict_with_generate")
        self.log(metrics)
        self.callbacks.fire("on_evaluate", self.args, self.state, self.control, metrics=metrics)
        return metrics

    def predict(self, test_examples, max_new_tokens: Optional[int] = None):
        """Greedy replies to prompt rows (``input_ids`` + ``reference``), scored with the ADGEN metric."""
        from ..metrics import compute_adgen_metrics
        from .trainer import PredictionOutput

        predictions, references = self.generate_predictions(test_examples, None, max_new_tokens)
        scores = compute_adgen_metrics(predictions, references)
        return PredictionOutput(predictions, references, {f"test_{k}": v for k, v in scores.items()})

    def generate_predictions(self, examples: Sequence[Dict[str, Any]], limit: Optional[int] = None,
                             max_new_tokens: Optional[int] = None) -> Tuple[List[str], List[str]]:
        """Greedy replies to the examples' prompts, with their references."""
        if self.tokenizer is None:
            raise ValueError("generation-based evaluation needs the trainer's tokenizer")
        from ..chat import chat_stop_ids

        rows = [examples[i] for i in range(min(len(examples), len(examples) if limit is None else limit))]
        stop_ids = chat_stop_ids(self.tokenizer)
        predictions: List[str] = []
        size = self.args.per_device_eval_batch_size
        was_training = self.model.training
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            batch = self.tokenizer.pad({"input_ids": [r["input_ids"] for r in chunk]}, padding=True,
                                       padding_side="left", return_tensors="np")
            outputs = self.model.generate(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                          max_new_tokens=max_new_tokens or self.args.generation_max_new_tokens,
                                          do_sample=False, eos_token_id=stop_ids, compiled=self.args.compile)
            for row in outputs[:, batch["input_ids"].shape[1]:]:
                predictions.append(self.tokenizer.decode(_until_stop(row, stop_ids)).strip())
        self.model.set_train(was_training)
        return predictions, [str(r.get("reference", "")) for r in rows]

    # ------------------------------------------------------------ checkpoints
    def write_model(self, folder: Path, state_dict: Optional[Dict[str, np.ndarray]] = None) -> None:
        """LoRA: the adapter (PEFT layout); P-Tuning: the prefix encoder; else the whole model."""
        from ..peft import save_adapter, save_prefix

        if self.method == "lora":
            save_adapter(self.model, folder, state_dict=state_dict)
        elif self.method == "ptuning":
            save_prefix(self.model, folder, state_dict=state_dict)
        else:
            self.model.save_pretrained(folder, state_dict=state_dict)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    def read_model(self, checkpoint: Path) -> None:
        from ..peft import load_adapter, load_prefix

        if self.method == "lora":
            load_adapter(self.model, checkpoint, is_trainable=True)
        elif self.method == "ptuning":
            load_prefix(self.model, checkpoint)
        else:
            super().read_model(checkpoint)


def _until_stop(ids: np.ndarray, stop_ids: Sequence[int]) -> List[int]:
    out: List[int] = []
    for token in ids.tolist():
        if token in stop_ids:
            break
        out.append(token)
    return out
