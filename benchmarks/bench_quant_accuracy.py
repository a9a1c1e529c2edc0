"""How much int8 / int4 cost in accuracy: a model trained by ``glm3 demo``, float32 against quantized.

Realistic weight distributions need a trained model: this uses the one
``glm3 demo`` saves (``output/demo``; trained here first when it is missing).
For every setting it reports, on the demo's 170 held-out ADGEN rows:

* perplexity (exp of the token-weighted eval loss, the demo's ``eval_loss``),
  and its change against float32;
* the logits of the first rows against float32: the smallest cosine over
  positions and the largest error relative to the largest logit.

Settings: int8; int4 in groups of 32, 64 and 128 (the output layer int8, the
default); int4 groups of 128 with the output layer int4 or kept in float32.

    python benchmarks/bench_quant_accuracy.py                  # trains the demo model if needed (~6 min)
    python benchmarks/bench_quant_accuracy.py --model output/demo --json accuracy.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

SETTINGS = [
    ("float32", None),
    ("int8", dict(bits=8)),
    ("int4, groups of 32", dict(bits=4, group_size=32)),
    ("int4, groups of 64", dict(bits=4, group_size=64)),
    ("int4, groups of 128", dict(bits=4, group_size=128)),
    ("int4 g128, output layer int4", dict(bits=4, group_size=128, output_layer_bits=4)),
    ("int4 g128, output layer float32", dict(bits=4, group_size=128, output_layer_bits=None)),
]


def eval_loss(model, dataset, tokenizer) -> float:
    from glm3_mindspore.training import TrainingArguments
    from glm3_mindspore.training.glm_trainer import ChatGLM3Trainer

    args = TrainingArguments(output_dir="/tmp/glm3-quant-accuracy", per_device_eval_batch_size=8, report_to=[],
                             disable_tqdm=True)
    return ChatGLM3Trainer(model, args, eval_dataset=dataset, tokenizer=tokenizer).evaluate()["eval_loss"]


def logits_of(model, dataset, rows: int = 8) -> List[np.ndarray]:
    from mindspore import Tensor

    out = []
    for row in dataset[:rows]:
        ids = np.asarray(row["input_ids"], np.int32)[None]
        positions = np.arange(ids.shape[1], dtype=np.int32)[None]
        out.append(model(Tensor(ids), Tensor(positions), Tensor(np.ones_like(ids))).logits.asnumpy()[0])
    return out


def agreement(quantized: List[np.ndarray], reference: List[np.ndarray]) -> Dict[str, float]:
    cosines, errors = [], []
    for q, r in zip(quantized, reference):
        cosines.append(((q * r).sum(-1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(r, axis=-1)).min())
        errors.append(np.abs(q - r).max() / np.abs(r).max())
    return {"min_cosine": float(min(cosines)), "max_relative_error": float(max(errors))}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("output/demo"), help="the model glm3 demo saved")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from glm3_mindspore import ChatGLM3ForConditionalGeneration, ChatGLM3Tokenizer
    from glm3_mindspore.training.demo import DemoSettings, demo_datasets, run_demo

    if not (args.model / "config.json").exists():
        run_demo(DemoSettings(output_dir=str(args.model)))
    tokenizer = ChatGLM3Tokenizer.from_pretrained(args.model)
    _, dataset, _ = demo_datasets(tokenizer)
    results, reference = {}, None
    for label, quantization in SETTINGS:
        start = time.perf_counter()
        model = ChatGLM3ForConditionalGeneration.from_pretrained(args.model, ms_dtype="float32")
        if quantization is not None:
            model.quantize(**quantization)
        loss = eval_loss(model, dataset, tokenizer)
        logits = logits_of(model, dataset)
        reference = reference or {"loss": loss, "logits": logits}
        entry = {"eval_loss": loss, "perplexity": math.exp(loss),
                 "perplexity_change": math.exp(loss) / math.exp(reference["loss"]) - 1,
                 **agreement(logits, reference["logits"]), "seconds": time.perf_counter() - start}
        results[label] = entry
        print(f"{label:34s} perplexity {entry['perplexity']:8.3f} ({100 * entry['perplexity_change']:+.2f}%)  "
              f"min cosine {entry['min_cosine']:.5f}  max rel error {entry['max_relative_error']:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
