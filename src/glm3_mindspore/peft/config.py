"""``LoraConfig``: PEFT's ``adapter_config.json`` for LoRA, and MindFormers' ``pet_config``.

Field names and defaults are PEFT's, so an adapter trained with PEFT on THUDM's
PyTorch ChatGLM3 loads here and ours loads there. Keys we do not use
(``alpha_pattern``, ``megatron_config``, ...) are kept in ``extra`` and written
back unchanged; keys that would change the maths in a way we do not implement
(DoRA, per-layer ranks, ...) are refused by name rather than silently ignored.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..fileio import atomic_write_text, read_json_object
from ..hub import HubOptions, resolve_file
from ..mindformers.names import PET_CONFIG_KEYS

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TORCH_WEIGHTS_NAME = "adapter_model.bin"  # older PEFT releases
DEFAULT_TARGET_MODULES = ("query_key_value",)  # PEFT's default for model_type "chatglm"
BIAS_MODES = ("none", "all", "lora_only")


class AdapterError(ValueError):
    """An adapter (config or weights) that does not fit the model; the message names file and key."""


@dataclass
class LoraConfig:
    """LoRA hyper-parameters in PEFT's ``adapter_config.json`` vocabulary.

    ``target_modules`` is either a list of module-name suffixes (``"query_key_value"``
    matches ``transformer.encoder.layers.0.self_attention.query_key_value``) or one
    regular expression matched against the whole name (``".*query_key_value*"``,
    MindFormers style), exactly PEFT's rule. ``scaling`` is ``lora_alpha / r``
    (``lora_alpha / sqrt(r)`` with ``use_rslora``).
    """

    r: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    target_modules: Union[List[str], str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    bias: str = "none"
    fan_in_fan_out: bool = False
    base_model_name_or_path: Optional[str] = None
    task_type: Optional[str] = "CAUSAL_LM"
    inference_mode: bool = False
    modules_to_save: Optional[List[str]] = None
    init_lora_weights: Union[bool, str] = True
    use_rslora: bool = False
    revision: Optional[str] = None
    peft_type: str = "LORA"
    extra: Dict[str, Any] = field(default_factory=dict)
    _source: str = field(default="LoraConfig", repr=False, compare=False)  # names the file in errors

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)
        self.validate(self._source)

    # ------------------------------------------------------------- checking
    def validate(self, source: str = "LoraConfig") -> None:
        """Raise :class:`AdapterError` naming the first field we cannot honour."""

        def fail(message: str) -> None:
            raise AdapterError(f"{source}: {message}")

        if str(self.peft_type).upper() != "LORA":
            fail(f"peft_type is {self.peft_type!r}; only 'LORA' adapters are supported here "
                 "(P-Tuning v2 prefixes load with glm3_mindspore.peft.load_prefix)")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            fail(f"'r' must be a positive int, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            fail(f"'lora_alpha' must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            fail(f"'lora_dropout' must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                fail(f"'target_modules' {self.target_modules!r} is not a valid regular expression ({exc})")
        elif not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            fail(f"'target_modules' must be a non-empty list of module names or a regex string, "
                 f"got {self.target_modules!r}")
        if self.bias not in BIAS_MODES:
            fail(f"'bias' must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}")
        if self.fan_in_fan_out:
            fail("'fan_in_fan_out' is true (GPT-2 Conv1D layout); ChatGLM3 Linear weights are [out, in]")
        if self.modules_to_save:
            fail(f"'modules_to_save' ({self.modules_to_save}) is not supported; train those modules fully instead")
        unsupported = {
            "use_dora": lambda v: bool(v),
            "rank_pattern": lambda v: bool(v),
            "alpha_pattern": lambda v: bool(v),
            "layers_to_transform": lambda v: v is not None,
            "layer_replication": lambda v: v is not None,
        }
        for key, is_set in unsupported.items():
            if key in self.extra and is_set(self.extra[key]):
                fail(f"'{key}' = {self.extra[key]!r} is not supported (plain LoRA only)")

    def check_initialisation(self, source: str = "LoraConfig") -> None:
        """Fresh adapters only: the initialisations implemented here."""
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise AdapterError(f"{source}: init_lora_weights={self.init_lora_weights!r} is not supported "
                               "(use true, false or 'gaussian')")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (self.r ** 0.5 if self.use_rslora else self.r)

    def matches(self, module_name: str) -> bool:
        """PEFT's rule: a regex string must match the whole name; a list entry is a name suffix."""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module_name) is not None
        return any(module_name == t or module_name.endswith("." + t) for t in self.target_modules)

    # ---------------------------------------------------------- serialising
    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready, PEFT's key names, unknown keys included."""
        data = {k: v for k, v in asdict(self).items() if k not in ("extra", "_source")}
        return {**self.extra, **data}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        target = Path(directory) / ADAPTER_CONFIG_NAME
        atomic_write_text(target, self.to_json_string())
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "adapter config") -> "LoraConfig":
        if not isinstance(data, Mapping):
            raise AdapterError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra", "_source"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra, _source=source)

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "LoraConfig":
        return cls.from_dict(read_json_object(path, AdapterError), source=str(path))

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], options: HubOptions = HubOptions()) -> "LoraConfig":
        """``adapter_config.json`` of a local adapter folder or a hub repo id."""
        return cls.from_json_file(resolve_file(name_or_path, ADAPTER_CONFIG_NAME, options))

    @classmethod
    def from_mindformers(cls, pet_config: Mapping[str, Any]) -> "LoraConfig":
        """MindFormers' ``pet_config`` (``pet_type: lora``, ``lora_rank``, ``lora_alpha``, ...).

        Accepts the ``pet_config`` mapping itself or a ``model_config`` holding it.
        Other MindFormers keys (``freeze_include``, ...) are kept in ``extra``.
        """
        if "pet_config" in pet_config:
            pet_config = pet_config["pet_config"]
        source = "MindFormers pet_config"
        if not isinstance(pet_config, Mapping):
            raise AdapterError(f"{source}: expected a mapping, got {type(pet_config).__name__}")
        pet_type = str(pet_config.get("pet_type", "")).lower()
        if pet_type != "lora":
            raise AdapterError(f"{source}: pet_type is {pet_config.get('pet_type')!r}; only 'lora' maps onto LoraConfig")
        data: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in pet_config.items():
            if key == "pet_type":
                continue
            if key in PET_CONFIG_KEYS:
                data[PET_CONFIG_KEYS[key]] = value
            else:
                extra[f"mindformers_{key}"] = value
        return cls.from_dict({**extra, **data}, source=source)


def lora_config_from(settings: Union[LoraConfig, Mapping[str, Any], None]) -> Optional[LoraConfig]:
    """The :class:`LoraConfig` a run's LoRA settings describe; None (or empty) when there are none.

    ``settings`` is a ``LoraConfig`` (returned as is), MindFormers' ``pet_config``
    (``pet_type: lora``, or a ``model_config`` holding one) or a PEFT
    ``adapter_config.json`` mapping.
    """
    if not settings or isinstance(settings, LoraConfig):
        return settings or None
    if "pet_type" in settings or "pet_config" in settings:
        return LoraConfig.from_mindformers(settings)
    return LoraConfig.from_dict(settings)
