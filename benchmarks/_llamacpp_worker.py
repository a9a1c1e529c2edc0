"""Time llama.cpp (llama-cpp-python's low-level API) on a GGUF: load, prefill tokens/s, decode ms/token.

llama.cpp is the peer a CPU user would otherwise pick, so we measure it the
way a server runs it: one context per batch size with one sequence per row
(``n_seq_max`` >= batch), the prompts of all rows prefilled in one
``llama_decode`` call, then one ``llama_decode`` per decode step for all rows
together (one token and one ``seq_id`` per row). Greedy: the argmax of each
row's logits is taken here with numpy, no sampler, no eos stop, every row
runs the full length.

- prompt: ``--prompt-len`` random valid token ids (seeded, clear of the
  special ids), the same for every row, so every row must produce the same
  tokens (checked and reported as ``rows_agree``);
- prefill tokens/s = batch * prompt_len / (time of the prefill call);
- decode ms/token = (time of N decode steps) / N, each step feeding every row
  its previous argmax (the first from the prefill logits), so N+1 tokens are
  generated per row;
- an untimed warm-up run first (it faults in the memory-mapped weights), then
  ``--repeats`` timed runs; the fastest counts and every raw time is kept,
  each with the CPU cores other processes used meanwhile (``_common.timed``).

Load time is ``llama_model_load_from_file`` + ``llama_init_from_model``.
Peak RSS is ``VmHWM``; with mmap (the default, as llama.cpp runs) it counts
the weight file's pages that were touched, which are page cache shared with
other readers, not private memory: ``--no-mmap`` reads them into private
memory instead. ``RssFile`` / ``RssAnon`` (after load and at the end) tell
the two apart; llama.cpp's CPU backend also repacks some types (Q4_0) into
private buffers at load, so such a model is resident about twice.

Run with the llama.cpp environment (see ``_gguf.py`` for making the GGUF)::

    /work/venv-llama/bin/python benchmarks/_llamacpp_worker.py --gguf model-q4_0.gguf \\
        --threads 2 --prompt-len 128 --new-tokens 32 --batch 1,4 --repeats 2 --json out.json

or in-process: ``from _llamacpp_worker import run; report = run("model.gguf", batches=[1, 4])``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed, wait_for_quiet  # noqa: E402

import llama_cpp  # noqa: E402

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type of the K/V cache
SPECIAL_MARGIN = 100  # prompt ids avoid the first and last ids (control and special tokens)


def _status_gb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in GB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def _rss() -> Dict[str, float]:
    """Resident memory now, GB: mapped file pages (the weights, with mmap) apart from private memory
    (KV cache, compute buffers, and weights llama.cpp repacks for its CPU kernels, e.g. Q4_0)."""
    return {"rss_gb": _status_gb("VmRSS"), "rss_file_gb": _status_gb("RssFile"), "rss_anon_gb": _status_gb("RssAnon")}


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log, errors only (it prints every tensor and key otherwise)."""
    if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
        sys.stderr.write(text.decode("utf-8", "replace"))


