"""The real ChatGLM3-6B shape on this machine: ours in bf16, fp16, int8 and int4 against llama.cpp, one run.

Random weights of the real shape (28 layers, 6.24 B parameters) are written
once as a hub folder of fp16 safetensors (``bench_load.py``'s writer). From
it, each in its own process, never two at once (each of ours right before
its llama.cpp peer; ``--rounds`` repeats the whole list, interleaved):

* ours (``AutoModelForCausalLM.from_pretrained``) in ``bfloat16`` and
  ``float16`` from that folder, ``int8`` and ``int4`` from quantized folders
  written once with ``glm3 convert --quantize`` (and ``int4`` quantized while
  loading the fp16 folder, for its load time and peak memory): load seconds,
  peak RSS, prefill tokens/s of a 128-token prompt, decode ms/token at batch
  1 and 4 (greedy, no eos: timestamps of the streamed tokens, after an untimed
  call that compiles the decode step);
* llama.cpp (``llama-cpp-python`` in its own venv, ``_llamacpp_worker.py``) at
  f16, q8_0 and q4_0 on GGUFs of the same weights (``_gguf.py``);
* the memory bound: the machine's streaming-read bandwidth (``_bandwidth.cc``)
  divided into the bytes a decode step reads (every weight but the
  embedding, plus the KV cache). The bandwidth is probed right before and
  right after each row and the row's bound uses the mean of its two probes:
  on a shared host the memory's speed moves by half within minutes, and one
  probe for the whole run made the rows' bounds drift with the hour;
* ``model.stream_chat`` on ours in ``int4`` and ``bfloat16`` with a 300-token
  prompt: time to first token and tokens/s, as a chat user sees them.

    python benchmarks/bench_6b.py --work /work/bench --out results-6b.json
    python benchmarks/bench_6b.py --work /work/bench --ours int4 --skip-llama --skip-chat   # one row
    python benchmarks/bench_6b.py --work /work/bench --ours bfloat16,int8,int4 --batch 1 --rounds 3 --skip-chat

Needs about 13 GB of free memory for the bf16/fp16/f16 rows and about 45 GB
of disk under ``--work`` for the checkpoints and GGUFs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import busy_cpu_seconds, wait_for_quiet  # noqa: E402

OURS = ("bfloat16", "float16", "int8", "int4")
LLAMA = ("f16", "q8_0", "q4_0")
PEER = {"bfloat16": "f16", "float16": "f16", "int8": "q8_0", "int4": "q4_0"}  # llama.cpp's row for each of ours
GB = 1e9
CHAT_TEXT = ("请根据下面的产品信息写一段两百字左右的广告文案，突出面料、版型和适合的场合，语气活泼但不要夸张。"
             "产品信息：类型是连衣裙，版型是A字，风格是简约和通勤，图案是纯色，衣样式是连衣裙，衣领型是V领，"
             "袖长是短袖，裙长是中长裙，面料是雪纺，颜色是雾霾蓝，适合的季节是春季和夏季。")


# ------------------------------------------------------------------ our side
def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


class Clock:
    """A streamer that timestamps every ``put`` after the prompt's."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self.started = time.perf_counter()

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode_step_bytes(model, cache_slots: int, batch: int) -> int:
    """Bytes a decode step reads: every parameter but the embedding table, plus the filled KV cache."""
    embedding = model.transformer.embedding.word_embeddings.weight
    weights = sum(p.nbytes for p in model.get_parameters() if p is not embedding)
    config = model.config
    kv = 2 * config.num_layers * batch * config.num_key_value_groups * config.kv_channels * cache_slots * 4
    return weights + kv


