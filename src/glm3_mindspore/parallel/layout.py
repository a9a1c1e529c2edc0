"""Parallel layouts of ChatGLM3: ``parallel_config`` checked against the model, and where every parameter lives.

Pure Python (no device, no model built), so a layout for the 6B model can be
checked and sized on a laptop before a cluster is rented.

Devices: ``world_size = data_parallel * model_parallel * pipeline_stage``. Stage
``k`` owns global ranks ``k * dp * mp ... (k + 1) * dp * mp - 1``; inside a stage
the device matrix is ``[dp, mp]`` (row-major, so the ``mp`` ranks of one
data-parallel replica are adjacent), which is MindSpore's convention. A
parameter's ``tensor_map`` names, for each tensor dimension, the device-matrix
axis it is split over counted from the right (``0`` = ``mp``, ``1`` = ``dp``,
``-1`` = not split), exactly as MindSpore's strategy files record it.

Megatron-style splits (what MindFormers' glm2/glm3 models use):

* column-parallel (output rows split over ``mp``): ``query_key_value``
  (weight and bias), ``mlp.dense_h_to_4h``; the LoRA ``lora_B`` of such a layer;
* row-parallel (input columns split over ``mp``, partial sums all-reduced):
  ``self_attention.dense``, ``mlp.dense_4h_to_h``; the LoRA ``lora_A`` of such a layer;
* vocabulary-parallel (rows split over ``mp``) word embedding and output layer
  when ``vocab_emb_dp`` is false; replicated when it is true;
* everything else (norms, prefix encoder, LoRA scalings) replicated.

Fused projections are split as stored: ``query_key_value`` rows are
``[H*D query | G*D key | G*D value]`` and ``dense_h_to_4h`` rows ``[gate | up]``,
so each ``mp`` rank holds one contiguous block of rows (MindFormers' layout,
which keeps strategy files and checkpoint slices interchangeable); MindSpore's
compiler redistributes the projection outputs where the q/k/v or gate/up
slices cross those blocks. The key/value groups are split at most
``multi_query_group_num`` ways in attention: with ``mp > G`` each group is
replicated on ``mp / G`` ranks.

Pipeline: layer ``i`` runs on stage ``i // (num_layers / pipeline_stage)``; the
embedding (and P-Tuning prefix encoder) on the first stage, the final norm and
output layer on the last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..checkpoints.distributed import SliceLayout

REPLICATED = "replicated"
COLUMN = "column"
ROW = "row"
VOCAB = "vocab"

MP_AXIS = 0  # tensor_map value of the model-parallel axis (rightmost in [dp, mp])
DP_AXIS = 1

COLUMN_PARALLEL = ("query_key_value", "dense_h_to_4h")
ROW_PARALLEL = ("self_attention.dense", "dense_4h_to_h")

_BOOL_KEYS = ("vocab_emb_dp", "use_seq_parallel", "optimizer_shard", "recompute")
_INT_KEYS = ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num", "gradient_aggregation_group",
             "expert_parallel", "context_parallel", "optimizer_shard_threshold_kb")


class LayoutError(ValueError):
    """A parallel layout that cannot work; the message lists every reason."""

    def __init__(self, problems: Sequence[str], what: str = "parallel layout") -> None:
        self.problems = list(problems)
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class ParallelConfig:
    """MindFormers' ``parallel_config`` (plus the switches of ``parallel`` / ``recompute_config`` it needs)."""

    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1
    micro_batch_num: int = 1
    vocab_emb_dp: bool = True
    use_seq_parallel: bool = False
    gradient_aggregation_group: int = 4
    optimizer_shard: bool = False  # MindSpore's parallel optimizer (``parallel.enable_parallel_optimizer``)
    optimizer_shard_threshold_kb: int = 64  # smaller parameters are not sharded (MindSpore's default)
    recompute: bool = False
    expert_parallel: int = 1
    context_parallel: int = 1

    @property
    def world_size(self) -> int:
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    @property
    def devices_per_stage(self) -> int:
        return self.data_parallel * self.model_parallel

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.data_parallel, self.model_parallel, self.pipeline_stage

    def describe(self) -> str:
        return (f"dp={self.data_parallel} mp={self.model_parallel} pp={self.pipeline_stage} "
                f"({self.world_size} devices)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "parallel_config") -> "ParallelConfig":
        """From a ``parallel_config`` mapping; wrong keys and values are reported together."""
        known = {f.name for f in fields(cls)}
        problems, kwargs = [], {}
        for key, value in (values or {}).items():
            if key not in known:
                problems.append(f"{source}.{key}: unknown key (known: {', '.join(sorted(known))})")
            elif key in _BOOL_KEYS:
                if not isinstance(value, bool):
                    problems.append(f"{source}.{key}: expected true or false, got {value!r}")
                kwargs[key] = bool(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < (0 if key.endswith("_kb") else 1):
                problems.append(f"{source}.{key}: expected a positive integer, got {value!r}")
            else:
                kwargs[key] = value
        if problems:
            raise LayoutError(problems, "parallel_config")
        return cls(**kwargs)

    def with_shape(self, dp: int, mp: int, pp: int, **changes: Any) -> "ParallelConfig":
        return replace(self, data_parallel=dp, model_parallel=mp, pipeline_stage=pp, **changes)


@dataclass(frozen=True)
class ParamLayout:
    """Where one parameter lives: full shape, its split, the pipeline stage that holds it."""

    name: str
    shape: Tuple[int, ...]
    kind: str  # COLUMN, ROW, VOCAB or REPLICATED
    tensor_map: Tuple[int, ...]
    dev_matrix: Tuple[int, int]  # [dp, mp] of a stage
    stage: int
    trainable: bool = True
    opt_shard: int = 1  # parallel-optimizer slices of dim 0 (over the dp ranks)

    @property
    def splits(self) -> Tuple[int, ...]:
        """Slices per tensor dimension."""
        return tuple(1 if t < 0 else self.dev_matrix[len(self.dev_matrix) - 1 - t] for t in self.tensor_map)

    @property
    def slice_shape(self) -> Tuple[int, ...]:
        return tuple(d // s for d, s in zip(self.shape, self.splits))

    @property
    def stored_shape(self) -> Tuple[int, ...]:
        """What one device stores: the slice, with dim 0 further divided by the optimizer shard."""
        shape = list(self.slice_shape)
        if shape and self.opt_shard > 1:
            shape[0] //= self.opt_shard
        return tuple(shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def slice_numel(self) -> int:
        return int(np.prod(self.slice_shape, dtype=np.int64)) if self.shape else 1

    def coordinates(self, local_rank: int) -> Tuple[int, int]:
        """``(dp index, mp index)`` of a rank inside its stage."""
        dp, mp = self.dev_matrix
        return local_rank // mp, local_rank % mp

    def slice_index(self, local_rank: int) -> Tuple[int, ...]:
        """Which slice of each dimension ``local_rank`` (rank inside the stage) holds."""
        coord = self.coordinates(local_rank)
        return tuple(0 if t < 0 else coord[len(self.dev_matrix) - 1 - t] for t in self.tensor_map)

    def slice_of(self, full: np.ndarray, local_rank: int) -> np.ndarray:
        """This rank's slice of the full tensor (no optimizer sharding)."""
        index = tuple(slice(i * n, (i + 1) * n) for i, n in zip(self.slice_index(local_rank), self.slice_shape))
        return full[index]

    def describe_split(self) -> str:
        parts = []
        for dim, t in enumerate(self.tensor_map):
            if t >= 0 and self.splits[dim] > 1:
                parts.append(f"dim{dim}/{'mp' if t == MP_AXIS else 'dp'}={self.splits[dim]}")
        text = ", ".join(parts) or "replicated"
        if self.opt_shard > 1:
            text += f" +opt/{self.opt_shard}"
        return text


@dataclass
class Layout:
    """A checked parallel layout of one model config: every parameter's placement."""

    config: ParallelConfig
    model_config: Any
    params: Dict[str, ParamLayout] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def num_stages(self) -> int:
        return self.config.pipeline_stage

    def layers_per_stage(self) -> int:
        return self.model_config.num_layers // self.config.pipeline_stage

    def stage_of_layer(self, layer: int) -> int:
        return layer // self.layers_per_stage()

    def stage_of_rank(self, rank: int) -> int:
        return rank // self.config.devices_per_stage

    def local_rank(self, rank: int) -> int:
        return rank % self.config.devices_per_stage

    def ranks_of_stage(self, stage: int) -> range:
        per = self.config.devices_per_stage
        return range(stage * per, (stage + 1) * per)

    def params_of_stage(self, stage: int) -> List[ParamLayout]:
        return [p for p in self.params.values() if p.stage == stage]

    def slice_layouts(self) -> Dict[int, Dict[str, SliceLayout]]:
        """``stage -> {hub name: SliceLayout}``: what a strategy file records of each parameter.

        The parallel optimizer shards dim 0 of a slice over the ``dp`` replicas
        holding it: ``opt_weight_shard_size`` replicas, ``opt_weight_shard_step``
        ranks apart (``mp`` when dim 0 is itself split over ``mp``).
        """
        mp = self.config.model_parallel
        out: Dict[int, Dict[str, SliceLayout]] = {stage: {} for stage in range(self.num_stages)}
        for p in self.params.values():
            opt_step = opt_size = 0
            if p.opt_shard > 1:
                opt_size = p.opt_shard
                opt_step = mp if MP_AXIS in p.tensor_map and mp > 1 else 1
            out[p.stage][p.name] = SliceLayout(list(p.dev_matrix), list(p.tensor_map) if p.shape else [],
                                               opt_step, opt_size, [p.stage])
        return out

    def rank_slices(self, rank: int, arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The parameters rank ``rank`` holds, sliced from full ``arrays`` (names as in the layout)."""
        stage, local = self.stage_of_rank(rank), self.local_rank(rank)
        out = {}
        for name, p in self.params.items():
            if p.stage == stage and name in arrays:
                out[name] = np.array(p.slice_of(np.asarray(arrays[name]), local), order="C")
        return out


# ----------------------------------------------------------------------------- the model's parameters
def model_parameters(model_config, peft: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, Tuple[int, ...], bool]]:
    """``(name, shape, trainable)`` of every parameter of ``ChatGLM3ForConditionalGeneration``, in the model's order.

    Read off the model itself, built without initialisation (no memory, well
    under a second for the 6B model) and with its tuning method applied
    (``peft``: a ``LoraConfig``, PEFT dict or MindFormers ``pet_config``, see
    :func:`~glm3_mindspore.peft.lora_config_from`; else P-Tuning v2 when the
    config has ``pre_seq_len``). Layouts are for training, which quantized
    models do not do: the model is built with float weights. Names are the
    model's own (hub names).
    """
    from ..modeling import ChatGLM3ForConditionalGeneration
    from ..modeling.pretrained import uninitialized_parameters
    from ..peft import apply_tuning_method

    float_config = type(model_config).from_dict({**model_config.to_dict(), "quantization_bit": 0,
                                                 "quantization_config": None})
    with uninitialized_parameters():
        model = apply_tuning_method(ChatGLM3ForConditionalGeneration(float_config), peft)
    return [(name, tuple(param.shape), bool(param.requires_grad)) for name, param in model.parameters_and_names()]


# ----------------------------------------------------------------------------- checking
def layout_problems(model_config, config: ParallelConfig, world_size: Optional[int] = None,
                    seq_length: Optional[int] = None) -> List[str]:
    """Every reason ``config`` cannot run ``model_config`` (empty when it can)."""
    c, problems = model_config, []
    dp, mp, pp = config.shape
    groups = c.num_key_value_groups
    if world_size is not None and config.world_size != world_size:
        problems.append(f"data_parallel x model_parallel x pipeline_stage = {dp} x {mp} x {pp} = {config.world_size}, "
                        f"but the job has {world_size} devices")
    if c.num_attention_heads % mp:
        problems.append(f"num_attention_heads {c.num_attention_heads} is not divisible by model_parallel {mp}")
    if mp <= groups and groups % mp:
        problems.append(f"multi_query_group_num {groups} (key/value groups) is not divisible by model_parallel {mp}")
    if mp > groups and mp % groups:
        problems.append(f"model_parallel {mp} is larger than the {groups} key/value groups and not a multiple of "
                        f"them, so the groups cannot be replicated evenly across the model-parallel ranks")
    if c.ffn_hidden_size % mp:
        problems.append(f"ffn_hidden_size {c.ffn_hidden_size} is not divisible by model_parallel {mp}")
    if not config.vocab_emb_dp and c.padded_vocab_size % mp:
        problems.append(f"padded_vocab_size {c.padded_vocab_size} is not divisible by model_parallel {mp} "
                        "(vocab_emb_dp: false splits the embedding and output layer by vocabulary)")
    if c.num_layers % pp:
        problems.append(f"num_layers {c.num_layers} is not divisible by pipeline_stage {pp}")
    if pp > c.num_layers:
        problems.append(f"pipeline_stage {pp} is more than the {c.num_layers} layers")
    if pp > 1 and config.micro_batch_num < pp:
        problems.append(f"micro_batch_num {config.micro_batch_num} is smaller than pipeline_stage {pp}: "
                        "some stages would idle for the whole step (use micro_batch_num >= pipeline_stage)")
    seq = seq_length if seq_length is not None else c.seq_length
    if config.use_seq_parallel and mp > 1 and seq % mp:
        problems.append(f"use_seq_parallel splits the sequence: seq_length {seq} is not divisible by "
                        f"model_parallel {mp}")
    if config.expert_parallel != 1:
        problems.append(f"expert_parallel {config.expert_parallel}: ChatGLM3 has no experts (use 1)")
    if config.context_parallel != 1:
        problems.append(f"context_parallel {config.context_parallel} is not supported for ChatGLM3 here (use 1)")
    return problems


def check_layout(model_config, config: ParallelConfig, world_size: Optional[int] = None,
                 seq_length: Optional[int] = None) -> None:
    problems = layout_problems(model_config, config, world_size, seq_length)
    if problems:
        raise LayoutError(problems, f"parallel layout {config.describe()}")


# ----------------------------------------------------------------------------- building
_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.")


def _kind(name: str, config: ParallelConfig) -> Tuple[str, Tuple[int, ...]]:
    """(kind, tensor_map) of one parameter."""
    base, _, leaf = name.rpartition(".")
    if name.endswith((".lora_A.weight", ".lora_B.weight")):
        layer = name[: -len(".lora_A.weight")]
        is_a = name.endswith(".lora_A.weight")
        if layer.endswith(COLUMN_PARALLEL):  # y = B (A x): A replicated, B split like the base rows
            return (REPLICATED, (-1, -1)) if is_a else (COLUMN, (MP_AXIS, -1))
        if layer.endswith(ROW_PARALLEL):  # A reads the split input columns, B replicated
            return (ROW, (-1, MP_AXIS)) if is_a else (REPLICATED, (-1, -1))
        if layer.endswith("output_layer") and not config.vocab_emb_dp:
            return (REPLICATED, (-1, -1)) if is_a else (VOCAB, (MP_AXIS, -1))
        return REPLICATED, (-1, -1)
    if name.endswith("lora_scaling"):
        return REPLICATED, ()
    if name.startswith("transformer.prefix_encoder."):
        return REPLICATED, (-1,) * (2 if leaf == "weight" else 1)
    if name in ("transformer.embedding.word_embeddings.weight", "transformer.output_layer.weight"):
        return (REPLICATED, (-1, -1)) if config.vocab_emb_dp else (VOCAB, (MP_AXIS, -1))
    if base.endswith(COLUMN_PARALLEL):
        return COLUMN, (MP_AXIS, -1) if leaf == "weight" else (MP_AXIS,)
    if base.endswith(ROW_PARALLEL):
        return (ROW, (-1, MP_AXIS)) if leaf == "weight" else (REPLICATED, (-1,))
    return REPLICATED, (-1,)


def build_layout(model_config, config: ParallelConfig, world_size: Optional[int] = None,
                 peft: Optional[Mapping[str, Any]] = None, seq_length: Optional[int] = None) -> Layout:
    """The checked layout: raises :class:`LayoutError` with every reason before anything is compiled."""
    check_layout(model_config, config, world_size, seq_length)
    dp, mp, pp = config.shape
    layout = Layout(config, model_config)
    per_stage = model_config.num_layers // pp
    for name, shape, trainable in model_parameters(model_config, peft):
        kind, tensor_map = _kind(name, config)
        match = _LAYER.match(name)
        if match:
            stage = int(match.group(1)) // per_stage
        elif name.startswith(("transformer.encoder.final_layernorm", "transformer.output_layer")):
            stage = pp - 1
        else:
            stage = 0
        param = ParamLayout(name, tuple(shape), kind, tuple(tensor_map), (dp, mp), stage, trainable)
        layout.params[name] = replace(param, opt_shard=_optimizer_shard(param, config))
    return layout


def _optimizer_shard(param: ParamLayout, config: ParallelConfig, itemsize: int = 4) -> int:
    """MindSpore's parallel optimizer splits dim 0 of a slice over the ``dp`` replicas holding it
    (only trainable parameters of at least the threshold whose dim 0 divides)."""
    dp = config.data_parallel
    if not config.optimizer_shard or dp == 1 or not param.trainable or not param.shape:
        return 1
    if DP_AXIS in param.tensor_map:
        return 1
    if param.slice_numel * itemsize < config.optimizer_shard_threshold_kb * 1024:
        return 1
    return dp if param.slice_shape[0] % dp == 0 else 1


def collapse_layers(names: Iterable[str]) -> List[Tuple[str, List[int]]]:
    """Names with their layer number replaced by ``N``, each with the layer numbers, in first-seen order."""
    groups: Dict[str, List[int]] = {}
    for name in names:
        match = _LAYER.match(name)
        key = _LAYER.sub("transformer.encoder.layers.N.", name) if match else name
        groups.setdefault(key, [])
        if match:
            groups[key].append(int(match.group(1)))
    return list(groups.items())


def format_ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    if not numbers:
        return ""
    numbers = sorted(numbers)
    parts, start, prev = [], numbers[0], numbers[0]
    for n in numbers[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def valid_shapes(model_config, world_size: int, base: Optional[ParallelConfig] = None) -> List[Tuple[int, int, int]]:
    """Every ``(dp, mp, pp)`` with ``dp * mp * pp = world_size`` that passes :func:`layout_problems`."""
    base = base or ParallelConfig()
    shapes = []
    for mp in divisors(world_size):
        for pp in divisors(world_size // mp):
            dp = world_size // (mp * pp)
            candidate = base.with_shape(dp, mp, pp, micro_batch_num=max(base.micro_batch_num, pp))
            if not layout_problems(model_config, candidate, world_size):
                shapes.append((dp, mp, pp))
    return shapes


__all__ = [
    "COLUMN", "Layout", "LayoutError", "ParallelConfig", "ParamLayout", "REPLICATED", "ROW", "VOCAB",
    "build_layout", "check_layout", "collapse_layers", "format_ranges", "human_bytes", "layout_problems",
    "model_parameters", "valid_shapes",
]
