"""MindFormers glm3 checkpoints in and out: full models and LoRA (MindPet) adapters, as ``glm3 ckpt`` moves them.

A MindFormers LoRA checkpoint holds the frozen base weights beside MindPet's
``mindpet_delta_lora_a`` / ``_b`` (:mod:`.names`); alpha is not stored (it is
the run config's ``pet_config.lora_alpha``). Importing splits such a ``.ckpt``
into a PEFT adapter and, if asked, a hub-layout base model; exporting writes our
model and adapter back with MindFormers' names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..checkpoints.errors import CheckpointError
from .documents import YamlDocument
from .model_config import is_run_yaml, write_hub_model
from .names import PEFT_LORA, split_mindformers_lora, to_mindformers_lora

DEFAULT_LORA_ALPHA = 32.0  # pet_config's lora_alpha in MindFormers' glm3 LoRA config


def adapter_layers(adapter: Mapping[str, np.ndarray]) -> Dict[str, Tuple[int, int, int]]:
    """``layer path -> (r, in, out)`` of a PEFT-keyed adapter, checked for complete, consistent A/B pairs."""
    pairs: Dict[str, Dict[str, np.ndarray]] = {}
    for key, array in adapter.items():
        match = PEFT_LORA.match(key)
        if not match:
            raise CheckpointError(f"adapter key {key!r} is not a LoRA A/B weight")
        pairs.setdefault(match.group("layer"), {})[match.group("which")] = np.asarray(array)
    out = {}
    for layer, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{layer}: LoRA {'A' if 'A' not in pair else 'B'} matrix missing")
        a, b = pair["A"], pair["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{layer}: LoRA shapes A {a.shape} and B {b.shape} do not pair up ([r, in], [out, r])")
        out[layer] = (a.shape[0], a.shape[1], b.shape[0])
    return out


def adapter_config_for(adapter: Mapping[str, np.ndarray], lora_alpha: float, lora_dropout: float = 0.0,
                       base_model: Optional[str] = None):
    """A ``LoraConfig`` matching the adapter's layers and rank (``target_modules`` = their last names)."""
    from ..peft import LoraConfig

    layers = adapter_layers(adapter)
    ranks = sorted({r for r, _, _ in layers.values()})
    if len(ranks) != 1:
        raise CheckpointError(f"the LoRA layers have different ranks {ranks}; PEFT adapters use one rank")
    targets = sorted({path.rsplit(".", 1)[-1] for path in layers})
    return LoraConfig(r=ranks[0], lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                      base_model_name_or_path=base_model, inference_mode=True)


def write_peft_adapter(folder, adapter: Mapping[str, np.ndarray], config) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (float32), PEFT's layout."""
    from ..checkpoints.safetensors_io import save_safetensors
    from ..peft.config import ADAPTER_WEIGHTS_NAME

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / ADAPTER_WEIGHTS_NAME, {k: np.ascontiguousarray(v, dtype=np.float32)
                                                     for k, v in adapter.items()}, {"format": "pt"})
    config.save_pretrained(folder)
    return folder


def read_peft_adapter(folder) -> Tuple[Dict[str, np.ndarray], object]:
    """A PEFT adapter's weights (checked for complete A/B pairs) and its ``LoraConfig``."""
    from ..checkpoints import iter_tensors
    from ..peft import LoraConfig
    from ..peft.lora import adapter_weights_file

    config = LoraConfig.from_pretrained(folder)
    weights = {k: np.array(v) for k, v in iter_tensors([adapter_weights_file(folder)])}
    adapter_layers(weights)
    return weights, config


@dataclass
class ImportedCheckpoint:
    """What :func:`import_mindformers_checkpoint` wrote."""

    adapter_config: Optional[object] = None  # the LoraConfig of a LoRA checkpoint, else None
    lora_layers: int = 0
    model_files: List[Path] = field(default_factory=list)  # the hub-layout model (full, or the LoRA base)
    notes: List[str] = field(default_factory=list)


def lora_settings(run_config: Optional[str], lora_alpha: Optional[float]) -> Tuple[float, float, List[str]]:
    """``(lora_alpha, lora_dropout, notes)`` for an imported adapter: given, else the run YAML's ``pet_config``."""
    dropout, notes = 0.0, []
    if is_run_yaml(run_config):
        doc = YamlDocument(Path(run_config))
        pet = doc.get("pet_config") or doc.get("model", "model_config", "pet_config") or {}
        if lora_alpha is None and pet.get("lora_alpha") is not None:
            lora_alpha = float(pet["lora_alpha"])
        dropout = float(pet.get("lora_dropout") or 0.0)
    if lora_alpha is None:
        lora_alpha = DEFAULT_LORA_ALPHA
        notes.append(f"lora_alpha is not stored in MindFormers checkpoints; using {DEFAULT_LORA_ALPHA:g} "
                     "(MindFormers' glm3 LoRA config's); pass --lora-alpha or the run --config if yours differs")
    return lora_alpha, dropout, notes


def import_mindformers_checkpoint(src, dst, config_source: Optional[str] = None, lora_alpha: Optional[float] = None,
                                  base_dst=None) -> ImportedCheckpoint:
    """A MindFormers glm3 ``.ckpt`` -> a hub-layout model folder, or (LoRA) a PEFT adapter (+ its base at ``base_dst``).

    ``config_source`` is the run YAML (``pet_config`` gives alpha, ``model_config``
    the ``config.json``) or a hub folder / repo to take ``config.json`` and the
    tokenizer files from.
    """
    from ..checkpoints.mindspore_ckpt import iter_ckpt

    base, adapter = split_mindformers_lora(iter_ckpt(src))
    if not adapter:
        files, notes = write_hub_model(dst, iter(base.items()), config_source)
        return ImportedCheckpoint(model_files=files, notes=notes)
    alpha, dropout, notes = lora_settings(config_source, lora_alpha)
    config = adapter_config_for(adapter, alpha, dropout)
    write_peft_adapter(dst, adapter, config)
    result = ImportedCheckpoint(config, len(adapter) // 2, notes=notes)
    if base_dst is not None:
        result.model_files, base_notes = write_hub_model(base_dst, iter(base.items()), config_source)
        result.notes += base_notes
    return result


def mindformers_tensors(adapter=None, base=None, mindpet_upper: bool = False) -> Iterator[Tuple[str, np.ndarray]]:
    """The base model's weights (rotary buffers left out) then the adapter's, with MindPet's LoRA names."""
    from ..checkpoints import iter_tensors, resolve_weight_files

    if base:
        for name, array in iter_tensors(resolve_weight_files(base)):
            if not name.endswith("rotary_pos_emb.inv_freq"):
                yield name, array
    if adapter:
        weights, _ = read_peft_adapter(adapter)
        yield from to_mindformers_lora(weights.items(), upper=mindpet_upper)


def export_mindformers_checkpoint(dst, adapter=None, base=None, mindpet_upper: bool = False) -> int:
    """Our model and / or PEFT adapter as one ``.ckpt`` with MindFormers' names; returns the tensor bytes."""
    from ..checkpoints.mindspore_ckpt import save_ckpt

    if not adapter and not base:
        raise CheckpointError("give an adapter (a PEFT LoRA folder) and/or a base model to export")
    return save_ckpt(dst, mindformers_tensors(adapter, base, mindpet_upper), names="mindformers")


__all__ = ["ImportedCheckpoint", "adapter_config_for", "adapter_layers", "export_mindformers_checkpoint",
           "import_mindformers_checkpoint", "lora_settings", "mindformers_tensors", "read_peft_adapter",
           "write_peft_adapter"]
