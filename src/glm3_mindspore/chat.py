"""``model.chat`` / ``model.stream_chat`` with upstream semantics, and an OpenAI-style ``chat_completion``.

History is a list of ``{"role", "content", "metadata"?, "tools"?}`` dicts; a reply
ends at ``</s>``, ``<|user|>`` or ``<|observation|>`` and is parsed by
:func:`glm3_mindspore.conversation.process_response` (tool calls read with
``ast``, never executed). Two deliberate differences from upstream: the
caller's ``history`` list is not modified (the new one is returned), and only a
trailing stop token is cut from the reply (upstream always cuts the last token,
even when generation stopped at ``max_length``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .conversation import check_history, process_response
from .generation import CHAT_DEFAULTS, GenerationMixin
from .generation.streamer import REPLACEMENT_CHAR
from .modeling import ChatGLM3ForCausalLM
from .tokenization import conversation_from_openai


def chat_stop_ids(tokenizer) -> List[int]:
    return [tokenizer.eos_token_id, tokenizer.get_command("<|user|>"), tokenizer.get_command("<|observation|>")]


class ChatMixin:
    """Chat methods for a model that has ``generate`` / ``stream_generate``."""

    def chat(self, tokenizer, query: str, history: Optional[List[Dict]] = None, role: str = "user",
             max_length: int = CHAT_DEFAULTS["max_length"], num_beams: int = 1,
             do_sample: bool = CHAT_DEFAULTS["do_sample"], top_p: float = CHAT_DEFAULTS["top_p"],
             temperature: float = CHAT_DEFAULTS["temperature"], logits_processor=None, **kwargs: Any):
        """One reply to ``query``; returns ``(response, history)`` like upstream."""
        history = [] if history is None else check_history(history)
        inputs = tokenizer.build_chat_input(query, history=history, role=role)
        stop_ids = chat_stop_ids(tokenizer)
        outputs = self.generate(
            inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
            logits_processor=logits_processor, max_length=max_length, num_beams=num_beams, do_sample=do_sample,
            top_p=top_p, temperature=temperature, eos_token_id=stop_ids, **kwargs,
        )
        reply_ids = _reply_ids(outputs[0], inputs["input_ids"].shape[1], stop_ids)
        history.append({"role": role, "content": query})
        return process_response(tokenizer.decode(reply_ids), history)

    def stream_chat(self, tokenizer, query: str, history: Optional[List[Dict]] = None, role: str = "user",
                    past_key_values=None, max_length: int = CHAT_DEFAULTS["max_length"],
                    do_sample: bool = CHAT_DEFAULTS["do_sample"], top_p: float = CHAT_DEFAULTS["top_p"],
                    temperature: float = CHAT_DEFAULTS["temperature"], logits_processor=None,
                    return_past_key_values: bool = False, **kwargs: Any) -> Iterator[Tuple]:
        """Yield ``(response so far, history)`` as the reply grows (plus the cache when asked).

        Pass the ``past_key_values`` of the previous turn to reuse its KV cache
        instead of re-reading the history (then ``history`` is only used for the
        returned history, as upstream does).
        """
        history = [] if history is None else check_history(history)
        inputs = (tokenizer.build_chat_input(query, history=history, role=role) if past_key_values is None
                  else tokenizer.build_chat_input(query, role=role))
        stop_ids = chat_stop_ids(tokenizer)
        prompt_length = inputs["input_ids"].shape[1]
        history.append({"role": role, "content": query})
        position_ids = None if past_key_values is not None else inputs["position_ids"]
        for outputs, state in self.stream_generate(
            inputs["input_ids"], inputs["attention_mask"], position_ids, logits_processor=logits_processor,
            past_key_values=past_key_values, return_past_key_values=True, max_length=max_length,
            do_sample=do_sample, top_p=top_p, temperature=temperature, eos_token_id=stop_ids, **kwargs,
        ):
            response = tokenizer.decode(_reply_ids(outputs[0], prompt_length, stop_ids))
            if response and not response.endswith(REPLACEMENT_CHAR):
                response, new_history = process_response(response, history)
                yield (response, new_history, state) if return_past_key_values else (response, new_history)

    def chat_completion(self, tokenizer, messages: Sequence[Mapping[str, Any]], tools=None,
                        stream: bool = False, **kwargs: Any):
        """OpenAI-style: ``messages`` (+ ``tools``) -> an assistant message dict.

        The message has ``content`` (text or ``None``) and, when the model calls a
        tool, ``tool_calls`` (``[{"id", "type": "function", "function": {"name",
        "arguments"}}]`` with JSON arguments). With ``stream=True`` an iterator of
        the growing message is returned instead.
        """
        history = conversation_from_openai(messages, tools)
        if not history or history[-1]["role"] not in ("user", "observation", "system"):
            raise ValueError("the last message must be from the user, a tool (observation) or the system")
        last = history.pop()
        if stream:
            return (_openai_message(reply) for reply, _ in
                    self.stream_chat(tokenizer, last["content"], history, role=last["role"], **kwargs))
        reply, _ = self.chat(tokenizer, last["content"], history, role=last["role"], **kwargs)
        return _openai_message(reply)


def _reply_ids(sequence, prompt_length: int, stop_ids: Sequence[int]) -> List[int]:
    ids = [int(i) for i in np.asarray(sequence.asnumpy() if hasattr(sequence, "asnumpy") else sequence)[prompt_length:]]
    if ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return ids


def _openai_message(reply) -> Dict[str, Any]:
    if isinstance(reply, str):
        return {"role": "assistant", "content": reply, "tool_calls": None}
    if "parameters" in reply:
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": reply["name"], "arguments": json.dumps(reply["parameters"], ensure_ascii=False)}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    message = {"role": "assistant", "content": reply.get("content"), "tool_calls": None, "metadata": reply["name"]}
    if "error" in reply:
        message["error"] = reply["error"]
    return message


class ChatGLM3ForConditionalGeneration(ChatMixin, GenerationMixin, ChatGLM3ForCausalLM):
    """The ChatGLM3 language model as users load it: the network with ``generate`` / ``stream_generate``
    and ``chat`` / ``stream_chat`` / ``chat_completion`` (upstream's class of this name).

    Built here, on top of :class:`glm3_mindspore.modeling.ChatGLM3ForCausalLM`, so that
    the network depends on neither generation nor chat.
    """


# Upstream's class name, so ``architectures`` / ``auto_map`` in hub configs resolve to us.
ChatGLMForConditionalGeneration = ChatGLM3ForConditionalGeneration
