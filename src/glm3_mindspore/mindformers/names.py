"""MindFormers' names for what this package calls otherwise: parameters, LoRA matrices, ``pet_config`` keys, models.

* Parameters: MindFormers' glm3 checkpoints use the hub names except for the
  word embedding (``transformer.embedding.embedding_table``, as its glm3
  conversion script writes it; older files say ``embedding_weight``).
* LoRA: MindPet's ``LoRADense`` keeps the base ``weight`` / ``bias`` and adds
  ``mindpet_delta_lora_a`` ``[r, in]`` and ``mindpet_delta_lora_b`` ``[out, r]``
  (older MindPet wrote them ``mindpet_delta_lora_A`` / ``_B``), the matrices
  PEFT calls ``lora_A.weight`` / ``lora_B.weight``, with ``scaling = alpha / r``.
* ``pet_config``: ``lora_rank`` is PEFT's ``r``.
* Model-zoo names (``glm3_6b``) are hub repositories with the same weights.

This module imports nothing else of the package: the checkpoint readers and
the LoRA config use it.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Iterator, List, Tuple

import numpy as np

HUB_EMBEDDING = "transformer.embedding.word_embeddings.weight"
MINDFORMERS_EMBEDDING = "transformer.embedding.embedding_table"
EMBEDDING_ALIASES = (
    MINDFORMERS_EMBEDDING,
    "transformer.embedding.embedding_weight",
    "transformer.embedding.word_embeddings.embedding_table",
)

MINDPET_LORA = re.compile(r"^(?P<layer>.+)\.mindpet_delta_lora_(?P<which>[aAbB])$")
PEFT_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<which>[AB])\.weight$")

# pet_config key -> LoraConfig field (the other keys are MindFormers' own and kept as extras).
PET_CONFIG_KEYS = {"lora_rank": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                   "target_modules": "target_modules"}

# MindFormers model-zoo names -> hub repositories with the same weights.
CHECKPOINT_ALIASES = {
    "glm3_6b": "THUDM/chatglm3-6b",
    "glm3_6b_32k": "THUDM/chatglm3-6b-32k",
    "glm3_6b_128k": "THUDM/chatglm3-6b-128k",
    "glm2_6b": "THUDM/chatglm2-6b",
}


def from_mindformers_name(name: str) -> str:
    """MindFormers / MindSpore parameter name -> hub name (only the embedding differs)."""
    return HUB_EMBEDDING if name in EMBEDDING_ALIASES else name


def to_mindformers_name(name: str) -> str:
    """Hub name -> the name MindFormers' glm3 checkpoints use."""
    return MINDFORMERS_EMBEDDING if name == HUB_EMBEDDING else name


def resolve_checkpoint_name(name: str) -> str:
    """MindFormers model-zoo names (``glm3_6b``) become hub ids; paths stay paths."""
    return CHECKPOINT_ALIASES.get(name, name)


def split_mindformers_lora(tensors: Iterable[Tuple[str, np.ndarray]]) -> Tuple[Dict[str, np.ndarray],
                                                                                 Dict[str, np.ndarray]]:
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


def to_mindformers_lora(tensors: Iterable[Tuple[str, np.ndarray]], upper: bool = False) -> Iterator[Tuple[str, np.ndarray]]:
    """PEFT adapter keys (or our model's ``...lora_A.weight``) -> MindPet names; other tensors pass through."""
    for name, array in tensors:
        match = PEFT_LORA.match(name)
        if match:
            which = match.group("which")
            yield f"{match.group('layer')}.mindpet_delta_lora_{which if upper else which.lower()}", array
        else:
            yield name, array


def lora_names(names: Iterable[str]) -> List[str]:
    """The MindPet LoRA names among ``names``."""
    return [n for n in names if MINDPET_LORA.match(n)]


__all__ = [
    "CHECKPOINT_ALIASES", "EMBEDDING_ALIASES", "HUB_EMBEDDING", "MINDFORMERS_EMBEDDING", "MINDPET_LORA",
    "PEFT_LORA", "PET_CONFIG_KEYS", "from_mindformers_name", "lora_names", "resolve_checkpoint_name",
    "split_mindformers_lora", "to_mindformers_lora", "to_mindformers_name",
]
