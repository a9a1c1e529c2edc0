"""Operator shard strategies and pipeline stages for MindSpore's SEMI_AUTO_PARALLEL, from a :class:`Layout`.

:func:`operator_strategies` computes, without any device, the ``in_strategy``
(and ``out_strategy``) MindSpore expects on each sharded primitive of the
model: the ``MatMul`` of every :class:`~glm3_mindspore.modeling.layers.Linear`
(inputs reshaped to ``[tokens, in]``, weights ``[out, in]`` with
``transpose_b``) and the embedding ``Gather``. The remaining operators get their
strategies by MindSpore's sharding propagation (``search_mode:
sharding_propagation`` in MindFormers' glm3 YAMLs).

* column-parallel ``((dp, 1), (mp, 1))`` - output features split, no communication;
* row-parallel ``((dp, mp), (1, mp))`` - the partial sums are all-reduced by the
  compiler; with ``use_seq_parallel`` the output is reduce-scattered along the
  tokens instead (``out_strategy ((dp * mp, 1),)``), and the norms run on
  sequence slices ``(dp, mp, 1)``;
* vocabulary-parallel embedding ``Gather`` ``((mp, 1), (dp, 1))`` and output
  layer ``((dp, 1), (mp, 1))`` unless ``vocab_emb_dp``, then ``((1, 1), (dp, 1))``
  and ``((dp, 1), (1, 1))``;
* LoRA: ``lora_A`` / ``lora_B`` follow their base layer (B column-split for a
  column-parallel base, A row-split for a row-parallel one).

:func:`apply_shard_strategies` writes those strategies onto a built model and
sets ``pipeline_stage`` on its cells; :class:`~glm3_mindspore.parallel.SemiAutoParallel`
compiles the train step around it. Both need Ascend or GPU: MindSpore's
semi-auto parallel compiler does not run on CPU, and calling them there raises
:class:`ParallelDeviceError` before anything is compiled. Data parallelism
(``msrun`` + :class:`~glm3_mindspore.parallel.DataParallel`) runs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .layout import COLUMN_PARALLEL, ROW_PARALLEL, Layout

Strategy = Tuple[Tuple[int, ...], ...]


class ParallelDeviceError(RuntimeError, ValueError):
    """Model/pipeline parallelism asked for on a device MindSpore cannot run it on."""


@dataclass(frozen=True)
class OpStrategy:
    """The strategy of one primitive: ``cell`` path, its attribute holding the primitive, the strategies."""

    cell: str
    primitive: str
    in_strategy: Strategy
    out_strategy: Optional[Strategy] = None
    role: str = ""

    def describe(self) -> str:
        out = f" out={self.out_strategy}" if self.out_strategy else ""
        return f"{self.cell}.{self.primitive}: in={self.in_strategy}{out}  ({self.role})"


def _linear_strategy(path: str, dp: int, mp: int, seq_parallel: bool, vocab_emb_dp: bool) -> Tuple[Strategy, Optional[Strategy], str]:
    if path.endswith(COLUMN_PARALLEL):
        return ((dp, 1), (mp, 1)), None, "column-parallel"
    if path.endswith(ROW_PARALLEL):
        out = ((dp * mp, 1),) if seq_parallel and mp > 1 else None
        return ((dp, mp), (1, mp)), out, "row-parallel" + (", reduce-scatter over the sequence" if out else "")
    if path.endswith("output_layer"):
        if vocab_emb_dp:
            return ((dp, 1), (1, 1)), None, "output layer, replicated"
        return ((dp, 1), (mp, 1)), None, "output layer, vocabulary-parallel"
    return ((dp, 1), (1, 1)), None, "replicated"


def operator_strategies(layout: Layout, lora_targets: Optional[List[str]] = None) -> List[OpStrategy]:
    """Strategies of every sharded primitive of the model described by ``layout`` (one per Linear / Gather)."""
    cfg, model = layout.config, layout.model_config
    dp, mp = cfg.data_parallel, cfg.model_parallel
    seq = cfg.use_seq_parallel
    names = {name.rsplit(".", 1)[0] for name in layout.params if name.endswith(".weight")}
    lora_layers = {name[: -len(".lora_A.weight")] for name in layout.params if name.endswith(".lora_A.weight")}
    if lora_targets is not None:
        lora_layers &= set(lora_targets)
    out: List[OpStrategy] = []
    table = ((1, 1), (dp, 1)) if cfg.vocab_emb_dp else ((mp, 1), (dp, 1))
    out.append(OpStrategy("transformer.embedding.word_embeddings", "gather", table, None,
                          "word embedding, " + ("replicated" if cfg.vocab_emb_dp else "vocabulary-parallel")))
    linears = sorted(n for n in names if n.endswith(COLUMN_PARALLEL + ROW_PARALLEL + ("output_layer",))
                     and ".lora_" not in n and not n.endswith("word_embeddings"))
    for path in _network_order(linears, model.num_layers):
        strategy, out_strategy, role = _linear_strategy(path, dp, mp, seq, cfg.vocab_emb_dp)
        out.append(OpStrategy(path, "matmul", strategy, out_strategy, role))
        if path in lora_layers:
            if path.endswith(COLUMN_PARALLEL):
                a, b = ((dp, 1), (1, 1)), ((dp, 1), (mp, 1))
            elif path.endswith(ROW_PARALLEL):
                a, b = ((dp, mp), (1, mp)), ((dp, 1), (1, 1))
            else:
                a, b = ((dp, 1), (1, 1)), strategy
            out.append(OpStrategy(f"{path}.lora_A", "matmul", a, None, "LoRA A of a " + role))
            out.append(OpStrategy(f"{path}.lora_B", "matmul", b, None, "LoRA B of a " + role))
    return out


def _network_order(paths: List[str], num_layers: int) -> List[str]:
    def key(path: str):
        if path.startswith("transformer.encoder.layers."):
            layer = int(path.split(".")[3])
            order = ("query_key_value", "self_attention.dense", "dense_h_to_4h", "dense_4h_to_h")
            return (1, layer, next(i for i, o in enumerate(order) if path.endswith(o)))
        return (2 if "output_layer" in path else 0, 0, 0)

    return sorted(paths, key=key)


def norm_strategies(layout: Layout) -> Dict[str, Strategy]:
    """With ``use_seq_parallel``: the norms' input layout ``(dp, mp, 1)`` (tokens split along the sequence)."""
    cfg = layout.config
    if not cfg.use_seq_parallel or cfg.model_parallel == 1:
        return {}
    strategy = ((cfg.data_parallel, cfg.model_parallel, 1),)
    out = {}
    for name in layout.params:
        if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight", "final_layernorm.weight")):
            out[name.rsplit(".", 1)[0]] = strategy
    return out


