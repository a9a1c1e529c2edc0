"""Memory per device of a parallel layout, estimated from the config alone (no device).

Per device of each pipeline stage (all devices of a stage hold the same amount):

* **weights** - the device's slices in the parameter dtype (``param_init_type``;
  fp32 master weights when training mixed precision); divided by the data
  parallel size where the parallel optimizer (``optimizer_shard``) splits them;
* **compute copies** - with a compute dtype narrower than the parameters, each
  layer casts its weights once per step and keeps the cast for the backward pass
  (compute dtype, whole slices: the parallel optimizer all-gathers them); with
  recompute only the layer being recomputed keeps its casts;
* **gradients** - one per trainable parameter slice, in the parameter dtype
  (MindSpore's parallel optimizer level 1 keeps them whole);
* **optimizer** - AdamW's two fp32 moments per trainable element, divided by the
  optimizer shard;
* **activations** - what the backward pass keeps, per micro-batch of
  ``batch_size`` sequences of ``seq_length`` tokens and per layer of the stage,
  times the micro-batches in flight (1F1B: ``min(micro_batch_num, stages - k)`` on
  stage ``k``). Per layer and token, in compute-dtype bytes ``c``: the norm inputs
  and fp32 statistics, the QKV input and output, rotary inputs and outputs, the
  attention context, the SwiGLU ``[gate|up]``, ``silu(gate)`` and product, the
  residual; tensors inside the heads / FFN are divided by ``mp``, the rest too
  with ``use_seq_parallel``. Attention scores add ``heads/mp * seq * (4 + c)``
  per token unless flash attention is used. Full recompute keeps only each
  layer's input plus one layer's working set. The last stage adds the logits
  (fp32 and compute copy, vocabulary split by ``mp`` unless ``vocab_emb_dp``).

Estimates, not measurements: framework workspace, communication buffers and
fragmentation come on top (MindFormers leaves ~10-15% headroom below
``max_device_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from .layout import Layout

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}


def dtype_bytes(name: Optional[str], default: int = 4) -> int:
    if name is None:
        return default
    key = str(name).lower().replace("mstype.", "").replace("ms.", "")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


@dataclass
class StageMemory:
    stage: int
    ranks: range
    layers: int
    parameters: int  # elements held per device (slices, before optimizer sharding)
    trainable: int
    weights: float
    compute_copies: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.compute_copies + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> Dict[str, float]:
        return {"stage": self.stage, "ranks": f"{self.ranks.start}-{self.ranks.stop - 1}", "layers": self.layers,
                "parameters": self.parameters, "trainable": self.trainable, "weights": self.weights,
                "compute_copies": self.compute_copies, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}


@dataclass
class MemorySettings:
    batch_size: int = 1  # sequences per micro-batch per data-parallel rank
    seq_length: Optional[int] = None  # default: the model config's
    param_dtype: str = "float32"
    compute_dtype: str = "float16"
    flash_attention: bool = False


def layer_activation_bytes(model_config, layout: Layout, settings: MemorySettings) -> float:
    """Bytes one layer keeps for the backward pass, per micro-batch, on one device (no recompute)."""
    c = model_config
    cfg = layout.config
    mp = cfg.model_parallel
    seq = settings.seq_length or c.seq_length
    tokens = settings.batch_size * seq  # per data-parallel rank and micro-batch
    cb = dtype_bytes(settings.compute_dtype, 2)
    heads, groups, dim, hidden, ffn = (c.num_attention_heads, c.num_key_value_groups, c.kv_channels, c.hidden_size,
                                       c.ffn_hidden_size)
    kv_split = min(mp, groups)
    # tensors of hidden size: two norm inputs (+ fp32 statistics path), QKV and MLP inputs, two residuals
    per_token_hidden = hidden * (2 * (cb + 4) + 2 * cb + 2 * cb)
    if cfg.use_seq_parallel:
        per_token_hidden /= mp
    per_token_split = (
        (heads * dim / mp + 2 * groups * dim / kv_split) * cb      # QKV output
        + (heads * dim / mp + groups * dim / kv_split) * cb * 2     # rotary in/out of q and k
        + heads * dim / mp * cb                                      # attention context (dense input)
        + (2 * ffn / mp + ffn / mp + ffn / mp) * cb                  # [gate|up], silu(gate), product
    )
    per_token = per_token_hidden + per_token_split
    if settings.flash_attention:
        scores = settings.batch_size * heads / mp * seq * 8  # softmax statistics only
    else:
        scores = settings.batch_size * heads / mp * seq * seq * (4 + cb)  # fp32 probabilities + compute copy
    return tokens * per_token + scores


def estimate_memory(layout: Layout, settings: MemorySettings) -> List[StageMemory]:
    """Per-stage (= per-device within the stage) memory of training with ``layout``."""
    c, cfg = layout.model_config, layout.config
    pb = dtype_bytes(settings.param_dtype, 4)
    cb = dtype_bytes(settings.compute_dtype, pb)
    seq = settings.seq_length or c.seq_length
    per_layer = layer_activation_bytes(c, layout, settings)
    hidden_input = settings.batch_size * seq * c.hidden_size * cb
    if cfg.use_seq_parallel:
        hidden_input /= cfg.model_parallel
    out = []
    for stage in range(layout.num_stages):
        params = layout.params_of_stage(stage)
        layers = layout.layers_per_stage()
        elements = sum(p.slice_numel for p in params)
        trainable = [p for p in params if p.trainable]
        stored = sum(p.slice_numel / p.opt_shard for p in params)
        weights = stored * pb
        # compute-dtype casts of the weights stay alive for the backward pass; with recompute only
        # the layer being recomputed holds them (plus embedding and output layer, outside the layers)
        held = elements
        if cfg.recompute:
            in_layers = [p for p in params if p.name.startswith("transformer.encoder.layers.")]
            per_layer_elements = sum(p.slice_numel for p in in_layers) / max(layers, 1)
            held = elements - sum(p.slice_numel for p in in_layers) + per_layer_elements
        copies = held * cb if cb < pb else 0.0
        gradients = sum(p.slice_numel for p in trainable) * pb
        optimizer = sum(p.slice_numel / p.opt_shard for p in trainable) * 8
        # full recompute: each layer keeps its input, one layer is recomputed at a time
        per_micro = layers * hidden_input + per_layer if cfg.recompute else layers * per_layer
        if stage == layout.num_stages - 1:
            vocab = c.padded_vocab_size if cfg.vocab_emb_dp else c.padded_vocab_size / cfg.model_parallel
            per_micro += settings.batch_size * seq * vocab * (4 + cb)
        if stage == 0:
            per_micro += hidden_input  # embedding output
        in_flight = min(cfg.micro_batch_num, layout.num_stages - stage) if layout.num_stages > 1 else 1
        out.append(StageMemory(stage, layout.ranks_of_stage(stage), layers, elements, sum(p.slice_numel for p in trainable),
                               weights, copies, gradients, optimizer, per_micro * in_flight))
    return out


__all__ = ["MemorySettings", "StageMemory", "dtype_bytes", "estimate_memory", "layer_activation_bytes"]
