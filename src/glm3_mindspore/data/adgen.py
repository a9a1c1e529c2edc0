"""ADGEN (``content`` -> ``summary``) rows -> token ids, in two layouts.

``chat`` (default) trains the model the way it is used: the prompt is exactly
``tokenizer.build_chat_input(content)`` (``[gMASK] sop <|user|>\\n content
<|assistant|>``) and the target the rest of that assistant turn,
``build_single_message("assistant", "", summary)`` without its role token,
then eos. It is the conversation ``[user: content, assistant: summary]`` of
:mod:`.conversations`, labels included.

``plain`` is MindFormers' (and upstream ``InputOutputDataset``'s) layout:
``[gMASK] sop content`` then ``summary`` and eos, with no role tokens, for
base-model style fine-tuning.

In both, the prompt is cut to ``max_source_length`` tokens (in ``chat`` the
content is cut, ``<|assistant|>`` kept), the target to ``max_target_length``
before eos, and labels are -100 over the prompt. Each row says whether it was
cut (``source_truncated`` / ``target_truncated``) so that no cut is silent.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..fileio import json_type_name
from ..labels import IGNORE_INDEX
from .config import DataConfig, DataError

MODES = ("train", "eval")


def check_adgen_row(row: Mapping[str, Any], config: Optional[DataConfig] = None) -> None:
    """Raise :class:`DataError` naming the key unless ``row`` has the two text columns."""
    config = config or DataConfig()
    for column in (config.prompt_column, config.response_column):
        if column not in row:
            raise DataError(f"missing key {column!r} (keys: {', '.join(map(str, row)) or 'none'})")
        if not isinstance(row[column], str):
            raise DataError(f"{column!r} must be a string, got {json_type_name(row[column])}")


class AdgenProcessor:
    """``dataset.map(AdgenProcessor(tokenizer, config), batched=True)``.

    ``mode="train"`` gives ``input_ids`` and ``labels``. ``mode="eval"`` gives
    the prompt alone as ``input_ids`` (ending at ``<|assistant|>`` in ``chat``
    format) and the untouched summary as ``reference``, for generation-based
    evaluation with :mod:`glm3_mindspore.metrics`; there ``target_truncated``
    means the reference is longer than the generation budget
    ``max_target_length``.
    """

    stat_columns = ("source_truncated", "target_truncated")

    def __init__(self, tokenizer, config: Optional[DataConfig] = None, mode: str = "train") -> None:
        if mode not in MODES:
            raise DataError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.tokenizer = tokenizer
        self.config = config or DataConfig()
        self.mode = mode
        overhead = len(self._prompt_ids(""))
        if self.config.max_source_length <= overhead:
            raise DataError(f"max_source_length={self.config.max_source_length} leaves no room for the content: "
                            f"the {self.config.format} prompt alone takes {overhead} tokens")

    # ------------------------------------------------------------- protocol
    def check_row(self, row: Mapping[str, Any]) -> None:
        check_adgen_row(row, self.config)

    def to_columns(self, rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Any]]:
        return {c: [row[c] for row in rows] for c in (self.config.prompt_column, self.config.response_column)}

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> Dict[str, List[Any]]:
        prompts, responses = (self._column(batch, c) for c in (self.config.prompt_column, self.config.response_column))
        out: Dict[str, List[Any]] = {}
        for index, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                self.check_row({self.config.prompt_column: prompt, self.config.response_column: response})
            except DataError as exc:
                raise DataError(f"row {index} of the batch: {exc}") from None
            for key, value in self.encode(prompt, response).items():
                out.setdefault(key, []).append(value)
        return out

    # -------------------------------------------------------------- one row
    def encode_row(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        return self.encode(row[self.config.prompt_column], row[self.config.response_column])

    def encode(self, prompt: str, response: str) -> Dict[str, Any]:
        """One ``content`` / ``summary`` pair -> the model inputs and the two flags."""
        source, source_truncated = self._truncated_prompt(self._prompt_ids(prompt))
        target = self._target_ids(response)
        flags = {"source_truncated": source_truncated, "target_truncated": len(target) > self.config.max_target_length}
        if self.mode == "eval":
            return {"input_ids": source, "reference": response, **flags}
        target = target[: self.config.max_target_length] + [self.tokenizer.eos_token_id]
        pad = self.tokenizer.pad_token_id
        if self.config.ignore_pad_token_for_loss:
            labels = [IGNORE_INDEX if t == pad else t for t in target]
        else:
            labels = list(target)
        return {"input_ids": source + target, "labels": [IGNORE_INDEX] * len(source) + labels, **flags}

    def _prompt_ids(self, text: str) -> List[int]:
        if self.config.format == "chat":
            return self.tokenizer.encode_conversation([{"role": "user", "content": text}])
        return self.tokenizer.encode(text)

    def _target_ids(self, text: str) -> List[int]:
        if self.config.format == "chat":
            return self.tokenizer.build_single_message("assistant", "", text)[1:]
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _truncated_prompt(self, ids: List[int]) -> Tuple[List[int], bool]:
        """Cut the content (which ends the prompt but for ``<|assistant|>`` in chat) to fit."""
        limit = self.config.max_source_length
        if len(ids) <= limit:
            return ids, False
        kept_tail = 1 if self.config.format == "chat" else 0
        return ids[: limit - kept_tail] + ids[len(ids) - kept_tail:], True

    @staticmethod
    def _column(batch: Mapping[str, Sequence[Any]], name: str) -> Sequence[Any]:
        if name not in batch:
            raise DataError(f"the batch has no {name!r} column (columns: {', '.join(batch)}); "
                            "set prompt_column / response_column in DataConfig")
        values = batch[name]
        if isinstance(values, str):
            raise DataError("got a single row; use dataset.map(processor, batched=True)")
        return values
