"""ToolAlpaca's ``train_data.json`` -> ChatGLM3 conversations, as THUDM's ``format_tool_alpaca.py``.

Upstream (ChatGLM3 ``finetune_chatmodel_demo/scripts/format_tool_alpaca.py``)
turns each API "setting" into ``tools = [setting["NLDocumentation"]]`` (the
natural-language documentation, one string) and each of its ``Instances``
into::

    user:       instance["input"]
    for each intermediate step ((tool, action_input, react), observation):
      assistant:  react up to "Action:", stripped   (the thought)
      tool:       name=tool, parameters=json.loads(action_input), observation
    assistant:  instance["Final Thought"] + "\\n" + instance["output"]

An instance upstream cannot convert is skipped and counted. This version also
skips (and says why) instances that would convert but fail later in
training, e.g. action inputs that are JSON but not an object, and settings
that upstream would crash on; it never stops the run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ..fileio import atomic_write_text, json_type_name
from .config import DataError
from .conversations import conversation_turns
from .jsonl import RowError, read_json_rows

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ConversionReport:
    """What a conversion kept and skipped; ``skipped`` says where and why."""

    settings: int = 0  # APIs (top-level items) read
    instances: int = 0
    converted: int = 0
    skipped: List[RowError] = field(default_factory=list)
    turns: Counter = field(default_factory=Counter)  # messages per conversation -> examples

    def summary(self) -> str:
        distribution = ", ".join(f"{n} messages: {count}" for n, count in sorted(self.turns.items()))
        return (f"{self.settings} APIs, {self.instances} instances: {self.converted} converted, "
                f"{self.instances - self.converted} skipped ({len(self.skipped)} problems)"
                + (f"; conversation lengths: {distribution}" if distribution else ""))


def convert_instance(instance: Mapping[str, Any], tools: List[Any]) -> Dict[str, Any]:
    """One ToolAlpaca instance -> ``{"tools", "conversations"}``; :class:`DataError` if malformed."""
    if not isinstance(instance, Mapping):
        raise DataError(f"expected an object, got {json_type_name(instance)}")
    conversation: List[Dict[str, Any]] = [{"role": "user", "content": _field(instance, "input")}]
    steps = _field(instance, "intermediate_steps", list)
    for number, step in enumerate(steps):
        try:
            (tool_name, action_input, react), observation = step[0], step[1]
            thought = react.split("Action:")[0].strip()
            parameters = json.loads(action_input)
        except json.JSONDecodeError as exc:
            raise DataError(f"intermediate_steps[{number}]: action input is not JSON ({exc.msg})") from None
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            raise DataError(f"intermediate_steps[{number}] is not "
                            "[[tool, action_input, thought], observation]") from None
        if not isinstance(parameters, dict):
            raise DataError(f"intermediate_steps[{number}]: action input must be a JSON object, "
                            f"got {json_type_name(parameters)}")
        conversation.append({"role": "assistant", "content": thought})
        conversation.append({"role": "tool", "name": tool_name, "parameters": parameters, "observation": observation})
    final = _field(instance, "Final Thought") + "\n" + _field(instance, "output")
    conversation.append({"role": "assistant", "content": final})
    example = {"tools": tools, "conversations": conversation}
    conversation_turns(example)  # what training will need: names, object parameters, strings
    return example


def convert_tool_alpaca(settings: Sequence[Any], path: str = "<data>") -> Tuple[List[Dict[str, Any]], ConversionReport]:
    """All instances of all settings, in order, and the report."""
    report = ConversionReport()
    examples: List[Dict[str, Any]] = []
    for index, setting in enumerate(settings):
        report.settings += 1
        where = f"item {index}"
        if not isinstance(setting, Mapping):
            report.skipped.append(RowError(path, where, f"expected an API object, got {json_type_name(setting)}"))
            continue
        where += f" ({setting.get('Name')})" if isinstance(setting.get("Name"), str) else ""
        instances = setting.get("Instances")
        if not isinstance(instances, list) or "NLDocumentation" not in setting:
            missing = "Instances (a list)" if not isinstance(instances, list) else "NLDocumentation"
            count = len(instances) if isinstance(instances, list) else 0
            report.instances += count
            report.skipped.append(RowError(path, where, f"missing {missing}; its {count} instance(s) skipped"))
            continue
        tools = [setting["NLDocumentation"]]
        for number, instance in enumerate(instances):
            report.instances += 1
            try:
                example = convert_instance(instance, tools)
            except DataError as exc:
                report.skipped.append(RowError(path, f"{where}, instance {number}", str(exc)))
                continue
            examples.append(example)
            report.converted += 1
            report.turns[len(example["conversations"])] += 1
    return examples, report


def format_tool_alpaca(path: PathLike, out: PathLike) -> ConversionReport:
    """Convert ``path`` and write the examples to ``out`` as JSON lines, atomically."""
    read = read_json_rows(path)
    if read.errors and not read.rows:
        raise DataError(str(read.errors[0]))
    examples, report = convert_tool_alpaca(read.rows, str(path))
    report.settings += len(read.errors)
    report.skipped[:0] = read.errors
    atomic_write_text(out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    return report


def _field(instance: Mapping[str, Any], key: str, kind: type = str) -> Any:
    if key not in instance:
        raise DataError(f"missing key {key!r}")
    value = instance[key]
    if not isinstance(value, kind):
        raise DataError(f"{key!r} must be {'an array' if kind is list else 'a string'}, got {json_type_name(value)}")
    return value
