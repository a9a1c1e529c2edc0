"""Generation speed against transformers' ``GlmForCausalLM`` on torch CPU, same random weights.

For each config, one run writes a seeded random hub-layout checkpoint (numpy
only; reused when it exists), converts it for ``GlmForCausalLM``, then measures
in separate processes, one after the other (never both at once):

* agreement: fp32 logits of a 2x32 prompt from both models (max abs diff,
  argmax agreement);
* ours (``model.generate(..., compiled=True)``): the first call (compiles the
  prefill and decode graphs of the (batch, cache length) engine), then prefill
  alone (``max_new_tokens=1``) and ``--new-tokens`` greedy tokens; decode
  ms/token = (full - prefill) / (new_tokens - 1); compile s = first call minus
  the same work warm;
* torch (``benchmarks/_torch_glm_worker.py`` in its own venv): the same calls
  through ``GlmForCausalLM.generate`` (eager, dynamic cache by default),
  ``torch.set_num_threads(2)``.

Greedy, every row runs the full length (no eos). ``--rounds`` alternate the two
sides (ours, torch, ours, torch: new processes each time) and each process
times ``--repeats`` calls; the table takes the fastest call of all (``--stat
min``). The machine may be shared: before each measurement process the run
waits (up to ``--wait`` s) for other processes to go quiet, and for every timed
call it records the CPU cores other processes used meanwhile; a row computed
from calls where that exceeded ``--max-background`` is marked ``(*)``. For
numbers to publish, run on an otherwise idle machine (or give the run
priority: ``nice -n -15``).

    python benchmarks/bench_generate.py                       # configs a,b; batch 1,8
    python benchmarks/bench_generate.py --configs a --batch 1 --new-tokens 16 --out results.json

Configs: ``a`` 8 layers, hidden 1024 (0.2 B parameters, vocab 65024); ``b``
the real ChatGLM3-6B layer shape with 2 layers (1.0 B parameters, 3.8 GB fp32).
The torch side needs a venv with torch, transformers >= 4.46 and safetensors
(``--torch-python``, default ``/work/venv-torch/bin/python`` or
``$GLM3_TORCH_PYTHON``); ``--skip-torch`` measures ours only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import busy_cpu_seconds, timed, wait_for_quiet  # noqa: E402
TORCH_WORKER = HERE / "_torch_glm_worker.py"
COMMON = dict(padded_vocab_size=65024, kv_channels=128, multi_query_attention=True, multi_query_group_num=2,
              add_qkv_bias=True, add_bias_linear=False, rmsnorm=True, seq_length=2048, layernorm_epsilon=1e-5)
CONFIGS: Dict[str, Dict] = {
    "a": dict(COMMON, num_layers=8, hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=8),
    "b": dict(COMMON, num_layers=2, hidden_size=4096, ffn_hidden_size=13696, num_attention_heads=32),
}
DESCRIPTION = {"a": "(a) 8L h1024", "b": "(b) 6B shape, 2L"}
VARIANTS = {  # side -> label of the extra table
    "ours-float16": "float16",
    "ours-bfloat16": "bfloat16 weights, float32 compute",
    "ours-float32-matmul": "float32, MatMul only (GLM3_CPU_KERNELS=0)",
}
EXTRA_DTYPES = ("float16", "bfloat16")
PARITY_SHAPE = (2, 32)


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


# --------------------------------------------------------------------------- MindSpore worker
def ms_worker(args) -> None:
    """Runs in a child process: parity logits, then the timings, of our model."""
    import mindspore as ms
    from mindspore import Tensor

    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration

    if args.matmul_only:
        os.environ["GLM3_CPU_KERNELS"] = "0"  # read when the first layer is built
    t0 = time.perf_counter()
    model = ChatGLM3ForConditionalGeneration.from_pretrained(args.model, ms_dtype=args.dtype)
    model.set_train(False)
    load_s = time.perf_counter() - t0
    prompts = np.load(args.prompts)
    results = {"impl": "mindspore", "mindspore": ms.__version__, "dtype": args.dtype,
               "threads": ms.get_context("runtime_num_threads"), "load_s": load_s, "batches": {}}
    if args.logits:
        ids = prompts["parity"].astype(np.int32)
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
        logits = model(Tensor(ids), Tensor(positions), Tensor(np.ones_like(ids))).logits
        np.savez(args.logits, logits=logits.astype(ms.float32).asnumpy())
    for batch in args.batches:
        ids = prompts[f"b{batch}"]
        mask = np.ones_like(ids)

        def run(new):
            elapsed, background, out = timed(lambda: model.generate(
                ids, attention_mask=mask, max_new_tokens=new, do_sample=False, eos_token_id=[], compiled=True))
            assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
            return elapsed, background, out

        entry = {key: [] for key in ("warmup_s", "warmup_bg", "warm2_s", "prefill_s", "prefill_bg", "full_s", "full_bg")}
        first = run(2)  # builds and compiles the prefill and decode graphs of this engine
        entry["warmup_s"].append(first[0])
        entry["warmup_bg"].append(first[1])
        for _ in range(args.repeats):
            elapsed, background, _ = run(1)
            entry["prefill_s"].append(elapsed)
            entry["prefill_bg"].append(background)
        for _ in range(args.repeats):
            elapsed, background, tokens = run(args.new_tokens)
            entry["full_s"].append(elapsed)
            entry["full_bg"].append(background)
        entry["warm2_s"].append(run(2)[0])  # the first call's work, warm: the difference is compile time
        entry["tokens"] = tokens[:, ids.shape[1]:].tolist()
        results["batches"][str(batch)] = entry
        print(f"mindspore {args.dtype} batch {batch}: first call {first[0]:.2f}s, prefill "
              f"{min(entry['prefill_s']):.3f}s, {args.new_tokens} tokens {min(entry['full_s']):.3f}s",
              file=sys.stderr)
        model.clear_generation_cache()
    Path(args.out).write_text(json.dumps(results))


# --------------------------------------------------------------------------- orchestration
def run_child(cmd: List[str], what: str) -> float:
    """Run one child process; returns the other processes' CPU load while it ran (in cores).

    The machine may be shared: CPU time used by anything but the child is
    measured so that a disturbed measurement can be recognised.
    """
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, start = busy_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    background = max(busy_cpu_seconds() - busy - own, 0.0) / wall
    if proc.returncode:
        sys.exit(f"bench_generate: {what} failed (exit {proc.returncode}): {' '.join(cmd)}")
    print(f"  {wall:.0f}s; other processes used {background:.2f} cores meanwhile", file=sys.stderr, flush=True)
    return background


def measure(cmd: List[str], what: str, out: Path, args, pooled: Optional[dict]) -> dict:
    """One timed child after waiting (``--wait``) for a quiet machine; its timings pooled with earlier rounds'."""
    load = wait_for_quiet(args.max_background, args.wait)
    background = run_child(cmd, what + f" (other load before: {load:.2f} cores)")
    result = json.loads(out.read_text())
    result["background_cores"] = [background]
    if pooled is None:
        return result
    for batch, entry in result["batches"].items():
        into = pooled["batches"][batch]
        for key, value in entry.items():
            if key.endswith(("_s", "_bg")):
                into[key] = into.get(key, []) + value
    pooled["background_cores"] += [background]
    return pooled


