"""Streaming clients against ``glm3 serve``: continuous batching's throughput and latency, on the 6B layer shape.

The server is the real command (``python -m glm3_mindspore serve`` in its own
process) on bench_generate's config ``b``: ChatGLM3-6B's layer shape with 2
layers, seeded random weights (``_weights.py``, reused when present), the
bundled ChatGLM3 tokenizer. Clients are threads of this process, each with the
official ``openai`` client, streaming ``/v1/completions`` (raw prompts: a chat
reply's first line is its metadata line, which the server holds back, so random
weights would stream nothing until the end).

For each concurrency C (``--concurrency 1,4,8``), C clients each send
``--requests-per-client`` greedy requests back to back; then the same requests
run one after another from one client. Reported per run:

* output tokens/s: all completion tokens (the server's ``usage``) / wall time;
* decode tokens/s: the tokens after each request's first / the time during
  which at least one request was past its first token (prefills of others
  included, as a client sees them);
* time to first token (TTFT) and the gaps between streamed chunks (per-token
  latency; a chunk holds more than one token only when a character spans
  tokens), p50 and p95.

``--single-row`` also times one client against a server started with
``--max-batch 1``: an 8-row server decodes all 8 rows every step, so a lone
request there pays for the idle rows. Greedy replies of the concurrent run must
equal the sequential ones (the table says whether they do).

The machine may be shared: the CPU cores other processes used during each run
are reported (not counting this process and the server).

    python benchmarks/bench_serve.py --out serve.json
    python benchmarks/bench_serve.py --concurrency 1,8 --new-tokens 32 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import busy_cpu_seconds, process_cpu_seconds  # noqa: E402
from _weights import write_random_checkpoint  # noqa: E402
from bench_generate import CONFIGS, DESCRIPTION  # noqa: E402

CONFIG = "b"
MODEL_NAME = "bench"
START_TIMEOUT_SECONDS = 900  # load and first compile, on a busy machine
WORDS = "天空 为什么 是 蓝色 的 光 在 大气 中 散射 短 波长 更 容易 被 分子 散开 所以 我们 看到".split()


def ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


# ------------------------------------------------------------------ server
class ServerProcess:
    """``glm3 serve`` in a child process on a free local port, ready once ``/health`` answers."""

    def __init__(self, model: Path, args, max_batch: int, log: Path) -> None:
        from glm3_mindspore.resources import tokenizer_path
        from glm3_mindspore.serving.server import free_port

        self.port = free_port()
        self.log = log
        self.command = [sys.executable, "-m", "glm3_mindspore", "serve", "--model", str(model),
                        "--tokenizer", str(tokenizer_path()), "--dtype", args.dtype, "--port", str(self.port),
                        "--served-model-name", MODEL_NAME, "--max-batch", str(max_batch),
                        "--max-model-len", str(args.max_model_len)]
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerProcess":
        print(f"[{time.strftime('%H:%M:%S')}] {' '.join(self.command)}", file=sys.stderr, flush=True)
        self.process = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONWARNINGS="ignore"))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                sys.exit(f"bench_serve: the server did not start; see {self.log}")
            time.sleep(1)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def peak_rss_gb(self) -> float:
        """The server's peak resident memory so far (``VmHWM``)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return float("nan")
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        return kb / 2**20

    def __exit__(self, *_) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, then the worker stops
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ------------------------------------------------------------------ clients
@dataclass
class Timing:
    """One streamed request: when it was sent, when each chunk of text came, and what it said."""

    start: float
    chunks: List[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""


def stream_one(client, prompt: str, max_tokens: int) -> Timing:
    timing = Timing(time.perf_counter())
    stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            timing.chunks.append(time.perf_counter())
            timing.text += chunk.choices[0].text
        if chunk.usage:
            timing.tokens, timing.prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    return timing


def run_clients(url: str, prompts: Sequence[Sequence[str]], max_tokens: int) -> Tuple[List[Timing], float]:
    """One client (thread, own connection) per list of prompts, each sending its prompts back to back."""
    import openai

    def client_run(own: Sequence[str]) -> List[Timing]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        return [stream_one(client, prompt, max_tokens) for prompt in own]

    start = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(client_run, prompts))
    return [timing for own in results for timing in own], time.perf_counter() - start


# ------------------------------------------------------------------ figures
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def covered_seconds(intervals: Sequence[Tuple[float, float]]) -> float:
    """Length of the union of ``intervals``."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def summarize(timings: Sequence[Timing], wall: float) -> Dict[str, float]:
    tokens = sum(t.tokens for t in timings)
    decoding = [(t.chunks[0], t.chunks[-1]) for t in timings if len(t.chunks) > 1]
    decode_seconds = covered_seconds(decoding)
    ttft = [t.chunks[0] - t.start for t in timings if t.chunks]
    gaps = [b - a for t in timings for a, b in zip(t.chunks, t.chunks[1:])]
    return {"requests": len(timings), "completion_tokens": tokens, "wall_s": wall,
            "prompt_tokens_mean": statistics.mean(t.prompt_tokens for t in timings),
            "output_tok_s": tokens / wall,
            "decode_tok_s": sum(t.tokens - 1 for t in timings if len(t.chunks) > 1) / decode_seconds
            if decode_seconds else float("nan"),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "token_p50_ms": 1000 * percentile(gaps, 50), "token_p95_ms": 1000 * percentile(gaps, 95)}


class LoadMeter:
    """CPU cores used by other processes (not this one, not the server) while the ``with`` block ran."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> "LoadMeter":
        self.busy, self.own = busy_cpu_seconds(), time.process_time()
        self.server, self.start = process_cpu_seconds(self.server_pid), time.perf_counter()
        return self

    def __exit__(self, *_) -> None:
        wall = time.perf_counter() - self.start
        ours = (time.process_time() - self.own) + (process_cpu_seconds(self.server_pid) - self.server)
        self.cores = max(busy_cpu_seconds() - self.busy - ours, 0.0) / wall