def ours_worker(args) -> None:
    """Runs in a child: load, prefill, decode at each batch size; JSON to ``args.out``."""
    import mindspore as ms

    from glm3_mindspore import AutoModelForCausalLM

    baseline = _status("VmRSS:")
    kwargs = {"quantization_bit": args.quantize_on_load} if args.quantize_on_load else {}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, ms_dtype=args.dtype, progress=False, **kwargs)
    report = {"impl": "ours", "mindspore": ms.__version__, "model": args.model, "dtype": args.dtype,
              "quantization": model.config.quantization_config, "load_s": time.perf_counter() - start,
              "baseline_rss_gb": baseline / GB, "rss_after_load_gb": _status("VmRSS:") / GB,
              "peak_rss_after_load_gb": _status("VmHWM:") / GB,
              "param_bytes": sum(p.nbytes for p in model.get_parameters()), "batches": {}}
    rng = np.random.default_rng(args.seed)
    for batch in args.batches:
        prompt = np.repeat(rng.integers(100, 60000, (1, args.prompt_len)), batch, axis=0)
        model.generate(prompt[:, :8], max_new_tokens=3, eos_token_id=[])  # compiles this batch's decode step
        runs = []
        for _ in range(args.repeats):
            clock = Clock()
            out = model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=[], streamer=clock)
            first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt itself
            runs.append({"prefill_s": first - clock.started,
                         "decode_s_per_token": (last - first) / (args.new_tokens - 1),
                         "tokens": out[0, args.prompt_len:].tolist()})
        best_prefill = min(r["prefill_s"] for r in runs)
        best_decode = min(r["decode_s_per_token"] for r in runs)
        report["batches"][str(batch)] = {
            "prefill_tok_s": batch * args.prompt_len / best_prefill, "decode_ms_per_token": 1e3 * best_decode,
            "prefill_s": [r["prefill_s"] for r in runs], "decode_s_per_token": [r["decode_s_per_token"] for r in runs],
            "step_bytes": decode_step_bytes(model, args.prompt_len + args.new_tokens // 2, batch),
            "tokens_row0": runs[0]["tokens"], "peak_rss_gb": _status("VmHWM:") / GB}  # so far: batches run in order
        model.clear_generation_cache()
    report["peak_rss_gb"] = _status("VmHWM:") / GB
    Path(args.out).write_text(json.dumps(report, indent=1))


def chat_worker(args) -> None:
    """Runs in a child: ``stream_chat`` with a ~300-token prompt; time to first token and tokens/s."""
    from glm3_mindspore import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(args.model, ms_dtype=args.dtype, progress=False)
    overhead = len(tokenizer.build_chat_input("")["input_ids"][0])
    text_ids = tokenizer.encode(CHAT_TEXT * 8, add_special_tokens=False)[:args.prompt_len - overhead]
    query = tokenizer.decode(text_ids)
    prompt_tokens = len(tokenizer.build_chat_input(query)["input_ids"][0])
    list(model.stream_chat(tokenizer, "你好", max_new_tokens=2))  # compiles the decode step, as a first turn would
    start = time.perf_counter()
    first, response = None, ""
    for response, _ in model.stream_chat(tokenizer, query, max_new_tokens=args.new_tokens, do_sample=False):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    text = response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)
    reply_tokens = len(tokenizer.encode(text, add_special_tokens=False))
    Path(args.out).write_text(json.dumps({
        "model": args.model, "dtype": args.dtype, "prompt_tokens": prompt_tokens,
        "time_to_first_token_s": first - start, "reply_tokens": reply_tokens,
        "tokens_per_s_after_first": (reply_tokens - 1) / (end - first) if reply_tokens > 1 else float("nan"),
        "total_s": end - start, "peak_rss_gb": _status("VmHWM:") / GB}, indent=1))


# ------------------------------------------------------------------ orchestration
def run_child(cmd: List[str], what: str, env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)
    load = wait_for_quiet(0.3, 120)
    busy, start = busy_cpu_seconds(), time.perf_counter()
    before = os.times()
    proc = subprocess.run(cmd, env={**os.environ, "GLOG_v": "3", **(env or {})})
    wall = time.perf_counter() - start
    after = os.times()
    own = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    if proc.returncode:
        sys.exit(f"bench_6b: {what} failed (exit {proc.returncode}): {' '.join(cmd)}")
    other = max(busy_cpu_seconds() - busy - own, 0.0) / wall
    print(f"  {wall:.0f} s; other processes used {other:.2f} cores (before: {load:.2f})", file=sys.stderr, flush=True)
    return {"wall_s": wall, "other_cores": other}


def peak_rss_of(cmd: List[str], what: str) -> Dict[str, float]:
    """Wall time and peak RSS of a command (GNU time's maximum resident set)."""
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        figures = run_child(["/usr/bin/time", "-f", "%M", "-o", report.name] + cmd, what)
        figures["peak_rss_gb"] = int(Path(report.name).read_text().split()[-1]) * 1024 / GB
    return figures


def ensure_weights(work: Path) -> Path:
    folder = work / "6b"
    if not (folder / "config.json").exists():
        run_child([sys.executable, str(HERE / "bench_load.py"), "--config", "6b", "--dir", str(folder),
                   "--format", "safetensors", "--keep"], "write the random 6B checkpoint (fp16, 12.5 GB)")
    tokenizer = folder / "tokenizer.model"
    if not tokenizer.exists():
        from glm3_mindspore.resources import tokenizer_path

        shutil.copy(Path(tokenizer_path()) / "tokenizer.model", tokenizer)
    return folder