def _pick(entry: dict, key: str, stat: str):
    """(seconds, other processes' load) of the fastest call (``min``) or the medians."""
    times, loads = entry[key + "_s"], entry.get(key + "_bg") or [float("nan")] * len(entry[key + "_s"])
    if stat == "median":
        return statistics.median(times), statistics.median(loads)
    best = min(range(len(times)), key=times.__getitem__)
    return times[best], loads[best]


def summarize(side: dict, batch: int, prompt_len: int, new_tokens: int, stat: str = "min") -> dict:
    entry = side["batches"][str(batch)]
    prefill, prefill_bg = _pick(entry, "prefill", stat)
    full, full_bg = _pick(entry, "full", stat)
    decode = (full - prefill) / (new_tokens - 1)
    out = {"prefill_s": prefill, "prefill_tok_s": batch * prompt_len / prefill, "decode_ms": decode * 1000,
           "full_s": full, "background_cores": max(prefill_bg, full_bg), "first_call_s": min(entry["warmup_s"])}
    if entry.get("warm2_s"):
        # every round is a new process whose first call compiles: the fastest first call counts
        out["compile_s"] = max(min(entry["warmup_s"]) - min(entry["warm2_s"]), 0.0)
    return out


def bench_config(name: str, args, work: Path) -> dict:
    from _weights import write_random_checkpoint  # noqa: E402  (benchmarks/ is on sys.path)

    from glm3_mindspore import ChatGLM3Config

    config = ChatGLM3Config(**CONFIGS[name])
    ours_dir, glm_dir = work / f"chatglm3-{name}", work / f"glm-{name}"
    print(f"[{time.strftime('%H:%M:%S')}] config {name}: checkpoint in {ours_dir}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    wrote = write_random_checkpoint(ours_dir, config, seed=args.seed, dtype="float32")
    print(f"  {'written' if wrote else 'reused'} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    rng = np.random.default_rng(args.seed + 1)
    low, high = 100, config.padded_vocab_size - 100  # clear of the special ids
    prompts = {"parity": rng.integers(low, high, PARITY_SHAPE)}
    for batch in args.batch:
        prompts[f"b{batch}"] = rng.integers(low, high, (batch, args.prompt_len))
    prompt_file = work / f"prompts-{name}.npz"
    np.savez(prompt_file, **prompts)

    common = ["--batches", ",".join(map(str, args.batch)), "--new-tokens", str(args.new_tokens),
              "--repeats", str(args.repeats)]
    report = {"config": name, "model_config": CONFIGS[name], "sides": {}}
    me = [sys.executable, str(Path(__file__).resolve()), "_ms-worker", str(ours_dir), str(prompt_file)]
    torch_py = args.torch_python
    if not args.skip_torch:
        run_child([torch_py, str(TORCH_WORKER), "convert", str(ours_dir), str(glm_dir)], f"convert config {name} for GlmForCausalLM")
        run_child([torch_py, str(TORCH_WORKER), "logits", str(glm_dir), str(prompt_file),
                   str(work / f"logits-torch-{name}.npz"), "--threads", str(args.threads), "--attn", args.torch_attn],
                  f"torch logits, config {name}")
    # Rounds alternate the sides, so that both meet the same machine; repeats pool over rounds.
    sides = ["ours-float32"] + [f"ours-{dtype}" for dtype in args.also_dtypes]
    sides += ["ours-float32-matmul"] if args.compare_matmul else []
    sides += [] if args.skip_torch else ["torch-float32"]
    for round_ in range(args.rounds):
        for side in sides:
            out = work / f"{side}-{name}.json"
            what = f"{side}, config {name}, round {round_ + 1}/{args.rounds}"
            if side.startswith("ours"):
                dtype = side.split("-")[1]
                extra = ["--logits", str(work / f"logits-ours-{name}.npz")] if side == "ours-float32" and round_ == 0 else []
                extra += ["--matmul-only"] if side.endswith("-matmul") else []
                cmd = me + [str(out), "--dtype", dtype] + common + extra
            else:
                cmd = [torch_py, str(TORCH_WORKER), "bench", str(glm_dir), str(prompt_file), str(out), "--threads",
                       str(args.threads), "--attn", args.torch_attn, "--cache", args.torch_cache] + common
            report["sides"][side] = measure(cmd, what, out, args, report["sides"].get(side))

    if not args.skip_torch:
        ours = np.load(work / f"logits-ours-{name}.npz")["logits"]
        theirs = np.load(work / f"logits-torch-{name}.npz")["logits"]
        report["agreement"] = {
            "prompt_shape": list(PARITY_SHAPE),
            "max_abs_diff": float(np.abs(ours - theirs).max()),
            "max_abs_logit": float(np.abs(theirs).max()),
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
        }
    return report


def table(reports: List[dict], args) -> str:
    head = ("| config | batch | ours prefill tok/s | torch prefill tok/s | ratio | ours decode ms/token "
            "| torch decode ms/token | ratio | ours compile s | other load, cores |")
    lines = [head, "|" + "---|" * 10]
    variant_lines = []
    flagged = False
    for report in reports:
        for batch in args.batch:
            ours = summarize(report["sides"]["ours-float32"], batch, args.prompt_len, args.new_tokens, args.stat)
            torch_side = report["sides"].get("torch-float32")
            theirs = summarize(torch_side, batch, args.prompt_len, args.new_tokens, args.stat) if torch_side else None
            disturbed = ours["background_cores"] > args.max_background or (
                theirs is not None and theirs["background_cores"] > args.max_background)
            flagged = flagged or disturbed
            cells = [DESCRIPTION[report["config"]] + (" (*)" if disturbed else ""), str(batch), f"{ours['prefill_tok_s']:.0f}"]
            if theirs:
                cells += [f"{theirs['prefill_tok_s']:.0f}", f"{ours['prefill_tok_s'] / theirs['prefill_tok_s']:.2f}x"]
            else:
                cells += ["-", "-"]
            cells.append(f"{ours['decode_ms']:.1f}")
            if theirs:
                cells += [f"{theirs['decode_ms']:.1f}", f"{theirs['decode_ms'] / ours['decode_ms']:.2f}x"]
            else:
                cells += ["-", "-"]
            cells.append(f"{ours['compile_s']:.1f}")
            cells.append(f"{ours['background_cores']:.2f}" + (f" / {theirs['background_cores']:.2f}" if theirs else ""))
            lines.append("| " + " | ".join(cells) + " |")
            for side, label in VARIANTS.items():
                if side in report["sides"]:
                    other = summarize(report["sides"][side], batch, args.prompt_len, args.new_tokens, args.stat)
                    variant_lines.append(
                        f"| {DESCRIPTION[report['config']]} | {label} | {batch} | {other['prefill_tok_s']:.0f} "
                        f"| {other['decode_ms']:.1f} | {ours['decode_ms'] / other['decode_ms']:.2f}x "
                        f"| {other['compile_s']:.1f} | {other['background_cores']:.2f} |")
    text = "\n".join(lines)
    text += ("\n\nRatios are ours / torch for prefill throughput and torch / ours for decode latency: "
             "above 1x means ours is faster. Other load: CPU cores that other processes on the machine used "
             "during the timed calls the row is computed from (ours / torch).")
    if flagged:
        text += (f"\n(*) other processes used more than {args.max_background} CPU cores during a timed call "
                 "of this row (the machine is shared): its numbers are disturbed.")
    if variant_lines:
        text += ("\n\nOurs in other settings (decode ratio: float32 above / this row, above 1x means this row is "
                 "faster):\n\n| config | ours | batch | prefill tok/s | decode ms/token | ratio | compile s | other load, cores |\n"
                 "|---|---|---|---|---|---|---|---|\n" + "\n".join(variant_lines))
    return text


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ms-worker":
        p = argparse.ArgumentParser()
        p.add_argument("model")
        p.add_argument("prompts")
        p.add_argument("out")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--batches", type=_ints, default=[1])
        p.add_argument("--new-tokens", type=int, default=32)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--logits")
        p.add_argument("--matmul-only", action="store_true")
        return ms_worker(p.parse_args(argv[1:]))

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--configs", default="a,b", help="comma list of: " + ", ".join(CONFIGS))
    parser.add_argument("--batch", type=_ints, default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement process")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="how repeats combine: min (default; robust to other load on the machine) or median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-dtypes", type=lambda text: [x for x in text.split(",") if x], default=[],
                        help="comma list of float16, bfloat16: also time ours with these parameter dtypes")
    parser.add_argument("--compare-matmul", action="store_true",
                        help="also time ours in float32 without our CPU kernels (GLM3_CPU_KERNELS=0)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "glm3-bench-generate"),
                        help="checkpoints (reused between runs) and intermediate files")
    parser.add_argument("--torch-python", default=os.environ.get("GLM3_TORCH_PYTHON", "/work/venv-torch/bin/python"))
    parser.add_argument("--torch-attn", default="default", help="attn_implementation for GlmForCausalLM")
    parser.add_argument("--torch-cache", choices=("dynamic", "static"), default="dynamic")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (MindSpore uses its default)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--max-background", type=float, default=0.2,
                        help="CPU cores other processes may use during a measurement before it counts as disturbed")
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for a quiet machine before each measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of (ours, torch) measurement processes, alternating; repeats pool over rounds")
    parser.add_argument("--out", help="write all measurements as JSON here")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2")
    if set(args.also_dtypes) - set(EXTRA_DTYPES):
        parser.error(f"--also-dtypes: choose from {', '.join(EXTRA_DTYPES)}")
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if not args.skip_torch and not Path(args.torch_python).exists():
        parser.error(f"no Python for the torch side at {args.torch_python} (see benchmarks/README.md) or pass --skip-torch")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    reports = [bench_config(name, args, work) for name in names]
    text = table(reports, args)
    print()
    print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy, float32, "
          f"{args.stat} of {args.repeats} runs x {args.rounds} rounds; torch {args.torch_cache} cache, {args.threads} threads")
    print()
    print(text)
    print()
    for report in reports:
        ours, theirs = report["sides"]["ours-float32"], report["sides"].get("torch-float32")
        line = (f"{DESCRIPTION[report['config']]}: other processes' CPU load during ours "
                f"{_cores(ours)} cores" + (f", during torch {_cores(theirs)}" if theirs else "")
                + f"; load ours {ours['load_s']:.1f}s")
        if theirs:
            agree = report["agreement"]
            same = _token_agreement(ours, theirs)
            line += (f", torch {theirs['load_s']:.1f}s ({theirs['attn']} attention); logits max |diff| "
                     f"{agree['max_abs_diff']:.2e} (max |logit| {agree['max_abs_logit']:.2f}), argmax agreement "
                     f"{agree['argmax_agreement']:.3f}; greedy tokens identical: {same}")
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "reports": reports, "table": text}, indent=1))


def _cores(side: dict) -> str:
    return "/".join(f"{x:.2f}" for x in side["background_cores"])


def _token_agreement(ours: dict, theirs: dict) -> str:
    rows = same = 0
    for batch, entry in ours["batches"].items():
        for a, b in zip(entry["tokens"], theirs["batches"][batch]["tokens"]):
            rows += 1
            same += a == b
    return f"{same}/{rows} rows"


if __name__ == "__main__":
    main()