def pipeline_stages(layout: Layout) -> Dict[str, int]:
    """``cell path -> pipeline stage`` for the cells that carry parameters."""
    stages: Dict[str, int] = {"transformer.embedding": 0}
    for i in range(layout.model_config.num_layers):
        stages[f"transformer.encoder.layers.{i}"] = layout.stage_of_layer(i)
    last = layout.num_stages - 1
    if layout.model_config.post_layer_norm:
        stages["transformer.encoder.final_layernorm"] = last
    stages["transformer.output_layer"] = last
    if layout.model_config.pre_seq_len is not None:
        stages["transformer.prefix_encoder"] = 0
    return stages


# ----------------------------------------------------------------------------- on a device
def require_parallel_device(what: str = "model and pipeline parallelism") -> str:
    """The device target when it can run MindSpore's semi-auto parallel (Ascend, GPU); else a clear error."""
    import mindspore as ms

    target = ms.get_context("device_target")
    if target not in ("Ascend", "GPU"):
        raise ParallelDeviceError(
            f"{what} needs Ascend or GPU: MindSpore's SEMI_AUTO_PARALLEL compiler (operator shard strategies, "
            f"pipeline stages, the parallel optimizer) does not run on {target}. Here you can check and size the "
            "layout (glm3 parallel plan), merge or reshard its checkpoints (glm3 ckpt), and train data-parallel "
            "with msrun (data_parallel only, model_parallel: 1, pipeline_stage: 1).")
    return target


def _cell(model, cells: Dict[str, Any], path: str):
    """The cell at ``path`` of ``model`` (``cells``: its ``cells_and_names()``)."""
    if path not in cells:
        raise KeyError(f"{type(model).__name__} has no cell {path!r}")
    return cells[path]


def apply_shard_strategies(model, layout: Layout, *, check_device: bool = True) -> List[OpStrategy]:
    """Set the layout's strategies on ``model``'s primitives and its cells' ``pipeline_stage``.

    Call it on the built model (LoRA added if any) before compiling under
    SEMI_AUTO_PARALLEL. ``check_device=False`` only records the strategies (for
    inspection on a CPU host); they take effect only in a semi-auto parallel graph.
    """
    if check_device:
        require_parallel_device()
    strategies = operator_strategies(layout)
    cells = dict(model.cells_and_names())
    for op in strategies:
        cell = _cell(model, cells, op.cell)
        if op.primitive == "gather":
            _embedding_gather(cell).shard(op.in_strategy)
            continue
        getattr(cell, op.primitive).shard(op.in_strategy, op.out_strategy)
    if layout.num_stages > 1:
        for path, stage in pipeline_stages(layout).items():
            _cell(model, cells, path).pipeline_stage = stage
    if check_device:
        for path, strategy in norm_strategies(layout).items():
            _cell(model, cells, path).shard(in_strategy=strategy)  # Cell.shard: sharding propagation from here
    return strategies


def _embedding_gather(cell):
    """The ``Gather`` primitive of an :class:`~glm3_mindspore.modeling.layers.Embedding`."""
    gather = getattr(cell, "gather", None)
    if gather is None:
        raise TypeError(f"{type(cell).__name__} has no Gather primitive to shard")
    return gather


def causal_lm_loss_cell(model):
    """A cell ``(input_ids, position_ids, attention_mask, labels) -> loss`` around a causal LM (keeps its names)."""
    from mindspore import nn

    class CausalLMLoss(nn.Cell):
        def __init__(self, network) -> None:
            super().__init__(auto_prefix=False)
            self.network = network

        def construct(self, input_ids, position_ids, attention_mask, labels):
            return self.network(input_ids, position_ids, attention_mask, labels)[0]

    return CausalLMLoss(model)


__all__ = ["OpStrategy", "ParallelDeviceError", "apply_shard_strategies", "causal_lm_loss_cell",
           "norm_strategies", "operator_strategies", "pipeline_stages", "require_parallel_device"]