def make_prompts(count: int, words: int, tag: str) -> List[str]:
    """Distinct prompts of about ``words`` words (the server reports their token counts)."""
    return [f"{tag} {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) for i in range(count)]


def measured(server: ServerProcess, prompts: Sequence[Sequence[str]], max_tokens: int) -> Dict:
    with LoadMeter(server.process.pid) as load:
        timings, wall = run_clients(server.url, prompts, max_tokens)
    return {**summarize(timings, wall), "other_load_cores": load.cores, "texts": [t.text for t in timings]}


def bench(server: ServerProcess, args) -> List[Dict]:
    runs = []
    for concurrency in args.concurrency:
        flat = make_prompts(concurrency * args.requests_per_client, args.prompt_words, f"c{concurrency}")
        per_client = [flat[i::concurrency] for i in range(concurrency)]
        print(f"[{time.strftime('%H:%M:%S')}] {concurrency} concurrent clients x {args.requests_per_client}",
              file=sys.stderr, flush=True)
        together = measured(server, per_client, args.new_tokens)
        alone = together if concurrency == 1 else measured(server, [flat], args.new_tokens)
        same = sorted(together["texts"]) == sorted(alone["texts"])
        runs.append({"concurrency": concurrency, "concurrent": together, "sequential": alone,
                     "identical_replies": same})
    return runs


# ------------------------------------------------------------------ report
def table(runs: Sequence[Dict], single: Optional[Dict]) -> str:
    one = next((r["concurrent"] for r in runs if r["concurrency"] == 1), None)
    lines = ["| clients | run | requests | output tok/s | decode tok/s | vs 1 client | TTFT p50 / p95 s "
             "| per-token p50 / p95 ms | other load, cores |",
             "|---|---|---|---|---|---|---|---|---|"]

    def row(clients, label, run):
        ratio = f"{run['decode_tok_s'] / one['decode_tok_s']:.2f}x" if one else "-"
        lines.append(f"| {clients} | {label} | {run['requests']} | {run['output_tok_s']:.1f} | "
                     f"{run['decode_tok_s']:.1f} | {ratio} | {run['ttft_p50_s']:.2f} / {run['ttft_p95_s']:.2f} | "
                     f"{run['token_p50_ms']:.0f} / {run['token_p95_ms']:.0f} | {run['other_load_cores']:.2f} |")

    for run in runs:
        row(run["concurrency"], "concurrent", run["concurrent"])
        if run["concurrency"] > 1:
            row(run["concurrency"], "one after another", run["sequential"])
    if single is not None:
        row(1, "`--max-batch 1` server", single)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=ints, default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--prompt-words", type=int, default=60, help="prompt length in words (~2 tokens each)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"],
                        help="parameter dtype of the served model (bfloat16: 2 GB of weights)")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--single-row", action=argparse.BooleanOptionalAction, default=True,
                        help="also time one client against a --max-batch 1 server")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "glm3-bench-serve"))
    parser.add_argument("--out", help="write the measurements as JSON here")
    args = parser.parse_args(argv)
    from glm3_mindspore import ChatGLM3Config

    work = Path(args.work_dir)
    model_dir = work / f"chatglm3-{CONFIG}"
    print(f"[{time.strftime('%H:%M:%S')}] checkpoint in {model_dir}", file=sys.stderr, flush=True)
    write_random_checkpoint(model_dir, ChatGLM3Config(**CONFIGS[CONFIG]))
    max_batch = max(args.concurrency)
    started = time.perf_counter()
    with ServerProcess(model_dir, args, max_batch, work / "server.log") as server:
        run_clients(server.url, [make_prompts(1, args.prompt_words, "warm-up")], 4)  # first calls compile
        runs = bench(server, args)
        peak = server.peak_rss_gb()
    single = None
    if args.single_row:
        with ServerProcess(model_dir, args, 1, work / "server-1.log") as server:
            run_clients(server.url, [make_prompts(1, args.prompt_words, "warm-up")], 4)
            single = measured(server, [make_prompts(args.requests_per_client, args.prompt_words, "c1")],
                              args.new_tokens)
    text = table(runs, single)
    prompt_tokens = runs[0]["concurrent"]["prompt_tokens_mean"]
    print(f"\n{DESCRIPTION[CONFIG]}, {args.dtype}, server --max-batch {max_batch} --max-model-len "
          f"{args.max_model_len}; prompts ~{prompt_tokens:.0f} tokens, max_tokens {args.new_tokens}, greedy, "
          f"streamed /v1/completions; {args.requests_per_client} requests per client\n")
    print(text)
    print("\nidentical greedy replies, concurrent vs one after another: "
          + ", ".join(f"{r['concurrency']} clients {r['identical_replies']}" for r in runs))
    print(f"server peak RSS {peak:.2f} GB; total {time.perf_counter() - started:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs, "single_row": single,
                                              "server_peak_rss_gb": peak, "table": text}, indent=1))


if __name__ == "__main__":
    main()