def ensure_quantized(work: Path, source: Path, bits: int, report: dict) -> Path:
    folder = work / f"6b-int{bits}"
    if not (folder / "config.json").exists():
        glm3 = [sys.executable, "-m", "glm3_mindspore", "convert", "--src", str(source), "--dst", str(folder),
                "--to", "safetensors", "--quantize", f"int{bits}", "--no-progress", "--overwrite"]
        report[f"convert_int{bits}"] = peak_rss_of(glm3, f"glm3 convert --quantize int{bits}")
    return folder


def ensure_gguf(work: Path, source: Path, kind: str, llama_python: str) -> Path:
    target = work / "gguf" / f"6b-{kind}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    f16 = work / "gguf" / "6b-f16.gguf"
    if not f16.exists():
        run_child([llama_python, str(HERE / "_gguf.py"), "convert", "--src", str(source), "--dst", str(f16),
                   "--outtype", "f16"], "GGUF f16 of the 6B weights")
    if kind != "f16":
        run_child([llama_python, str(HERE / "_gguf.py"), "quantize", "--src", str(f16), "--dst", str(target),
                   "--type", kind], f"GGUF {kind} (llama.cpp's quantizer)")
    return target


def bandwidth() -> dict:
    source = HERE / "_bandwidth.cc"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"glm3-bench-bandwidth-{digest}"
    if not binary.exists():
        subprocess.run(["g++", "-O3", "-march=native", "-pthread", str(source), "-o", str(binary)],
                       check=True)
    wait_for_quiet(0.3, 120)
    return json.loads(subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout)


def gguf_step_bytes(path: Path, llama_python: str) -> int:
    """Bytes of every GGUF tensor but the token embedding (what a decode step reads of the weights)."""
    code = ("import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); "
            "print(sum(int(t.n_bytes) for t in r.tensors if t.name != 'token_embd.weight'))")
    return int(subprocess.run([llama_python, "-c", code, str(path)], capture_output=True, text=True,
                              check=True).stdout)


def run_probed(cmd: List[str], what: str) -> dict:
    """``run_child`` between two bandwidth probes; their mean is the row's bandwidth."""
    before = bandwidth()
    figures = run_child(cmd, what)
    after = bandwidth()
    figures["bandwidth_gb_per_s"] = (before["gb_per_s"] + after["gb_per_s"]) / 2
    figures["bandwidth_probes"] = [before, after]
    return figures


def record(report: dict, name: str, row: dict) -> None:
    """Keep a row's first run whole and every round's batch-1 decode against its own bound."""
    bound = 1e3 * row["step_bytes_b1"] / (row["bandwidth_gb_per_s"] * GB)
    decode = row["batches"]["1"]["decode_ms_per_token"]
    first = report["rows"].setdefault(name, row)
    first.setdefault("rounds", []).append({"decode_ms_b1": decode, "bound_ms_b1": bound,
                                           "bandwidth_gb_per_s": row["bandwidth_gb_per_s"],
                                           "probes_gb_per_s": [p["gb_per_s"] for p in row["bandwidth_probes"]]})


