"""Read JSON-lines (or JSON array) data files without losing a run to one bad line.

Fine-tuning sets are hand-edited and concatenated; one broken line must not
hide the other 100,000. Every row that is not a JSON object is reported with
its line number (``item N`` for a JSON array file) and reading goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .config import DataError, type_name

PathLike = Union[str, "os.PathLike[str]"]
Row = Dict[str, Any]
NEWLINE = b"\n"


@dataclass(frozen=True)
class RowError:
    """One unusable row: ``where`` is ``"line 12"`` (JSON lines) or ``"item 3"`` (JSON array)."""

    path: str
    where: str
    message: str

    @property
    def line(self) -> Optional[int]:
        return self.position if self.where.startswith("line ") else None

    @property
    def position(self) -> int:
        """The line or item number, for sorting errors into file order."""
        number = self.where.split(" ")[1].rstrip(",")
        return int(number) if number.isdigit() else -1

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: {self.message}"


@dataclass
class JsonRows:
    """The good rows of a file, where each came from, and the bad ones."""

    path: str
    rows: List[Row] = field(default_factory=list)
    where: List[str] = field(default_factory=list)
    errors: List[RowError] = field(default_factory=list)

    def add(self, where: str, value: Any) -> None:
        if isinstance(value, dict):
            self.rows.append(value)
            self.where.append(where)
        else:
            self.error(where, f"expected a JSON object, got {type_name(value)}")

    def error(self, where: str, message: str) -> None:
        self.errors.append(RowError(self.path, where, message))


def load_json_rows(path: PathLike) -> Tuple[List[Row], List[RowError]]:
    """The JSON objects of ``path`` and the errors of the rows that are not."""
    result = read_json_rows(path)
    return result.rows, result.errors


def read_json_rows(path: PathLike) -> JsonRows:
    """Like :func:`load_json_rows`, keeping each row's location for later messages.

    A file whose first character is ``[`` is one JSON array (ToolAlpaca's
    ``train_data.json``); anything else is JSON lines (ADGEN's ``.json`` files
    are), blank lines ignored. A single pretty-printed object is accepted too.
    """
    data = _read_bytes(path)
    result = JsonRows(str(path))
    if data.lstrip()[:1] == b"[":
        _read_array(data, result)
        return result
    for number, raw in enumerate(data.split(NEWLINE), start=1):
        _read_line(number, raw, result)
    if not result.rows and len(result.errors) > 1:
        _try_single_object(data, result)
    return result


def _read_bytes(path: PathLike) -> bytes:
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: no such file")
    if file.is_dir():
        raise DataError(f"{file}: is a folder, expected a JSON or JSON-lines file")
    data = file.read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # UTF-8 byte-order mark


def _read_line(number: int, raw: bytes, result: JsonRows) -> None:
    where = f"line {number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.error(where, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
        return
    if not text.strip():
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        result.error(where, f"not valid JSON: {exc.msg} at column {exc.colno}")
        return
    result.add(where, value)


def _read_array(data: bytes, result: JsonRows) -> None:
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(NEWLINE) + 1
        result.error(f"line {line}", "not valid UTF-8")
        return
    except json.JSONDecodeError as exc:
        result.error(f"line {exc.lineno}", f"not valid JSON: {exc.msg} at column {exc.colno}")
        return
    if not isinstance(items, list):
        result.error("line 1", f"expected a JSON array or JSON lines, got {type_name(items)}")
        return
    for index, item in enumerate(items):
        result.add(f"item {index}", item)


def _try_single_object(data: bytes, result: JsonRows) -> None:
    """A pretty-printed single object fails line by line; read it whole instead."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if isinstance(value, dict):
        result.errors.clear()
        result.add("line 1", value)
