"""Training speed against torch: the same model, weights, batch and AdamW, in separate processes.

For each config a seeded random hub-layout checkpoint is written (reused when
it exists) and converted for transformers' ``GlmForCausalLM``. Then, one after
the other (never at once, each on the machine's 2 cores):

* ours: ``glm3_mindspore``'s compiled train step (``TrainStep``: value_and_grad,
  clipping to 1.0, ``mindspore.experimental.optim.AdamW``), the step the
  ``Trainer`` runs;
* torch: ``loss.backward()``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW``
  (``benchmarks/_torch_glm_worker.py train``, eager, ``set_num_threads(2)``).

Both train in fp32 on one fixed batch (``--batch`` rows of ``--seq`` tokens,
labels on the second half of each row) with lr 1e-3, betas (0.9, 0.999), eps
1e-8, weight decay 0.01 on every parameter; after ``--warmup`` steps (our first
compiles the graphs) ``--steps`` steps are timed. The losses of the first
steps are compared: both sides do the same arithmetic. Train tokens/s counts
every token of the batch.

    python benchmarks/bench_train.py                      # configs demo,a; batch 8 x 128
    python benchmarks/bench_train.py --configs a --batch 4 --seq 256 --steps 5

Configs: ``demo`` the ``glm3 demo`` model (2 layers, hidden 256, 35 M parameters,
most of them the 65,024-word embedding and output layer); ``a`` 8 layers,
hidden 1024 (0.2 B). The torch side needs a venv with torch, transformers >= 4.46
and safetensors (``--torch-python``, default ``$GLM3_TORCH_PYTHON`` or
``/work/venv-torch/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import timed  # noqa: E402
from bench_generate import COMMON, TORCH_WORKER, run_child, wait_for_quiet  # noqa: E402

CONFIGS: Dict[str, Dict] = {
    "demo": dict(COMMON, num_layers=2, hidden_size=256, ffn_hidden_size=704, kv_channels=64, num_attention_heads=4),
    "a": dict(COMMON, num_layers=8, hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=8),
}
LEARNING_RATE = 1e-3


def write_batch(path: Path, batch: int, seq: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 60000, (batch, seq)).astype(np.int64)
    labels = ids.copy()
    labels[:, : seq // 2] = -100
    np.savez(path, input_ids=ids, labels=labels, attention_mask=np.ones_like(ids),
             position_ids=np.broadcast_to(np.arange(seq), ids.shape).copy())


def ms_worker(args) -> None:
    """Child process: our compiled train step on the fixed batch."""
    import mindspore as ms

    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.training import TrainingArguments
    from glm3_mindspore.training.optim import build_optimizer, set_learning_rate
    from glm3_mindspore.training.train_step import TrainStep

    model = ChatGLM3ForConditionalGeneration.from_pretrained(args.model, ms_dtype="float32")
    model.set_train(True)
    options = TrainingArguments(learning_rate=LEARNING_RATE, weight_decay=0.01, no_decay=[])
    optimizer = build_optimizer(list(model.parameters_and_names()), options)
    set_learning_rate(optimizer, LEARNING_RATE)
    step_fn = TrainStep(model, optimizer, compiled=True, max_grad_norm=1.0)
    batch = dict(np.load(args.batch))

    def step():
        loss = step_fn.forward_backward(batch)
        step_fn.step()
        return loss

    results = {"impl": "mindspore", "mindspore": ms.__version__, "losses": [], "step_s": [], "step_bg": [],
               "first_step_s": None}
    for index in range(args.warmup + args.steps):
        elapsed, background, loss = timed(step)
        results["losses"].append(loss)
        if index == 0:
            results["first_step_s"] = elapsed
        if index >= args.warmup:
            results["step_s"].append(elapsed)
            results["step_bg"].append(background)
    Path(args.out).write_text(json.dumps(results))


def bench_config(name: str, args, work: Path) -> dict:
    from _weights import write_random_checkpoint

    from glm3_mindspore import ChatGLM3Config

    config = ChatGLM3Config(**{**CONFIGS[name], "seq_length": max(512, args.seq)})
    folder = work / f"train-{name}"
    write_random_checkpoint(folder, config, seed=0)
    torch_folder = work / f"train-{name}-torch"
    run_child([args.torch_python, str(TORCH_WORKER), "convert", str(folder), str(torch_folder)], f"{name}: convert for torch")
    batch = work / f"batch-{name}-{args.batch}x{args.seq}.npz"
    write_batch(batch, args.batch, args.seq)
    sides = {}
    for side, cmd in (
        ("ours", [sys.executable, str(Path(__file__).resolve()), "_ms-worker", str(folder), str(batch)]),
        ("torch", [args.torch_python, str(TORCH_WORKER), "train", str(torch_folder), str(batch)]),
    ):
        out = work / f"{name}-{side}.json"
        wait_for_quiet(args.max_background, args.wait)
        run_child(cmd + [str(out), "--steps", str(args.steps), "--warmup", str(args.warmup)], f"{name}: {side}")
        sides[side] = json.loads(out.read_text())
    tokens = args.batch * args.seq
    ours, theirs = (statistics.median(sides[s]["step_s"]) for s in ("ours", "torch"))
    agree = min(len(sides["ours"]["losses"]), len(sides["torch"]["losses"]), 3)
    return {
        "config": name, "batch": args.batch, "seq": args.seq, "parameters": _parameter_count(config),
        "ours_tokens_s": tokens / ours, "torch_tokens_s": tokens / theirs, "ratio": theirs / ours,
        "ours_step_s": ours, "torch_step_s": theirs, "ours_first_step_s": sides["ours"]["first_step_s"],
        "loss_diff": max(abs(a - b) for a, b in zip(sides["ours"]["losses"][:agree], sides["torch"]["losses"][:agree])),
        "losses": {s: sides[s]["losses"][:agree] for s in sides},
        "background": {s: max(sides[s]["step_bg"]) for s in sides},
    }


def _parameter_count(config) -> int:
    from _weights import chatglm3_shapes

    return int(sum(np.prod(shape) for shape in chatglm3_shapes(config).values()))


def table(reports: List[dict]) -> str:
    lines = ["| config | params | batch x seq | ours tokens/s | torch tokens/s | ratio | ours s/step | torch s/step "
             "| first step (compile) s | loss diff, first steps | other load, cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(
            f"| {r['config']} | {r['parameters'] / 1e6:.0f} M | {r['batch']} x {r['seq']} | {r['ours_tokens_s']:.0f} | "
            f"{r['torch_tokens_s']:.0f} | {r['ratio']:.2f}x | {r['ours_step_s']:.2f} | {r['torch_step_s']:.2f} | "
            f"{r['ours_first_step_s']:.1f} | {r['loss_diff']:.1e} | "
            f"{r['background']['ours']:.2f} / {r['background']['torch']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ms-worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("model")
        worker.add_argument("batch")
        worker.add_argument("out")
        worker.add_argument("--steps", type=int)
        worker.add_argument("--warmup", type=int)
        ms_worker(worker.parse_args(argv[1:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="demo,a", help="comma-separated: demo, a")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--work-dir", default=None, help="checkpoints and results (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--torch-python", default=os.environ.get("GLM3_TORCH_PYTHON", "/work/venv-torch/bin/python"))
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a quiet machine before each side")
    parser.add_argument("--max-background", type=float, default=0.3, help="other processes' cores counted as quiet")
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if not Path(args.torch_python).exists():
        parser.error(f"no torch interpreter at {args.torch_python}: make a venv with torch, transformers, safetensors")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_train-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        reports = [bench_config(name, args, work) for name in args.configs.split(",")]
    finally:
        if not args.work_dir:  # the default folder holds 2 GB of checkpoints a run: not left behind
            shutil.rmtree(work, ignore_errors=True)
    print(table(reports))
    print(f"\n(fp32, median of {args.steps} steps after {args.warmup} warm-up; ratio = torch step time / ours; "
          f"run took {time.perf_counter() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