def table(report: dict) -> str:
    probes = [p for row in report["rows"].values() for r in row["rounds"] for p in r["probes_gb_per_s"]]
    lines = [f"streaming-read bandwidth probed before and after each row: {min(probes, default=float('nan')):.1f}-"
             f"{max(probes, default=float('nan')):.1f} GB/s; a row's memory bound = bytes read per decode step / "
             "the mean of its two probes",
             "(with rounds: medians over the rounds, and each round's decode / bound)",
             "| side | weights | load s | peak RSS GB | prefill tok/s (128) | decode ms/token b1 | bandwidth GB/s | "
             "bound b1 | b1 / bound | per round | decode ms/token b4 | other load, cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        b1, b4 = row["batches"].get("1", {}), row["batches"].get("4", {})
        rounds = row["rounds"]
        decode1 = float(np.median([r["decode_ms_b1"] for r in rounds]))
        bound = float(np.median([r["bound_ms_b1"] for r in rounds]))
        bw = float(np.median([r["bandwidth_gb_per_s"] for r in rounds]))
        ratio = float(np.median([r["decode_ms_b1"] / r["bound_ms_b1"] for r in rounds]))
        each = ", ".join(f"{r['decode_ms_b1']:.0f}/{r['bound_ms_b1']:.0f}" for r in rounds)
        lines.append(f"| {name} | {row.get('weights_gb', float('nan')):.2f} GB | {row['load_s']:.1f} | "
                     f"{row['peak_rss_gb']:.2f} | {b1.get('prefill_tok_s', float('nan')):.1f} | {decode1:.0f} | "
                     f"{bw:.1f} | {bound:.0f} | {ratio:.2f}x | {each} | "
                     f"{b4.get('decode_ms_per_token', float('nan')):.0f} | {row.get('other_cores', float('nan')):.2f} |")
    for name, chat in report.get("chat", {}).items():
        lines.append(f"chat {name}: {chat['prompt_tokens']}-token prompt, first token after "
                     f"{chat['time_to_first_token_s']:.1f} s, then {chat['tokens_per_s_after_first']:.2f} tokens/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/work/bench"), help="checkpoints, GGUFs, results")
    parser.add_argument("--ours", default=",".join(OURS), help=f"our rows, of {','.join(OURS)}")
    parser.add_argument("--llama", default=",".join(LLAMA), help=f"llama.cpp rows, of {','.join(LLAMA)}")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--llama-python", default=os.environ.get("GLM3_LLAMA_PYTHON", "/work/venv-llama/bin/python"))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", default="1,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="run every row this many times, interleaved")
    parser.add_argument("--chat-prompt", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: WORK/results-6b.json)")
    parser.add_argument("--_ours-worker", dest="ours_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_chat-worker", dest="chat_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--quantize-on-load", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batch.split(",") if b]
    if args.ours_worker:
        return ours_worker(args)
    if args.chat_worker:
        return chat_worker(args)

    work = args.work
    out = args.out or work / "results-6b.json"
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "cpu": _cpu_name(), "rows": {}, "chat": {}}
    source = ensure_weights(work)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--batch", args.batch,
              "--repeats", str(args.repeats)]

    def run_ours(name: str, round_index: int, heading: str) -> None:
        model, dtype = str(source), name
        if name.startswith("int"):
            model, dtype = str(ensure_quantized(work, source, int(name[3:]), report)), "auto"
        row_file = results / f"ours-{name}.json"
        figures = run_probed(me + ["--_ours-worker", "--model", model, "--dtype", dtype, "--out", str(row_file)]
                             + common, f"ours {name}{heading}")
        row = json.loads(row_file.read_text())
        row.update(figures, weights_gb=row["param_bytes"] / GB, step_bytes_b1=row["batches"]["1"]["step_bytes"])
        record(report, f"ours {name}", row)
        if name == "int4" and round_index == 0:  # quantizing while loading the fp16 folder: its time and peak
            onload = results / "ours-int4-onload.json"
            run_child(me + ["--_ours-worker", "--model", str(source), "--dtype", "bfloat16",
                            "--quantize-on-load", "4", "--out", str(onload), "--batch", "1", "--repeats", "1",
                            "--new-tokens", "2", "--prompt-len", "8"],
                      "ours int4, quantized while loading the fp16 folder")
            report["int4_quantized_on_load"] = json.loads(onload.read_text())

    def run_llama(kind: str, heading: str) -> None:
        gguf = ensure_gguf(work, source, kind, args.llama_python)
        row_file = results / f"llama-{kind}.json"
        figures = run_probed([args.llama_python, str(HERE / "_llamacpp_worker.py"), "--gguf", str(gguf),
                              "--threads", str(os.cpu_count()), "--prompt-len", str(args.prompt_len),
                              "--new-tokens", str(args.new_tokens), "--batch", args.batch, "--repeats",
                              str(args.repeats), "--json", str(row_file)], f"llama.cpp {kind}{heading}")
        row = json.loads(row_file.read_text())
        row.update(figures, weights_gb=row["gguf_bytes"] / GB, step_bytes_b1=gguf_step_bytes(gguf, args.llama_python))
        record(report, f"llama.cpp {kind}", row)

    ours = [n for n in args.ours.split(",") if n]
    llama = [] if args.skip_llama else [k for k in args.llama.split(",") if k]
    for round_index in range(args.rounds):
        heading = f", round {round_index + 1} of {args.rounds}" if args.rounds > 1 else ""
        # each of ours right before its llama.cpp peer: the memory's speed moves within minutes
        pending = list(llama)
        for name in ours:
            run_ours(name, round_index, heading)
            _write(out, report)
            if PEER[name] in pending:
                pending.remove(PEER[name])
                run_llama(PEER[name], heading)
                _write(out, report)
        for kind in pending:
            run_llama(kind, heading)
            _write(out, report)
    if not args.skip_chat:
        for name in ("int4", "bfloat16"):
            model = str(work / "6b-int4") if name == "int4" else str(source)
            chat_file = results / f"chat-{name}.json"
            run_child(me + ["--_chat-worker", "--model", model, "--tokenizer", str(source), "--dtype",
                            "auto" if name == "int4" else name, "--out", str(chat_file), "--prompt-len",
                            str(args.chat_prompt), "--new-tokens", "32"], f"chat, ours {name}")
            report["chat"][name] = json.loads(chat_file.read_text())
            _write(out, report)
    _write(out, report)
    print(table(report))


def _write(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
