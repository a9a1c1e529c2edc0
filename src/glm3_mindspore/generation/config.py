"""Generation settings, read from ``generation_config.json`` like Hugging Face's ``GenerationConfig``."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..fileio import atomic_write_text, read_json_object
from ..hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"

# What upstream's chat()/stream_chat() use: sample with top_p 0.8 / temperature 0.8,
# stop at </s>, <|user|> or <|observation|>.
CHAT_EOS_TOKEN_IDS = [2, 64795, 64797]
CHAT_DEFAULTS = {"do_sample": True, "top_p": 0.8, "temperature": 0.8, "max_length": 8192}


class GenerationConfigError(ValueError):
    """An invalid generation setting; the message names it."""


@dataclass
class GenerationConfig:
    """Decoding settings with Hugging Face semantics.

    ``max_new_tokens`` wins over ``max_length`` (which counts the prompt too).
    ``top_k = 0`` and ``top_p = 1.0`` disable those filters. ``num_beams`` > 1
    is beam search (with ``do_sample``, beam sampling), scored and stopped as
    Hugging Face's (``length_penalty``, ``early_stopping``: ``False``, ``True``
    or ``"never"``); ``num_return_sequences`` continuations per prompt come
    back, best first (with sampling, independent draws).
    """

    max_length: int = 20
    max_new_tokens: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    eos_token_id: Union[int, List[int], None] = None
    pad_token_id: Optional[int] = None
    seed: Optional[int] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------- checking
    def validate(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length <= 0:
            raise GenerationConfigError(f"max_length must be a positive int, got {self.max_length!r}")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0):
            raise GenerationConfigError(f"max_new_tokens must be a non-negative int, got {self.max_new_tokens!r}")
        if self.temperature is None or self.temperature <= 0:
            raise GenerationConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if self.top_k is None or self.top_k < 0:
            raise GenerationConfigError(f"top_k must be >= 0, got {self.top_k!r}")
        if self.top_p is None or not 0 < self.top_p <= 1:
            raise GenerationConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty is None or self.repetition_penalty <= 0:
            raise GenerationConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("num_beams", "num_return_sequences"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GenerationConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.num_return_sequences > 1 and self.num_beams == 1 and not self.do_sample:
            raise GenerationConfigError(
                f"num_return_sequences={self.num_return_sequences} with greedy decoding would repeat one answer: "
                "use num_beams >= num_return_sequences or do_sample=True")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise GenerationConfigError(
                f"num_return_sequences={self.num_return_sequences} exceeds num_beams={self.num_beams}")
        if self.extras.get("num_beam_groups") not in (None, 1):
            raise GenerationConfigError(f"num_beam_groups={self.extras['num_beam_groups']}: group (diverse) beam "
                                        "search is not supported; use num_beam_groups=1")
        if self.early_stopping not in (True, False, "never"):
            raise GenerationConfigError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool):
            raise GenerationConfigError(f"length_penalty must be a number, got {self.length_penalty!r}")

    @property
    def eos_token_ids(self) -> List[int]:
        ids = self.eos_token_id
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    # ------------------------------------------------------------ combining
    def update(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with ``kwargs`` applied (``None`` values are ignored); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(self)} - {"extras"}
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise GenerationConfigError(f"unknown generation argument(s): {', '.join(sorted(unknown))}")
        values = {**dataclasses.asdict(self), **{k: v for k, v in kwargs.items() if v is not None}}
        return GenerationConfig(**values)

    def to_dict(self) -> Dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "extras"}
        return {**copy.deepcopy(self.extras), **data}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GenerationConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name in known}
        # null in a file means "the default" (Hugging Face writes e.g. "top_k": null)
        values = {k: v for k, v in data.items() if k in known and not (v is None and defaults[k] is not None)}
        extras = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extras=extras)

    # -------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path, options: HubOptions = HubOptions()) -> "GenerationConfig":
        path = Path(name_or_path)
        file = path if path.is_file() else resolve_file(name_or_path, GENERATION_CONFIG_NAME, options)
        data = read_json_object(file, GenerationConfigError)
        try:
            return cls.from_dict(data)
        except GenerationConfigError as exc:
            raise GenerationConfigError(f"{file}: {exc}") from None

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """Defaults for a model: its eos/pad ids, plus any MindFormers YAML settings."""
        values: Dict[str, Any] = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
        # MindFormers model_config keys (predict_glm3_6b.yaml), when present.
        for key in ("top_k", "top_p", "do_sample", "repetition_penalty", "temperature"):
            value = getattr(config, key, None)
            if value is not None:
                values[key] = value
        max_decode_length = getattr(config, "max_decode_length", None)
        if max_decode_length:
            values["max_length"] = int(max_decode_length)
        if values.get("top_k") == 1 and "do_sample" in values:
            values["do_sample"] = False  # MindFormers' top_k=1 means greedy
        return cls(**values)

    @classmethod
    def from_model_files(cls, name_or_path, config, options: HubOptions = HubOptions()) -> "GenerationConfig":
        """``generation_config.json`` when the model ships one, else :meth:`from_model_config`."""
        base = cls.from_model_config(config)
        file = resolve_file(name_or_path, GENERATION_CONFIG_NAME, options, required=False) if Path(
            name_or_path).is_dir() or not Path(name_or_path).exists() else None
        if file is None:
            return base
        loaded = cls.from_pretrained(file)
        return base.update(**{k: v for k, v in loaded.to_dict().items() if k in dataclasses.asdict(base)})

    def save_pretrained(self, save_directory) -> Path:
        target = Path(save_directory) / GENERATION_CONFIG_NAME
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return target
