"""Settings shared by the fine-tuning data processors, and their error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FORMATS = ("chat", "plain")


class DataError(ValueError):
    """Bad data or data settings; the message names the file, line or key at fault."""


@dataclass(frozen=True)
class DataConfig:
    """How rows become token ids.

    ADGEN (``content`` -> ``summary``) uses ``format``, ``max_source_length`` and
    ``max_target_length``: a training row is at most
    ``max_source_length + max_target_length + 1`` tokens (the ``+ 1`` is eos),
    MindFormers' ``seq_length`` rule. MindFormers' glm3 configs use 64 / 127 for training
    and 256 / 256 for evaluation. Multi-turn conversations use ``max_seq_length``
    (``None``: no truncation). ``ignore_pad_token_for_loss`` turns label ids equal
    to the pad id (0, ``<unk>``) into -100, as upstream's ADGEN code does.
    """

    max_source_length: int = 64
    max_target_length: int = 127
    format: str = "chat"
    max_seq_length: Optional[int] = None
    ignore_pad_token_for_loss: bool = True
    prompt_column: str = "content"
    response_column: str = "summary"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        for name in ("max_source_length", "max_target_length"):
            _check_positive(name, getattr(self, name))
        if self.max_seq_length is not None:
            _check_positive("max_seq_length", self.max_seq_length)

    @property
    def seq_length(self) -> int:
        """Longest ADGEN training row: source + target + eos."""
        return self.max_source_length + self.max_target_length + 1


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
