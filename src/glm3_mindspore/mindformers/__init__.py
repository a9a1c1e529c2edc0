"""MindFormers compatibility, in one place: its YAML run configs, its names, its checkpoints.

Users arrive from MindFormers' glm3 model card with its YAML files, its
``.ckpt`` checkpoints and MindPet LoRA runs. Everything that knows MindFormers'
vocabulary lives here and turns it into this package's objects:

* :mod:`.names` - parameter names (``embedding_table``), MindPet's LoRA names,
  ``pet_config`` keys, model-zoo names; imports nothing else of the package, so
  the ``.ckpt`` reader and ``LoraConfig.from_mindformers`` use it;
* :mod:`.documents` - YAML read with the line of every key, ``--set a.b=value``
  overrides;
* :mod:`.model_config` - ``model.model_config`` / ``processor.tokenizer`` ->
  :class:`~glm3_mindspore.ChatGLM3Config`, a tokenizer, a model
  (``AutoConfig`` / ``AutoModel`` accept a YAML through it);
* :mod:`.finetune_config` - a fine-tuning run YAML -> ``TrainingArguments``,
  datasets, PEFT settings (``glm3 finetune``, ``glm3 evaluate``);
* :mod:`.parallel_config` - its parallel settings and layout (``glm3 parallel
  plan``, ``glm3 ckpt``);
* :mod:`.lora` - MindFormers LoRA / full checkpoints to and from PEFT adapters
  and hub folders (``glm3 ckpt import-mindformers`` / ``export-mindformers``).

:mod:`.names` and :mod:`.documents` sit below everything else; the readers sit
above the trainer, the parallel layouts and the checkpoint formats they fill.
Sub-modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "YamlDocument": "documents",
    "apply_overrides": "documents",
    "model_config_from_yaml": "model_config",
    "model_from_yaml_config": "model_config",
    "tokenizer_from_yaml": "model_config",
    "load_finetune_config": "finetune_config",
    "read_run_parallel_settings": "parallel_config",
    "layout_from_run_config": "parallel_config",
    "import_mindformers_checkpoint": "lora",
    "export_mindformers_checkpoint": "lora",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
