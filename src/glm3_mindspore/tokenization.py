"""ChatGLM3 tokenizer: SentencePiece plus nine special tokens, ids identical to upstream.

Upstream (``tokenization_chatglm.py``) appends ``[MASK] [gMASK] [sMASK] sop eop
<|system|> <|user|> <|assistant|> <|observation|>`` after the 64,789
SentencePiece pieces, prefixes every encoded text with ``[gMASK] sop`` and pads
on the left with id 0, attention 0 and position 0, real tokens counting
positions from 0. This class reproduces that without ``transformers``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import conversation
from .fileio import atomic_copy, atomic_write_text, read_json_object
from .hub import WEIGHT_FILE_SUFFIXES, HubOptions, resolve_file

VOCAB_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in conversation.ROLES)
_ROLE_TOKEN_PATTERN = re.compile("|".join(re.escape(t) for t in ROLE_TOKENS))
_UPSTREAM_AUTO_MAP = {"AutoTokenizer": ["THUDM/chatglm3-6b--tokenization_chatglm.ChatGLMTokenizer", None]}

TextInput = Union[str, Sequence[str]]
Ids = List[int]


class TokenizerError(ValueError):
    """Bad tokenizer input or file; the message names the problem."""


class BatchEncoding(dict):
    """A dict of model inputs that also allows attribute access (``enc.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ChatGLM3Tokenizer:
    """Tokenizer for ChatGLM2/ChatGLM3 (``tokenizer_class: ChatGLMTokenizer``)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(
        self,
        vocab_file: Union[str, os.PathLike],
        padding_side: str = "left",
        encode_special_tokens: bool = False,
        model_max_length: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_file = str(vocab_file)
        self.sp_model = _load_sentencepiece(self.vocab_file)
        self.padding_side = _check_side(padding_side)
        self.encode_special_tokens = encode_special_tokens
        self.model_max_length = model_max_length
        # Kept so save_pretrained writes back what was loaded (e.g. MindFormers' token names).
        self.init_kwargs = dict(kwargs)

        self.n_sp_pieces: int = self.sp_model.vocab_size()
        self.special_tokens: Dict[str, int] = {tok: self.n_sp_pieces + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.index_special_tokens: Dict[int, str] = {i: tok for tok, i in self.special_tokens.items()}
        self.bos_token_id: int = self.sp_model.bos_id()
        self.eos_token_id: int = self.sp_model.eos_id()
        self.pad_token_id: int = self.sp_model.unk_id()  # upstream pads with <unk> = 0
        self.unk_token_id: int = self.sp_model.unk_id()
        self._all_special_ids = frozenset(self.index_special_tokens) | {
            self.bos_token_id, self.eos_token_id, self.pad_token_id}

    # ------------------------------------------------------------- vocabulary
    eos_token = "</s>"
    pad_token = "<unk>"
    unk_token = "<unk>"
    bos_token = "<s>"

    @property
    def vocab_size(self) -> int:
        return self.n_sp_pieces + len(SPECIAL_TOKENS)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def all_special_ids(self) -> List[int]:
        return sorted(self._all_special_ids)

    def get_vocab(self) -> Dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.n_sp_pieces)}
        vocab.update(self.special_tokens)
        return vocab

    def get_command(self, token: str) -> int:
        """Id of a special token (upstream name): ``[gMASK]``, ``<|user|>``, ``<eos>`` ..."""
        named = {"<bos>": self.bos_token_id, "<eos>": self.eos_token_id, "<pad>": self.pad_token_id}
        if token in named:
            return named[token]
        if token not in self.special_tokens:
            raise TokenizerError(f"{token!r} is not a special token; known: {', '.join(self.special_tokens)}")
        return self.special_tokens[token]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[int, Ids]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.sp_model.piece_to_id(token)

    def convert_ids_to_tokens(self, ids: Union[int, Iterable[int]], skip_special_tokens: bool = False):
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        return [self._id_to_token(i) for i in _as_id_list(ids)
                if not (skip_special_tokens and i in self._all_special_ids)]

    def _id_to_token(self, index: int) -> str:
        # Upstream maps <unk>/<s>/</s> and out-of-range ids to "" (so decode drops eos).
        if index in self.index_special_tokens:
            return self.index_special_tokens[index]
        if index in (self.eos_token_id, self.bos_token_id, self.pad_token_id) or not 0 <= index < self.n_sp_pieces:
            return ""
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self.sp_model.decode_pieces(list(tokens))

    # --------------------------------------------------------------- encoding
    def tokenize(self, text: str, encode_special_tokens: Optional[bool] = None) -> List[str]:
        """SentencePiece pieces; role tokens kept whole when ``encode_special_tokens``."""
        _check_text(text)
        if not self._special_in_text(encode_special_tokens):
            return self.sp_model.encode_as_pieces(text)
        pieces: List[str] = []
        for chunk, is_role in self._split_role_tokens(text):
            pieces.extend([chunk] if is_role else self.sp_model.encode_as_pieces(chunk))
        return pieces

    def _text_ids(self, text: str, encode_special_tokens: Optional[bool] = None) -> Ids:
        """Ids of ``text`` without the prefix (same ids as upstream's pieces -> ids)."""
        _check_text(text)
        if not self._special_in_text(encode_special_tokens):
            return self.sp_model.encode(text)
        ids: Ids = []
        for chunk, is_role in self._split_role_tokens(text):
            ids.extend([self.special_tokens[chunk]] if is_role else self.sp_model.encode(chunk))
        return ids

    def _special_in_text(self, flag: Optional[bool]) -> bool:
        return self.encode_special_tokens if flag is None else flag

    @staticmethod
    def _split_role_tokens(text: str):
        last = 0
        for match in _ROLE_TOKEN_PATTERN.finditer(text):
            if last < match.start():
                yield text[last:match.start()], False
            yield match.group(0), True
            last = match.end()
        if last < len(text):
            yield text[last:], False

    def get_prefix_tokens(self) -> Ids:
        return [self.special_tokens["[gMASK]"], self.special_tokens["sop"]]

    def build_inputs_with_special_tokens(self, token_ids_0: Ids, token_ids_1: Optional[Ids] = None) -> Ids:
        """``[gMASK] sop A`` or, for a pair, ``[gMASK] sop A B </s>`` (upstream)."""
        ids = self.get_prefix_tokens() + list(token_ids_0)
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    def encode(
        self,
        text: str,
        text_pair: Optional[str] = None,
        add_special_tokens: bool = True,
        truncation: Union[bool, str] = False,
        max_length: Optional[int] = None,
        encode_special_tokens: Optional[bool] = None,
    ) -> Ids:
        """Ids of one text (or pair), with the ``[gMASK] sop`` prefix unless told otherwise."""
        first = self._text_ids(text, encode_special_tokens)
        second = None if text_pair is None else self._text_ids(text_pair, encode_special_tokens)
        if truncation and max_length is not None:
            reserved = self.num_special_tokens_to_add(second is not None) if add_special_tokens else 0
            first, second = _truncate(first, second, max_length - reserved, max_length)
        if not add_special_tokens:
            return first + (second or [])
        return self.build_inputs_with_special_tokens(first, second)

    def __call__(
        self,
        text: TextInput,
        text_pair: Optional[TextInput] = None,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str] = False,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
        return_position_ids: bool = True,
        padding_side: Optional[str] = None,
        pad_to_multiple_of: Optional[int] = None,
        encode_special_tokens: Optional[bool] = None,
    ) -> BatchEncoding:
        """Encode one text or a batch; pads and converts like Hugging Face tokenizers."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = [None] * len(texts) if text_pair is None else ([text_pair] if single else list(text_pair))
        if len(pairs) != len(texts):
            raise TokenizerError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        ids = [self.encode(t, p, add_special_tokens, truncation, max_length, encode_special_tokens)
               for t, p in zip(texts, pairs)]
        features = {"input_ids": ids}
        return self.pad(features, padding=padding, max_length=max_length, return_tensors=return_tensors,
                        return_attention_mask=return_attention_mask, return_position_ids=return_position_ids,
                        padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of, _single=single)

    def pad(
        self,
        encoded: Mapping[str, Any],
        padding: Union[bool, str] = True,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
        return_position_ids: bool = True,
        padding_side: Optional[str] = None,
        pad_to_multiple_of: Optional[int] = None,
        _single: bool = False,
    ) -> BatchEncoding:
        """Pad a batch of ``input_ids``: pad id 0, attention 0, position 0 on the padding side."""
        rows = [list(map(int, r)) for r in _rows(encoded["input_ids"])]
        side = _check_side(padding_side or self.padding_side)
        target = _padded_length(rows, padding, max_length, pad_to_multiple_of)
        out: Dict[str, List[Ids]] = {"input_ids": []}
        if return_attention_mask:
            out["attention_mask"] = []
        if return_position_ids:
            out["position_ids"] = []
        for row in rows:
            n_pad = 0 if target is None else target - len(row)
            _extend(out["input_ids"], row, [self.pad_token_id] * n_pad, side)
            if return_attention_mask:
                _extend(out["attention_mask"], [1] * len(row), [0] * n_pad, side)
            if return_position_ids:
                _extend(out["position_ids"], list(range(len(row))), [0] * n_pad, side)
        return _finish(out, return_tensors, _single)

    # ------------------------------------------------------------------- chat
    def build_single_message(self, role: str, metadata: str, message: str) -> Ids:
        """``<|role|>`` + ids(``metadata + "\\n"``) + ids(message), exactly as upstream."""
        conversation.check_role(role)
        if not isinstance(metadata, str):
            raise TokenizerError(f"metadata must be a string, got {type(metadata).__name__}")
        if not isinstance(message, str):
            raise TokenizerError(f"message content must be a string, got {type(message).__name__}")
        return [self.special_tokens[f"<|{role}|>"]] + self.sp_model.encode(f"{metadata}\n") + self.sp_model.encode(message)

    def build_message_ids(self, message: Mapping[str, Any], where: str = "message") -> Ids:
        """Ids of one history entry ``{"role", "content", "metadata"?, "tools"?}``."""
        text = conversation.message_text(message, where)
        return self.build_single_message(message["role"], conversation.message_metadata(message, where), text)

    def encode_conversation(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> Ids:
        """``[gMASK] sop`` + every message + ``<|assistant|>`` when a reply is wanted."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TokenizerError(f"messages must be a list of dicts, got {type(messages).__name__}")
        ids = self.get_prefix_tokens()
        for i, message in enumerate(messages):
            ids.extend(self.build_message_ids(message, f"messages[{i}]"))
        if add_generation_prompt:
            ids.append(self.special_tokens["<|assistant|>"])
        return ids

    def build_chat_input(
        self,
        query: str,
        history: Optional[Sequence[Mapping[str, Any]]] = None,
        role: str = "user",
        return_tensors: Optional[str] = "np",
    ) -> BatchEncoding:
        """Prompt for the next assistant turn (upstream's method); a batch of one."""
        if not isinstance(query, str):
            raise TokenizerError(f"query must be a string, got {type(query).__name__}")
        conversation.check_role(role)
        ids = self.encode_conversation(list(history or []) + [{"role": role, "content": query}])
        return self.pad({"input_ids": [ids]}, padding=False, return_tensors=return_tensors)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        return_tensors: Optional[str] = None,
        return_dict: bool = False,
    ):
        """OpenAI-style messages -> the same ids as :meth:`build_chat_input`.

        Roles ``system`` / ``user`` / ``assistant`` / ``observation`` (``tool`` is an
        alias of ``observation``); an assistant message with OpenAI ``tool_calls``
        becomes ChatGLM3's ``<|assistant|>name`` + ``tool_call(...)`` turn. ``tools``
        is attached to the first system message, or added as one. With
        ``tokenize=False`` the rendered text is returned, for display: encoding
        that string is not how ChatGLM3 tokenizes turns, use the ids.
        """
        history = conversation_from_openai(messages, tools)
        if not tokenize:
            return self.render_conversation(history, add_generation_prompt)
        ids = self.encode_conversation(history, add_generation_prompt)
        if return_dict or return_tensors is not None:
            encoded = self.pad({"input_ids": [ids]}, padding=False, return_tensors=return_tensors)
            return encoded if return_dict else encoded["input_ids"]
        return ids

    def render_conversation(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        parts = ["[gMASK]sop"]
        for i, message in enumerate(messages):
            text = conversation.message_text(message, f"messages[{i}]")
            parts.append(f"<|{message['role']}|>{conversation.message_metadata(message)}\n{text}")
        if add_generation_prompt:
            parts.append("<|assistant|>")
        return "".join(parts)

    # --------------------------------------------------------------- decoding
    def decode(self, token_ids: Union[int, Iterable[int]], skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of ``token_ids``; special tokens appear as text unless skipped, eos/pad never."""
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [int(token_ids)]
        return self.convert_tokens_to_string(self.convert_ids_to_tokens(token_ids, skip_special_tokens))

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False, **kw: Any) -> List[str]:
        return [self.decode(seq, skip_special_tokens, **kw) for seq in _rows(sequences)]

    # ------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], **kwargs: Any) -> "ChatGLM3Tokenizer":
        """Load from a folder with ``tokenizer.model`` (+ ``tokenizer_config.json``), a file, or a hub id."""
        options = HubOptions.pop_from(kwargs)
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return cls(path, **kwargs)
        vocab = resolve_file(name_or_path, VOCAB_FILE, options)
        config_file = resolve_file(name_or_path, TOKENIZER_CONFIG_FILE, options, required=False)
        settings = _read_tokenizer_config(config_file) if config_file else {}
        return cls(vocab, **{**settings, **kwargs})

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> List[Path]:
        """Write ``tokenizer.model`` and ``tokenizer_config.json`` as the hub ships them."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_copy(self.vocab_file, folder / VOCAB_FILE)
        config = {
            **self.init_kwargs,
            "tokenizer_class": "ChatGLMTokenizer",
            "padding_side": self.padding_side,
            "encode_special_tokens": self.encode_special_tokens,
            "clean_up_tokenization_spaces": False,
            "remove_space": False,
            "do_lower_case": False,
            "auto_map": self.init_kwargs.get("auto_map", _UPSTREAM_AUTO_MAP),
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        atomic_write_text(folder / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return [folder / VOCAB_FILE, folder / TOKENIZER_CONFIG_FILE]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, padding_side={self.padding_side!r})"


# Upstream's class name, so ``tokenizer_class: ChatGLMTokenizer`` resolves to us.
ChatGLMTokenizer = ChatGLM3Tokenizer


def conversation_from_openai(
    messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Mapping[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """Map OpenAI-style messages (and ``tools=``) onto ChatGLM3 history entries."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TokenizerError(f"messages must be a list of dicts, got {type(messages).__name__}")
    history: List[Dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TokenizerError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = "observation" if message.get("role") == "tool" else message.get("role")
        conversation.check_role(role, f"messages[{i}].role")
        entry = {k: v for k, v in message.items() if k in ("content", "metadata", "tools")}
        entry["role"] = role
        if entry.get("content") is None:
            entry["content"] = ""
        for call in message.get("tool_calls") or []:
            history.append(tool_call_entry(call, f"messages[{i}].tool_calls"))
        if not message.get("tool_calls") or entry["content"]:
            history.append(entry)
    if tools:
        if history and history[0]["role"] == "system":
            history[0] = {**history[0], "tools": list(tools)}
        else:
            history.insert(0, conversation.tools_system_message(tools))
    return history


def tool_call_entry(call: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """An OpenAI tool call (``{"function": {"name", "arguments"}}`` or a legacy ``function_call``) as the
    assistant turn ChatGLM3 itself writes for it."""
    function = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise TokenizerError(f"{where}: expected {{'function': {{'name': ..., 'arguments': ...}}}}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{where}: arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(arguments, Mapping):
        raise TokenizerError(f"{where}: arguments must be a JSON object")
    return {"role": "assistant", "metadata": function["name"], "content": conversation.format_tool_call(arguments)}


# ------------------------------------------------------------------- helpers
def _load_sentencepiece(path: str):
    import sentencepiece

    file = Path(path)
    if not file.is_file():
        raise TokenizerError(f"tokenizer file not found: {file}")
    _refuse_other_model_files(file)
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.load(str(file))
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(f"{file} is not a valid SentencePiece model (corrupt or truncated?): {exc}") from None
    if processor.vocab_size() <= 3 or processor.eos_id() < 0:
        raise TokenizerError(f"{file}: SentencePiece model has no usable vocabulary or eos token")
    return processor


def _refuse_other_model_files(file: Path) -> None:
    """A config or weight file passed where ``tokenizer.model`` belongs: say what it is and what to pass."""
    with open(file, "rb") as handle:
        head = handle.read(64).lstrip()
    if file.suffix == ".json" or head[:1] == b"{":
        kind = "a JSON file"
    elif file.suffix in WEIGHT_FILE_SUFFIXES:
        kind = "a weight file"
    else:
        return
    raise TokenizerError(f"{file} is {kind}, not a SentencePiece {VOCAB_FILE}: pass the model folder that holds "
                         f"{VOCAB_FILE}, or that file itself (glm3: --tokenizer)")


def _read_tokenizer_config(path: Path) -> Dict[str, Any]:
    data = read_json_object(path, TokenizerError)
    kept = {k: v for k, v in data.items() if k not in ("name_or_path", "tokenizer_class", "vocab_file", "added_tokens_decoder")}
    if "padding_side" in kept:
        try:
            _check_side(kept["padding_side"])
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from None
    return kept


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TokenizerError(f"text must be a string, got {type(text).__name__}")


def _check_side(side: str) -> str:
    if side not in ("left", "right"):
        raise TokenizerError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side


def _truncate(first: Ids, second: Optional[Ids], budget: int, max_length: int):
    """Longest-first truncation of the text ids to ``budget`` tokens, from the right."""
    if budget < 0:
        raise TokenizerError(
            f"max_length={max_length} is too small: the [gMASK] sop prefix alone needs {max_length - budget} tokens"
        )
    if second is None:
        return first[:budget], None
    first, second = list(first), list(second)
    while len(first) + len(second) > budget:
        (first if len(first) >= len(second) else second).pop()
    return first, second


def _as_id_list(ids: Iterable[int]) -> List[int]:
    if hasattr(ids, "asnumpy"):
        ids = ids.asnumpy()
    return [int(i) for i in np.asarray(ids).reshape(-1)]


def _rows(batch: Any) -> List[Any]:
    if hasattr(batch, "asnumpy"):
        batch = batch.asnumpy()
    if isinstance(batch, np.ndarray):
        return list(batch.reshape(1, -1) if batch.ndim == 1 else batch)
    batch = list(batch)
    if batch and isinstance(batch[0], (int, np.integer)):
        return [batch]
    return batch


def _padded_length(rows: List[Ids], padding: Union[bool, str], max_length: Optional[int], multiple: Optional[int]):
    if padding in (False, None, "do_not_pad"):
        return None
    if padding in (True, "longest"):
        target = max((len(r) for r in rows), default=0)
    elif padding == "max_length":
        if max_length is None:
            raise TokenizerError("padding='max_length' needs max_length")
        longest = max((len(r) for r in rows), default=0)
        if longest > max_length:
            raise TokenizerError(f"a sequence has {longest} tokens, more than max_length={max_length}; pass truncation=True")
        target = max_length
    else:
        raise TokenizerError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
    if multiple:
        target = -(-target // multiple) * multiple
    return target


def _extend(out: List[Ids], values: Ids, pads: Ids, side: str) -> None:
    out.append(pads + values if side == "left" else values + pads)


def _finish(features: Dict[str, List[Ids]], return_tensors: Optional[str], single: bool) -> BatchEncoding:
    if return_tensors is None:
        return BatchEncoding({k: (v[0] if single else v) for k, v in features.items()})
    if return_tensors not in ("np", "ms"):
        raise TokenizerError(f"return_tensors must be 'np', 'ms' or None, got {return_tensors!r}")
    lengths = {len(r) for r in features["input_ids"]}
    if len(lengths) > 1:
        raise TokenizerError("sequences have different lengths; pass padding=True to return tensors")
    arrays = {k: np.asarray(v, dtype=np.int64).reshape(len(v), -1) for k, v in features.items()}
    if return_tensors == "ms":
        import mindspore as ms

        arrays = {k: ms.Tensor(v) for k, v in arrays.items()}
    return BatchEncoding(arrays)
