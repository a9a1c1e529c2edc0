"""MindFormers-style YAML documents: read with the line of every key, and ``--set a.b=value`` overrides.

Every reader of a MindFormers file (model, fine-tuning and parallel settings)
goes through :class:`YamlDocument`, so a wrong key or value is reported as
``file:line: section.key: problem``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import yaml

from ..configuration import ConfigError


class YamlDocument:
    """A parsed YAML mapping that remembers the line of every key."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        text = self._read(self.path)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark else str(self.path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(self.data, dict):
            raise ConfigError(f"{self.path}: expected a mapping at the top level")
        self.lines: Dict[Tuple[str, ...], int] = {}
        self._index(root, ())

    @staticmethod
    def _read(path: Path) -> str:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.read_text(encoding="utf-8")

    def _index(self, node, prefix: Tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = prefix + (str(key_node.value),)
                self.lines[key] = key_node.start_mark.line + 1
                self._index(value_node, key)

    def where(self, *keys: str) -> str:
        """``file:line: a.b.c`` for error messages."""
        line = self.lines.get(tuple(keys))
        location = f"{self.path}:{line}" if line else str(self.path)
        return f"{location}: {'.'.join(keys)}"

    def resolve_path(self, value: str) -> str:
        """A relative path that exists next to this file is taken from there; else as given."""
        candidate = self.path.parent / value
        if not Path(value).is_absolute() and candidate.exists():
            return str(candidate.resolve())
        return value

    def get(self, *keys: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def section(self, *keys: str) -> Dict[str, Any]:
        value = self.get(*keys, default={})
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(*keys)}: expected a mapping, got {type(value).__name__}")
        return value


def parse_assignment(item: str, error: type = ConfigError) -> Tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is JSON if it parses, else the raw string."""
    if "=" not in item:
        raise error(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"none": None, "null": None, "true": True, "false": False}.get(raw.lower(), raw)
    return key.strip(), value


def apply_overrides(doc: YamlDocument, overrides: Sequence[str]) -> None:
    """``a.b.c=value``: set a key of the YAML (creating sub-mappings as needed)."""
    for item in overrides:
        key, value = parse_assignment(item)
        parts = key.split(".")
        node = doc.data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value


def plain_value(value: Any) -> Any:
    """YAML as MindFormers writes it: ``None`` means null and ``1e-5`` is a number (PyYAML reads strings)."""
    if not isinstance(value, str):
        return value
    if value in ("None", "null", "~"):
        return None
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        return value


__all__ = ["YamlDocument", "apply_overrides", "parse_assignment", "plain_value"]
