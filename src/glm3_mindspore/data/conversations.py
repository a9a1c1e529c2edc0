"""Multi-turn, tool-using conversations -> ``input_ids`` and ``labels``, as ChatGLM3's demo does.

A row is ChatGLM3's fine-tuning format::

    {"tools": [...]?,                       # becomes the first system message
     "conversations": [{"role": "system" | "user" | "assistant" | "tool" | "observation",
                        "content": str,      # every role but "tool"
                        "name": str, "parameters": {...}, "observation": any,  # "tool" only
                        "loss": bool?}, ...]}

A ``tool`` entry is the model calling a tool: an assistant turn with the tool
name as metadata and ```` ```python\\ntool_call(k=v, ...)\\n``` ```` as content,
then an observation turn holding the tool's result (JSON unless a string).

Loss masks follow upstream ``preprocess_utils.format_conversation`` and
``MultiTurnDataset`` (THUDM/ChatGLM3, Nov 2023) token for token: every token of
a turn gets the turn's loss flag, ``[gMASK] sop`` and the final eos get none,
and the label of position ``i`` is the token if position ``i - 1`` was flagged.
So an assistant turn learns its content and the token that ends it (the next
role token, or eos), never its own ``<|assistant|>``. System and user turns
never take loss; a message's ``"loss": false`` turns loss off for that
assistant (or tool-call) turn. One deliberate difference: an ``observation``
message given directly is treated like the observation half of a ``tool``
entry, without loss (upstream would train on it, which no upstream data does).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .. import conversation
from ..labels import IGNORE_INDEX
from ..conversation import ConversationError
from ..fileio import json_type_name
from .config import DataConfig, DataError

CONVERSATIONS_KEY = "conversations"
TOOLS_KEY = "tools"
ROW_JSON_COLUMN = "row_json"  # a whole row as JSON text, see ConversationProcessor.to_columns
NO_LOSS_ROLES = frozenset({"system", "user", "observation"})


class Turn(NamedTuple):
    """One ``<|role|>metadata\\ntext`` turn and whether predicting its tokens takes loss."""

    role: str
    metadata: str
    text: str
    loss: bool


def conversation_turns(row: Mapping[str, Any]) -> List[Turn]:
    """The turns of one row, validated; errors name the key (``conversations[2].content``)."""
    if not isinstance(row, Mapping):
        raise DataError(f"expected a JSON object with {CONVERSATIONS_KEY!r}, got {json_type_name(row)}")
    messages = row.get(CONVERSATIONS_KEY)
    if not isinstance(messages, list):
        raise DataError(f"{CONVERSATIONS_KEY!r} must be a list of messages, got {json_type_name(messages)}")
    turns: List[Turn] = []
    tools = row.get(TOOLS_KEY)
    if tools is not None:  # JSON null and datasets' fill-in for a missing key both mean "no tools"
        system = {"role": "system", "content": conversation.TOOLS_SYSTEM_PROMPT, "tools": tools}
        turns.append(Turn("system", "", conversation.message_text(system), False))
    for index, message in enumerate(messages):
        turns.extend(_message_turns(message, f"{CONVERSATIONS_KEY}[{index}]"))
    return turns


def encode_turns(turns: Sequence[Turn], tokenizer) -> Tuple[List[int], List[bool]]:
    """Token ids and per-token loss flags: ``[gMASK] sop`` + each turn + eos."""
    tokens = tokenizer.get_prefix_tokens()
    loss_masks = [False] * len(tokens)
    for turn in turns:
        ids = tokenizer.build_single_message(turn.role, turn.metadata, turn.text)
        tokens.extend(ids)
        loss_masks.extend([turn.loss] * len(ids))
    tokens.append(tokenizer.eos_token_id)
    loss_masks.append(False)
    return tokens, loss_masks


def labels_from_loss_masks(tokens: Sequence[int], loss_masks: Sequence[bool]) -> List[int]:
    """Upstream's shift: position ``i`` is labelled when the token before it takes loss."""
    shifted = [False, *loss_masks[:-1]]
    return [token if flag else IGNORE_INDEX for token, flag in zip(tokens, shifted)]


