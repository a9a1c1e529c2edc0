"""MindFormers glm3 checkpoints in and out: full models and LoRA (MindPet) adapters.

MindFormers names are the hub names except the word embedding
(``transformer.embedding.embedding_table``, handled by
:mod:`glm3_mindspore.checkpoints.mindspore_ckpt`) and its LoRA parameters:
MindPet's ``LoRADense`` keeps the base ``weight`` / ``bias`` and adds
``mindpet_delta_lora_a`` ``[r, in]`` and ``mindpet_delta_lora_b`` ``[out, r]``
(older MindPet wrote them ``mindpet_delta_lora_A`` / ``_B``), the same matrices
as PEFT's ``lora_A.weight`` / ``lora_B.weight``, with ``scaling = alpha / r``.
A MindFormers LoRA checkpoint holds the frozen base weights as well; alpha is
not stored (it is the run config's ``pet_config.lora_alpha``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..checkpoints.errors import CheckpointError

MINDPET_LORA = re.compile(r"^(?P<layer>.+)\.mindpet_delta_lora_(?P<which>[aAbB])$")
PEFT_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<which>[AB])\.weight$")


def split_mindformers_lora(tensors: Iterable[Tuple[str, np.ndarray]]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """``(base weights, adapter)``: adapter keys in PEFT's file layout (``base_model.model....lora_A.weight``)."""
    base, adapter = {}, {}
    for name, array in tensors:
        match = MINDPET_LORA.match(name)
        if match:
            which = match.group("which").upper()
            adapter[f"base_model.model.{match.group('layer')}.lora_{which}.weight"] = np.asarray(array)
        else:
            base[name] = array
    return base, adapter


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
    from ..checkpoints.safetensors_io import save_safetensors
    from ..peft.config import ADAPTER_WEIGHTS_NAME

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / ADAPTER_WEIGHTS_NAME, {k: np.ascontiguousarray(v, dtype=np.float32)
                                                     for k, v in adapter.items()}, {"format": "pt"})
    config.save_pretrained(folder)
    return folder


def to_mindformers_lora(tensors: Iterable[Tuple[str, np.ndarray]], upper: bool = False) -> Iterator[Tuple[str, np.ndarray]]:
    """PEFT adapter keys (or our model's ``...lora_A.weight``) -> MindPet names; other tensors pass through."""
    for name, array in tensors:
        match = PEFT_LORA.match(name)
        if match:
            which = match.group("which")
            yield f"{match.group('layer')}.mindpet_delta_lora_{which if upper else which.lower()}", array
        else:
            yield name, array


def read_peft_adapter(folder) -> Tuple[Dict[str, np.ndarray], object]:
    from ..checkpoints import iter_tensors
    from ..peft import LoraConfig
    from ..peft.lora import adapter_weights_file

    config = LoraConfig.from_pretrained(folder)
    weights = {k: np.array(v) for k, v in iter_tensors([adapter_weights_file(folder)])}
    adapter_layers(weights)
    return weights, config


def lora_names(names: Iterable[str]) -> List[str]:
    return [n for n in names if MINDPET_LORA.match(n)]


__all__ = ["adapter_config_for", "adapter_layers", "lora_names", "read_peft_adapter", "split_mindformers_lora",
           "to_mindformers_lora", "write_peft_adapter"]
