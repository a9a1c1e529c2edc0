"""How fast and how lean is ``from_pretrained``? Load time and peak RSS against the bytes read.

Writes a hub-layout checkpoint of a chosen config with random fp16 weights
(once; ``--reuse`` keeps an existing one), then loads it in a fresh process
(so writing does not count) with ``AutoModelForCausalLM.from_pretrained`` and
reports wall time, peak resident memory and the size of the weight files.

    python benchmarks/bench_load.py --config 1gb --dir /tmp/bench-1gb
    python benchmarks/bench_load.py --config 6b --dir /data/bench-6b --format bin

Configs: ``6b`` (the real ChatGLM3-6B, 12.5 GB in fp16), ``1gb`` (hidden 2048,
4 layers, 0.95 GB), ``tiny``, or a path to a ``config.json``. The run refuses to
start when the disk (or, for loading, the memory) has no room.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HUB_6B = ROOT / "tests" / "fixtures" / "hub_configs" / "chatglm3-6b.json"
PRESETS: Dict[str, Dict[str, int]] = {
    "6b": {},
    "1gb": {"num_layers": 4, "hidden_size": 2048, "ffn_hidden_size": 6912, "num_attention_heads": 16},
    "tiny": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
             "kv_channels": 16},
}
GB = 1e9


def make_config(name: str):
    from glm3_mindspore import ChatGLM3Config

    if name in PRESETS:
        values = json.loads(HUB_6B.read_text(encoding="utf-8"))
        values.update(PRESETS[name])
    else:
        values = json.loads(Path(name).read_text(encoding="utf-8"))
    values["torch_dtype"] = "float16"
    return ChatGLM3Config.from_dict(values)


def weight_shapes(config) -> Dict[str, Tuple[int, ...]]:
    """Hub names and shapes of the weights, from a model whose parameters are never materialized."""
    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.modeling.pretrained import uninitialized_parameters

    with uninitialized_parameters():
        model = ChatGLM3ForConditionalGeneration(config, dtype="float16")
    shapes = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    shapes["transformer.rotary_pos_emb.inv_freq"] = (config.kv_channels // 4,)  # as upstream checkpoints carry it
    return shapes


def random_weights(shapes: Dict[str, Tuple[int, ...]], seed: int = 0) -> Iterator[Tuple[str, np.ndarray]]:
    """Random N(0, 0.02) fp16 tensors, cut from a shared random pool (generating 6e9 normals is slow)."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        start = int(rng.integers(0, pool.size))
        yield name, np.resize(np.roll(pool, -start), count).reshape(shape)


def check_room(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05 + 1 * GB:
        sys.exit(f"bench_load: not enough disk in {folder}: the checkpoint needs {needed / GB:.1f} GB, "
                 f"{free / GB:.1f} GB free; pass --dir on a larger disk")


def write_checkpoint(folder: Path, config, fmt: str, max_shard_size: str) -> int:
    from glm3_mindspore.checkpoints import write_weights
    from glm3_mindspore.checkpoints.mindspore_ckpt import save_ckpt

    shapes = weight_shapes(config)
    needed = sum(int(np.prod(s)) * 2 for s in shapes.values())
    check_room(folder, needed)
    start = time.perf_counter()
    if fmt == "ckpt":
        save_ckpt(folder / "model.ckpt", random_weights(shapes), names="mindformers")
    else:
        write_weights(folder, random_weights(shapes), max_shard_size=max_shard_size,
                      safe_serialization=fmt == "safetensors")
    config.save_pretrained(folder)
    print(f"wrote {needed / GB:.2f} GB of {fmt} in {time.perf_counter() - start:.1f} s to {folder}", flush=True)
    return needed


def weight_files(folder: Path):
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".ckpt")]


def measure(folder: Path, dtype: str) -> Dict[str, float]:
    """Runs in a fresh process: load the folder and report time and memory."""
    import psutil

    import glm3_mindspore  # noqa: F401  (import cost is not load cost)
    from glm3_mindspore import AutoModelForCausalLM

    _reset_peak_rss()
    baseline = psutil.Process().memory_info().rss
    files = weight_files(folder)
    source = files[0] if len(files) == 1 and files[0].suffix == ".ckpt" else folder
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, config=_config_for(folder), ms_dtype=dtype,
                                                 progress=False)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    param_bytes = sum(p.nbytes for p in model.get_parameters())
    return {
        "load_seconds": seconds,
        "file_bytes": sum(f.stat().st_size for f in files),
        "param_bytes": param_bytes,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "peak_over_baseline": peak - baseline,
        "rss_after_load": psutil.Process().memory_info().rss,
        "missing": len(model.loading_info.missing),
    }


def _peak_rss() -> int:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` not inherited from the parent across exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    """Start the peak at the current RSS (Linux ``clear_refs`` 5), so imports are not mistaken for loading."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        pass


def _config_for(folder: Path):
    from glm3_mindspore import ChatGLM3Config

    return ChatGLM3Config.from_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="1gb", help="6b, 1gb, tiny or a config.json path")
    parser.add_argument("--dir", type=Path, required=True, help="where to write the checkpoint")
    parser.add_argument("--format", choices=("safetensors", "bin", "ckpt"), default="safetensors")
    parser.add_argument("--max-shard-size", default="2GB", help="shard size (the hub's 6B uses ~2 GB)")
    parser.add_argument("--dtype", default="float16", help="parameter dtype to load into")
    parser.add_argument("--reuse", action="store_true", help="load an existing checkpoint in --dir")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure_only:
        print(json.dumps(measure(args.dir, args.dtype)))
        return
    import psutil

    config = make_config(args.config)
    existing = args.dir.exists() and any(args.dir.iterdir())
    if existing and not args.reuse:
        sys.exit(f"bench_load: {args.dir} is not empty; pass --reuse to load what is there or choose another --dir")
    if not existing:
        write_checkpoint(args.dir, config, args.format, args.max_shard_size)
    needed = sum(f.stat().st_size for f in weight_files(args.dir))
    available = psutil.virtual_memory().available
    if needed * 1.1 > available:
        sys.exit(f"bench_load: loading needs about {needed / GB:.1f} GB of memory, {available / GB:.1f} GB available")
    child = subprocess.run(
        [sys.executable, __file__, "--measure-only", "--dir", str(args.dir), "--dtype", args.dtype],
        capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"bench_load: loading failed:\n{child.stderr[-4000:]}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures.update(config=args.config, format=args.format, dtype=args.dtype)
    print(
        f"{args.config} {args.format} -> {args.dtype}: loaded {figures['file_bytes'] / GB:.2f} GB of files "
        f"({figures['param_bytes'] / GB:.2f} GB of parameters) in {figures['load_seconds']:.1f} s; "
        f"peak RSS {figures['peak_rss'] / GB:.2f} GB = baseline {figures['baseline_rss'] / GB:.2f} GB "
        f"+ {figures['peak_over_baseline'] / GB:.2f} GB "
        f"({figures['peak_over_baseline'] / figures['param_bytes']:.2f}x the parameter bytes)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if not args.keep and not args.reuse:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only
    main()