class ConversationProcessor:
    """``dataset.map(ConversationProcessor(tokenizer, config), batched=True)`` -> ``input_ids``, ``labels``.

    Rows longer than ``config.max_seq_length`` are cut at that length, as
    upstream does (possibly inside a turn). Two flag columns report what
    happened to each row: ``truncated``, and ``no_labels`` (nothing left to
    learn, e.g. the cut removed every assistant token); :func:`build_dataset`
    counts and removes them. Padding is the collator's job.

    The batch may hold ``conversations`` (and ``tools``) columns, or a
    ``row_json`` column with each row as JSON text: :func:`build_dataset` uses
    the latter, because Arrow would otherwise unify every row's tool
    ``parameters`` into one struct and invent ``None`` arguments.
    """

    stat_columns = ("truncated", "no_labels")

    def __init__(self, tokenizer, config: Optional[DataConfig] = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or DataConfig()

    def check_row(self, row: Mapping[str, Any]) -> None:
        conversation_turns(row)

    def to_columns(self, rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Any]]:
        return {ROW_JSON_COLUMN: [json.dumps(row, ensure_ascii=False) for row in rows]}

    def encode_row(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        """One row -> ``input_ids``, ``labels`` and the two flags."""
        tokens, loss_masks = encode_turns(conversation_turns(row), self.tokenizer)
        labels = labels_from_loss_masks(tokens, loss_masks)
        limit = self.config.max_seq_length
        truncated = limit is not None and len(tokens) > limit
        if truncated:
            tokens, labels = tokens[:limit], labels[:limit]
        no_labels = all(label == IGNORE_INDEX for label in labels)
        return {"input_ids": tokens, "labels": labels, "truncated": truncated, "no_labels": no_labels}

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {"input_ids": [], "labels": [], **{c: [] for c in self.stat_columns}}
        for index, row in enumerate(_batch_rows(batch)):
            try:
                example = self.encode_row(row)
            except DataError as exc:
                raise DataError(f"row {index} of the batch: {exc}") from None
            for key, values in out.items():
                values.append(example[key])
        return out


# ------------------------------------------------------------------ helpers
def _message_turns(message: Any, where: str) -> List[Turn]:
    if not isinstance(message, Mapping):
        raise DataError(f"{where} must be an object with 'role' and 'content', got {json_type_name(message)}")
    role = message.get("role")
    loss = _loss_flag(message.get("loss"), where) and role not in NO_LOSS_ROLES
    if role == "tool":
        return _tool_turns(message, loss, where)
    if role not in conversation.ROLES:
        raise DataError(f"{where}.role: unknown role {role!r}; expected one of "
                        f"{', '.join(conversation.ROLES)} or tool")
    content = message.get("content")
    if not isinstance(content, str):
        raise DataError(f"{where}.content must be a string, got {json_type_name(content)}")
    return [Turn(role, "", content, loss)]


def _tool_turns(message: Mapping[str, Any], loss: bool, where: str) -> List[Turn]:
    name = message.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}.name must be the tool's name (a non-empty string), "
                        f"got {repr(name) if isinstance(name, str) else json_type_name(name)}")
    parameters = message.get("parameters")
    if not isinstance(parameters, Mapping):
        raise DataError(f"{where}.parameters must be an object of tool arguments, got {json_type_name(parameters)}")
    try:
        call = conversation.format_tool_call(parameters)
    except ConversationError as exc:
        raise DataError(f"{where}.parameters: {exc}") from None
    observation = message.get("observation")
    if not isinstance(observation, str):
        observation = json.dumps(observation, ensure_ascii=False)
    return [Turn("assistant", name, call, loss), Turn("observation", "", observation, False)]


def _loss_flag(value: Any, where: str) -> bool:
    if value is None:  # absent (datasets fills missing keys with None)
        return True
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise DataError(f"{where}.loss must be true or false, got {value!r}")


def _batch_rows(batch: Mapping[str, Sequence[Any]]) -> Iterator[Mapping[str, Any]]:
    if ROW_JSON_COLUMN in batch:
        for text in batch[ROW_JSON_COLUMN]:
            yield json.loads(text)
        return
    if CONVERSATIONS_KEY not in batch:
        raise DataError(f"the batch has no {CONVERSATIONS_KEY!r} column (columns: {', '.join(batch)})")
    messages = batch[CONVERSATIONS_KEY]
    if messages and isinstance(messages[0], Mapping):
        raise DataError("got a single row; use dataset.map(processor, batched=True)")
    tools = batch.get(TOOLS_KEY) or [None] * len(messages)
    for conv, tool_list in zip(messages, tools):
        yield {CONVERSATIONS_KEY: conv, TOOLS_KEY: tool_list}
