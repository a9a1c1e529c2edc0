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

from glm3_mindspore.configuration import CHATGLM3_6B_FIELDS, ChatGLM3Config  # noqa: E402
from glm3_mindspore.modeling import cpu_kernels  # noqa: E402
from glm3_mindspore.modeling.cpu_kernels.build import (  # noqa: E402
    FORMAT_BF16, FORMAT_F16, FORMAT_INT4, FORMAT_INT8, STREAMING, open_library)

# format -> glm3_time_linear's code, bytes a weight (int4: half a byte and an fp16 scale
# per group of 128), and the output layer's format (a quantized model's is int8)
FORMATS = {"float16": (FORMAT_F16, 2.0, "float16"), "bfloat16": (FORMAT_BF16, 2.0, "bfloat16"),
           "int8": (FORMAT_INT8, 1.0, "int8"), "int4": (FORMAT_INT4, 0.5 + 2 / 128, "int8")}


def layer_shapes(config: ChatGLM3Config) -> dict:
    """[N, K] of each linear layer of a block, as the model's Linear layers hold them."""
    qkv = config.hidden_size + 2 * config.kv_channels * config.multi_query_group_num
    return {"query_key_value": (qkv, config.hidden_size), "dense": (config.hidden_size, config.hidden_size),
            "dense_h_to_4h": (2 * config.ffn_hidden_size, config.hidden_size),
            "dense_4h_to_h": (config.hidden_size, config.ffn_hidden_size)}


def time_format(lib, config: ChatGLM3Config, name: str, repeats: int) -> dict:
    code, per_weight, output_format = FORMATS[name]
    output_code, output_per_weight, _ = FORMATS[output_format]
    shapes = layer_shapes(config)
    layers = {}
    for layer, (n, k) in shapes.items():
        seconds = lib.glm3_time_linear(code, 1, n, k, STREAMING, repeats)
        layers[layer] = {"ms": 1e3 * seconds, "gb_per_s": n * k * per_weight / seconds / 1e9}
    vocab, hidden = config.padded_vocab_size, config.hidden_size
    seconds = lib.glm3_time_linear(output_code, 1, vocab, hidden, STREAMING, max(2, repeats // 2))
    output_bytes = vocab * hidden * output_per_weight
    layers["output_layer"] = {"ms": 1e3 * seconds, "gb_per_s": output_bytes / seconds / 1e9}
    step_ms = config.num_layers * sum(layers[layer]["ms"] for layer in shapes) + layers["output_layer"]["ms"]
    step_bytes = config.num_layers * sum(n * k for n, k in shapes.values()) * per_weight + output_bytes
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
    config = ChatGLM3Config(**CHATGLM3_6B_FIELDS)
    report = {"bandwidth": probe, "formats": {name: time_format(lib, config, name, args.repeats) for name in names}}
    gb_per_s = probe["gb_per_s"]
    print(f"streaming-read bandwidth {gb_per_s:.1f} GB/s; one row of x, products only")
    layers = list(layer_shapes(config)) + ["output_layer"]
    print("| format | " + " | ".join(f"{layer} GB/s" for layer in layers)
          + " | products ms/step | bound ms | products / bound |")
    print("|---|" + "---|" * (len(layers) + 3))
    for name, row in report["formats"].items():
        bound_ms = 1e3 * row["step_bytes"] / (gb_per_s * 1e9)
        rates = " | ".join(f"{row['layers'][layer]['gb_per_s']:.1f}" for layer in layers)
        print(f"| {name} | {rates} | {row['step_ms']:.0f} | {bound_ms:.0f} | {row['step_ms'] / bound_ms:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
