"""``glm3 parallel plan``: a layout's parameter placement, operator strategies and memory per device, as text or JSON."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .layout import Layout, collapse_layers, format_ranges, human_bytes
from .memory import MemorySettings, estimate_memory
from .strategy import operator_strategies


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _table(rows: List[List[str]], header: List[str], right: Optional[set] = None) -> List[str]:
    right = right or set()
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def fmt(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  " + "  ".join(cells).rstrip()

    return [fmt(header), "  " + "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def parameter_rows(layout: Layout, full: bool = False) -> List[List[str]]:
    rows = []
    if full:
        for p in layout.params.values():
            rows.append([p.name, _shape(p.shape), p.describe_split(), _shape(p.stored_shape), str(p.stage),
                         "yes" if p.trainable else "no"])
        return rows
    for key, layers in collapse_layers(layout.params):
        name = key.replace(".N.", f".[{format_ranges(layers)}].") if layers else key
        sample = layout.params[key.replace(".N.", f".{layers[0]}.")] if layers else layout.params[key]
        stages = sorted({layout.params[key.replace('.N.', f'.{i}.')].stage for i in layers}) if layers else [sample.stage]
        rows.append([name, _shape(sample.shape), sample.describe_split(), _shape(sample.stored_shape),
                     format_ranges(stages), "yes" if sample.trainable else "no"])
    return rows


def plan_dict(layout: Layout, memory: MemorySettings, source: str = "") -> Dict[str, Any]:
    c, cfg = layout.model_config, layout.config
    stages = estimate_memory(layout, memory)
    return {
        "config": source,
        "layout": {"data_parallel": cfg.data_parallel, "model_parallel": cfg.model_parallel,
                   "pipeline_stage": cfg.pipeline_stage, "micro_batch_num": cfg.micro_batch_num,
                   "vocab_emb_dp": cfg.vocab_emb_dp, "use_seq_parallel": cfg.use_seq_parallel,
                   "optimizer_shard": cfg.optimizer_shard, "recompute": cfg.recompute,
                   "world_size": cfg.world_size},
        "model": {"num_layers": c.num_layers, "hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads,
                  "multi_query_group_num": c.num_key_value_groups, "ffn_hidden_size": c.ffn_hidden_size,
                  "padded_vocab_size": c.padded_vocab_size, "seq_length": memory.seq_length or c.seq_length,
                  "parameters": sum(p.numel for p in layout.params.values()),
                  "trainable": sum(p.numel for p in layout.params.values() if p.trainable)},
        "memory_settings": {"batch_size": memory.batch_size, "param_dtype": memory.param_dtype,
                            "compute_dtype": memory.compute_dtype, "flash_attention": memory.flash_attention},
        "parameters": [{"name": p.name, "shape": list(p.shape), "tensor_map": list(p.tensor_map),
                        "dev_matrix": list(p.dev_matrix), "slice_shape": list(p.slice_shape),
                        "opt_shard": p.opt_shard, "stage": p.stage, "trainable": p.trainable}
                       for p in layout.params.values()],
        "operators": [{"cell": o.cell, "primitive": o.primitive, "in_strategy": o.in_strategy,
                       "out_strategy": o.out_strategy, "role": o.role} for o in operator_strategies(layout)],
        "memory_per_device": [s.as_dict() for s in stages],
    }


def format_plan(layout: Layout, memory: MemorySettings, source: str = "", full: bool = False,
                strategies: bool = False) -> str:
    c, cfg = layout.model_config, layout.config
    total = sum(p.numel for p in layout.params.values())
    trainable = sum(p.numel for p in layout.params.values() if p.trainable)
    seq = memory.seq_length or c.seq_length
    on = lambda flag: "on" if flag else "off"  # noqa: E731
    lines = [
        f"ChatGLM3 parallel plan{': ' + source if source else ''}",
        f"model: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads "
        f"({c.num_key_value_groups} key/value groups), ffn {c.ffn_hidden_size}, vocab {c.padded_vocab_size}: "
        f"{total / 1e9:.3f} B parameters, {trainable / 1e9:.3f} B trainable",
        f"layout: data_parallel {cfg.data_parallel} x model_parallel {cfg.model_parallel} x pipeline_stage "
        f"{cfg.pipeline_stage} = {cfg.world_size} device{'s' if cfg.world_size > 1 else ''}; micro_batch_num {cfg.micro_batch_num}, "
        f"vocab_emb_dp {str(cfg.vocab_emb_dp).lower()}, sequence parallel {on(cfg.use_seq_parallel)}, "
        f"optimizer shard {on(cfg.optimizer_shard)}, recompute {on(cfg.recompute)}",
        f"per device: micro-batch {memory.batch_size} x {seq} tokens, parameters {memory.param_dtype}, compute "
        f"{memory.compute_dtype}, attention {'flash' if memory.flash_attention else 'plain (scores kept)'}; "
        f"global batch {memory.batch_size * cfg.data_parallel * (cfg.micro_batch_num if cfg.pipeline_stage > 1 else 1)}"
        " sequences per step",
    ]
    if cfg.pipeline_stage > 1:
        lines.append("pipeline: " + ", ".join(
            f"stage {s}: ranks {layout.ranks_of_stage(s).start}-{layout.ranks_of_stage(s).stop - 1}, layers "
            f"{s * layout.layers_per_stage()}-{(s + 1) * layout.layers_per_stage() - 1}" for s in range(cfg.pipeline_stage)))
    lines += ["", "Parameters" + ("" if full else " (layers collapsed; --full lists each)") + ":"]
    lines += _table(parameter_rows(layout, full), ["name", "shape", "split", "per device", "stage", "trainable"])
    if strategies:
        lines += ["", "Operator strategies (layer 0; the other layers alike):"]
        rows = [[o.cell, o.primitive, str(o.in_strategy), str(o.out_strategy or ""), o.role]
                for o in operator_strategies(layout)
                if ".layers." not in o.cell or ".layers.0." in o.cell]
        lines += _table(rows, ["cell", "primitive", "in_strategy", "out_strategy", "role"])
    lines += ["", "Memory per device (estimate; framework workspace and communication buffers come on top):"]
    rows = []
    for s in estimate_memory(layout, memory):
        rows.append([str(s.stage), f"{s.ranks.start}-{s.ranks.stop - 1}", str(s.layers), f"{s.parameters / 1e9:.3f} B",
                     human_bytes(s.weights), human_bytes(s.compute_copies), human_bytes(s.gradients),
                     human_bytes(s.optimizer), human_bytes(s.activations), human_bytes(s.total)])
    lines += _table(rows, ["stage", "ranks", "layers", "params", "weights", "compute copies", "gradients",
                           "optimizer", "activations", "total"], right=set(range(2, 10)))
    return "\n".join(lines)


__all__ = ["format_plan", "parameter_rows", "plan_dict"]
