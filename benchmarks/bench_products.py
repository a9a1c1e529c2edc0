"""Where a 6B decode step's time goes: the linear layers' products alone, against the memory bound.

Times one row of x against each linear layer of the real 6B shape with the CPU
kernels (``glm3_time_linear``: random weights in the stored format, the
product the model's decode step calls), adds them up over the 28 layers and
the output layer, and divides the bytes by the streaming-read bandwidth
measured in the same run (``_bandwidth.cc``, as ``bench_6b.py`` does). When
the products alone are as far from the bound as the whole step in
``bench_6b.py``, the time is in the products; when the step is slower, it is
in the other operations of a layer.

    python benchmarks/bench_products.py [--formats bfloat16,float16,int8,int4] [--repeats 8]

int4 uses groups of 128 and, like a quantized model, an int8 output layer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_6b import bandwidth  # noqa: E402

from glm3_mindspore.modeling import cpu_kernels  # noqa: E402
from glm3_mindspore.modeling.cpu_kernels.build import STREAMING, open_library  # noqa: E402

LAYERS = 28
HIDDEN, FFN, QKV, VOCAB = 4096, 13696, 4608, 65024
BLOCK_SHAPES = {"query_key_value": (QKV, HIDDEN), "dense": (HIDDEN, HIDDEN),
                "dense_h_to_4h": (2 * FFN, HIDDEN), "dense_4h_to_h": (HIDDEN, FFN)}
# glm3_time_linear's format codes, bytes per weight (int4: half a byte and an fp16 scale per 128),
# and the output layer's format
FORMATS = {"float16": (1, 2.0, 1), "bfloat16": (2, 2.0, 2), "int8": (3, 1.0, 3), "int4": (4, 0.5 + 2 / 128, 3)}
OUTPUT_BYTES = {1: 2.0, 2: 2.0, 3: 1.0}


def time_format(lib, name: str, repeats: int) -> dict:
    code, per_weight, output_code = FORMATS[name]
    layers = {}
    for layer, (n, k) in BLOCK_SHAPES.items():
        seconds = lib.glm3_time_linear(code, 1, n, k, STREAMING, repeats)
        layers[layer] = {"ms": 1e3 * seconds, "gb_per_s": n * k * per_weight / seconds / 1e9}
    seconds = lib.glm3_time_linear(output_code, 1, VOCAB, HIDDEN, STREAMING, max(2, repeats // 2))
    output_bytes = VOCAB * HIDDEN * OUTPUT_BYTES[output_code]
    layers["output_layer"] = {"ms": 1e3 * seconds, "gb_per_s": output_bytes / seconds / 1e9}
    step_ms = LAYERS * sum(layers[layer]["ms"] for layer in BLOCK_SHAPES) + layers["output_layer"]["ms"]
    step_bytes = LAYERS * sum(n * k for n, k in BLOCK_SHAPES.values()) * per_weight + output_bytes
    return {"layers": layers, "step_ms": step_ms, "step_bytes": step_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="bfloat16,float16,int8,int4")
    parser.add_argument("--repeats", type=int, default=8, help="fastest of this many calls per layer")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    names = [name for name in args.formats.split(",") if name]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    path = cpu_kernels.library()
    if path is None:
        sys.exit("the CPU kernels are not available here (no g++, or GLM3_CPU_KERNELS=0)")
    lib = open_library(path)
    probe = bandwidth()
    report = {"bandwidth": probe, "formats": {name: time_format(lib, name, args.repeats) for name in names}}
    gb_per_s = probe["gb_per_s"]
    print(f"streaming-read bandwidth {gb_per_s:.1f} GB/s; one row of x, products only")
    print("| format | " + " | ".join(f"{layer} GB/s" for layer in list(BLOCK_SHAPES) + ["output_layer"])
          + " | products ms/step | bound ms | products / bound |")
    print("|---|" + "---|" * (len(BLOCK_SHAPES) + 4))
    for name, row in report["formats"].items():
        bound_ms = 1e3 * row["step_bytes"] / (gb_per_s * 1e9)
        rates = " | ".join(f"{row['layers'][layer]['gb_per_s']:.1f}" for layer in list(BLOCK_SHAPES) + ["output_layer"])
        print(f"| {name} | {rates} | {row['step_ms']:.0f} | {bound_ms:.0f} | {row['step_ms'] / bound_ms:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
