"""The parallel settings of a MindFormers-style run YAML (``configs/glm3/run_glm3_6b_finetune*.yaml``).

Read from ``parallel_config`` (``data_parallel``, ``model_parallel``,
``pipeline_stage``, ``micro_batch_num``, ``vocab_emb_dp``, ``use_seq_parallel``,
``gradient_aggregation_group``, ``optimizer_shard``), ``parallel``
(``enable_parallel_optimizer``, ``parallel_optimizer_config.parallel_optimizer_threshold``),
``recompute_config.recompute``, ``runner_config.batch_size`` and the model config
(``seq_length``, ``param_init_type``, ``compute_dtype``, ``use_flash_attention``,
``pet_config``). No weights, tokenizer or data are touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from ..checkpoints.distributed import SliceLayout, all_entries
from ..parallel.layout import Layout, LayoutError, ParallelConfig, build_layout
from ..parallel.memory import MemorySettings
from .documents import YamlDocument, apply_overrides
from .model_config import model_config_from_yaml_values


@dataclass
class RunParallelSettings:
    """What ``glm3 parallel plan`` and ``glm3 ckpt`` need of a run YAML."""

    source: str
    model_config: Any
    parallel: ParallelConfig
    memory: MemorySettings
    peft: Optional[Dict[str, Any]]


def parallel_config_from_sections(parallel_config: Dict[str, Any], parallel: Dict[str, Any],
                                  recompute: Dict[str, Any], source: str = "parallel_config") -> ParallelConfig:
    """``parallel_config`` with the switches MindFormers keeps in ``parallel`` and ``recompute_config``."""
    values = dict(parallel_config or {})
    if "optimizer_shard" not in values and (parallel or {}).get("enable_parallel_optimizer") is not None:
        values["optimizer_shard"] = bool(parallel["enable_parallel_optimizer"])
    threshold = ((parallel or {}).get("parallel_optimizer_config") or {}).get("parallel_optimizer_threshold")
    if threshold is not None:
        values["optimizer_shard_threshold_kb"] = threshold
    if (recompute or {}).get("recompute") is not None and "recompute" not in values:
        values["recompute"] = bool(recompute["recompute"])
    return ParallelConfig.from_dict(values, source)


def read_run_parallel_settings(path, overrides: Sequence[str] = ()) -> RunParallelSettings:
    """Model, parallel layout settings, memory settings and LoRA of a run YAML (after ``--set`` overrides)."""
    doc = YamlDocument(path)
    apply_overrides(doc, overrides)
    model_values = doc.section("model", "model_config")
    model_config = model_config_from_yaml_values(doc, model_values)
    try:
        parallel = parallel_config_from_sections(doc.section("parallel_config"), doc.section("parallel"),
                                                 doc.section("recompute_config"), f"{doc.path}: parallel_config")
    except LayoutError as exc:
        raise LayoutError(exc.problems, f"parallel settings in {doc.path}") from None
    batch = doc.get("runner_config", "batch_size") or doc.get("train_dataset", "batch_size") or 1
    memory = MemorySettings(
        batch_size=int(batch),
        seq_length=model_config.seq_length,
        param_dtype=str(model_values.get("param_init_type") or "float32"),
        compute_dtype=str(model_values.get("compute_dtype") or model_values.get("param_init_type") or "float32"),
        flash_attention=bool(model_values.get("use_flash_attention", False)),
    )
    peft = doc.get("pet_config") or model_values.get("pet_config")
    return RunParallelSettings(str(doc.path), model_config, parallel, memory, dict(peft) if peft else None)


def layout_from_run_config(path, world_size: int, overrides: Sequence[str] = ()) -> Layout:
    """The checked parallel layout of a run YAML's ``parallel_config`` on ``world_size`` devices."""
    settings = read_run_parallel_settings(path, overrides)
    return build_layout(settings.model_config, settings.parallel, world_size, settings.peft)


def slice_layouts_from_run_config(path, world_size: int) -> Dict[str, SliceLayout]:
    """Every parameter's strategy entry (hub names) under a run YAML's layout: what rebuilds the entries a
    strategy file saved for trainable parameters only lacks."""
    return all_entries(layout_from_run_config(path, world_size))


__all__ = ["RunParallelSettings", "layout_from_run_config", "parallel_config_from_sections",
           "read_run_parallel_settings", "slice_layouts_from_run_config"]