class Model:
    """A loaded GGUF (llama_model + vocab), freed on ``close``."""

    def __init__(self, path: str, mmap: bool = True, verbose: bool = False):
        if not verbose:
            llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p())
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = mmap
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def context(self, n_ctx: int, n_batch: int, n_seq_max: int, threads: int, all_logits: bool = False,
                flash_attn: str = "auto", kv_type: str = "f16") -> "Context":
        return Context(self, n_ctx, n_batch, n_seq_max, threads, all_logits, flash_attn, kv_type)

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> List[int]:
        """llama.cpp's tokenizer on ``text`` (no BOS/[gMASK] unless the GGUF asks for them)."""
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return list(buf[:n])

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Context:
    """A llama_context with ``n_seq_max`` parallel sequences and a reusable token batch."""

    def __init__(self, model: Model, n_ctx: int, n_batch: int, n_seq_max: int, threads: int, all_logits: bool,
                 flash_attn: str, kv_type: str):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_seq_max = n_ctx, n_batch, n_seq_max
        params.n_ubatch = min(n_batch, params.n_ubatch)  # 512: llama.cpp's (and the server's) default
        params.n_threads = params.n_threads_batch = threads
        if all_logits:
            params.n_outputs_max_per_seq = 0  # default 1: one output (the last token) per sequence
        # llama.cpp's defaults (auto = on for CPU, f16 cache) round Q/K/V through f16: ~1e-4 off fp32
        # logits; flash_attn="off" with kv_type="f32" computes attention in f32 (parity checks)
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        params.type_k = params.type_v = KV_TYPES[kv_type]
        self.model, self.n_vocab = model, model.n_vocab
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.settings = {"n_ctx": llama_cpp.llama_n_ctx(self.ctx), "n_batch": n_batch, "n_ubatch": params.n_ubatch,
                         "n_seq_max": llama_cpp.llama_n_seq_max(self.ctx), "threads": threads,
                         "kv_unified": bool(params.kv_unified), "flash_attn": flash_attn, "kv_type": kv_type}

    def clear(self) -> None:
        """Drop every sequence from the KV cache."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def fill(self, tokens: np.ndarray, positions: np.ndarray, seqs: np.ndarray, outputs: np.ndarray) -> None:
        """Put token i at ``positions[i]`` of sequence ``seqs[i]`` in the batch; logits where ``outputs``."""
        batch = self.batch
        for i, (token, pos, seq, out) in enumerate(zip(tokens.tolist(), positions.tolist(), seqs.tolist(),
                                                        outputs.tolist())):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, out
        batch.n_tokens = len(tokens)

    def run(self) -> None:
        """One ``llama_decode`` of the filled batch (returns when the logits are ready)."""
        code = llama_cpp.llama_decode(self.ctx, self.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def decode(self, tokens: np.ndarray, positions: np.ndarray, seqs: np.ndarray, outputs: np.ndarray) -> None:
        self.fill(tokens, positions, seqs, outputs)
        self.run()

    def logits(self, index: int) -> np.ndarray:
        """Logits of output ``index`` of the last decode (a view into llama.cpp's buffer)."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None


def generate_greedy(ctx: Context, prompt: np.ndarray, rows: int, new_tokens: int) -> Dict[str, Any]:
    """Prefill ``rows`` copies of ``prompt`` (one sequence each), then ``new_tokens`` greedy steps.

    Returns the two timed calls (seconds, other processes' cores) and the tokens
    (rows x new_tokens + 1).
    """
    ctx.clear()
    length = len(prompt)
    seqs = np.repeat(np.arange(rows), length)
    last = np.tile(np.arange(length) == length - 1, rows)
    ctx.fill(np.tile(prompt, rows), np.tile(np.arange(length), rows), seqs, last)  # untimed: Python loop
    prefill_s, prefill_load, _ = timed(ctx.run)
    tokens = np.empty((rows, new_tokens + 1), dtype=np.int64)
    tokens[:, 0] = [int(np.argmax(ctx.logits(row * length + length - 1))) for row in range(rows)]
    rows_ids, flags = np.arange(rows), np.ones(rows, dtype=bool)

    def decode_steps() -> None:
        for step in range(new_tokens):
            ctx.decode(tokens[:, step], np.full(rows, length + step), rows_ids, flags)
            tokens[:, step + 1] = [int(np.argmax(ctx.logits(row))) for row in range(rows)]

    decode_s, decode_load, _ = timed(decode_steps)
    return {"prefill_s": prefill_s, "prefill_load": prefill_load, "decode_s": decode_s,
            "decode_load": decode_load, "tokens": tokens}


def run(gguf: str, threads: int = 2, prompt_len: int = 128, new_tokens: int = 32,
        batches: Sequence[int] = (1, 4), repeats: int = 2, seed: int = 0, warmup: bool = True,
        mmap: bool = True, flash_attn: str = "auto", kv_type: str = "f16", wait: float = 0.0,
        max_background: float = 0.3, verbose: bool = False) -> Dict[str, Any]:
    """Load ``gguf`` and time every batch size; returns the report (see the module docstring).

    ``wait`` > 0: before each timed repeat, wait up to that many seconds for other processes
    to use under ``max_background`` cores (a driver that waits itself leaves it at 0).
    """
    start = time.perf_counter()
    model = Model(gguf, mmap=mmap, verbose=verbose)
    model_s = time.perf_counter() - start
    prompt = np.random.default_rng(seed).integers(SPECIAL_MARGIN, model.n_vocab - SPECIAL_MARGIN, prompt_len)
    report: Dict[str, Any] = {
        "impl": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "gguf": str(gguf),
        "gguf_bytes": os.path.getsize(gguf), "mmap": mmap, "threads": threads, "prompt_len": prompt_len,
        "new_tokens": new_tokens, "seed": seed, "repeats": repeats,
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "model_load_s": model_s, "after_model_load": _rss(), "batches": {}}
    for rows in batches:
        start = time.perf_counter()
        # one KV stream of prompt + new tokens per row (non-unified cache splits n_ctx over sequences)
        ctx = model.context(n_ctx=rows * (prompt_len + new_tokens + 1), n_batch=max(rows * prompt_len, rows),
                            n_seq_max=rows, threads=threads, flash_attn=flash_attn, kv_type=kv_type)
        context_s = time.perf_counter() - start
        if "load_s" not in report:
            report["load_s"] = model_s + context_s  # what a user waits for before the first token
        if warmup:
            generate_greedy(ctx, prompt, rows, min(new_tokens, 4))
        quiet, runs = [], []
        for _ in range(repeats):
            quiet.append(wait_for_quiet(max_background, wait) if wait > 0 else float("nan"))
            runs.append(generate_greedy(ctx, prompt, rows, new_tokens))
        best_prefill = min(runs, key=lambda r: r["prefill_s"])
        best_decode = min(runs, key=lambda r: r["decode_s"])
        first = runs[0]["tokens"]
        report["batches"][str(rows)] = {
            "context": ctx.settings, "context_s": context_s, "other_load_before": quiet,
            "prefill_tok_s": rows * prompt_len / best_prefill["prefill_s"],
            "decode_ms_per_token": 1e3 * best_decode["decode_s"] / new_tokens,
            "prefill_s": [r["prefill_s"] for r in runs], "decode_s": [r["decode_s"] for r in runs],
            "prefill_other_load": [r["prefill_load"] for r in runs],
            "decode_other_load": [r["decode_load"] for r in runs],
            "rows_agree": bool((first == first[0]).all()),
            "repeats_agree": all(np.array_equal(r["tokens"], first) for r in runs),
            "tokens_row0": first[0].tolist()}
        ctx.close()
    report["peak_rss_gb"] = _status_gb("VmHWM")
    report["at_end"] = _rss()
    report["ru_maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    model.close()
    return report


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=_ints, default=[1, 4], help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--no-mmap", action="store_true", help="read the weights into private memory")
    parser.add_argument("--flash-attn", choices=sorted(FLASH_ATTN), default="auto", help="llama.cpp default: auto")
    parser.add_argument("--kv-type", choices=sorted(KV_TYPES), default="f16", help="K/V cache type (default f16)")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="seconds to wait for a quiet machine before each timed repeat (0: don't)")
    parser.add_argument("--max-background", type=float, default=0.3, help="cores of other load that count as quiet")
    parser.add_argument("--verbose", action="store_true", help="keep llama.cpp's own log")
    parser.add_argument("--json", type=Path, help="write the report here (also printed)")
    args = parser.parse_args(argv)
    report = run(args.gguf, args.threads, args.prompt_len, args.new_tokens, args.batch, args.repeats, args.seed,
                 warmup=not args.no_warmup, mmap=not args.no_mmap, flash_attn=args.flash_attn,
                 kv_type=args.kv_type, wait=args.wait, max_background=args.max_background, verbose=args.verbose)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    for rows, res in report["batches"].items():
        print(f"batch {rows}: prefill {res['prefill_tok_s']:.1f} tok/s, decode {res['decode_ms_per_token']:.1f} "
              f"ms/token (others' load {max(res['prefill_other_load'] + res['decode_other_load']):.2f} cores), "
              f"rows agree {res['rows_agree']}", file=sys.stderr)
    print(f"load {report['load_s']:.2f} s, peak RSS {report['peak_rss_gb']:.2f} GB "
          f"(mmap={report['mmap']}: counts mapped weight pages)", file=sys.stderr)
    if not args.json:
        print(text)


if __name__ == "__main__":
    main()
