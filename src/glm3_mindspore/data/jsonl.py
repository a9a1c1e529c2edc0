"""Read JSON-lines (or JSON array) data files without losing a run to one bad line.

Fine-tuning sets are hand-edited and concatenated; one broken line must not
hide the other 100,000. Every row that is not a JSON object is reported with
its line number (``item N`` for a JSON array file) and reading goes on. Lines
are read one at a time and each at most ``max_row_bytes``, so one huge line
costs neither the memory nor the time it would take to parse.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

from ..fileio import json_type_name
from .config import DataError

PathLike = Union[str, "os.PathLike[str]"]
Row = Dict[str, Any]
NEWLINE = b"\n"
BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, skipped
# Largest row read: an ADGEN row is well under 1 KB, a long multi-turn conversation tens of KB.
MAX_ROW_BYTES = 1 << 20
MAX_ARRAY_FILE_BYTES = 256 << 20


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
            self.error(where, f"expected a JSON object, got {json_type_name(value)}")

    def error(self, where: str, message: str) -> None:
        self.errors.append(RowError(self.path, where, message))


def load_json_rows(path: PathLike) -> Tuple[List[Row], List[RowError]]:
    """The JSON objects of ``path`` and the errors of the rows that are not."""
    result = read_json_rows(path)
    return result.rows, result.errors


def read_json_rows(path: PathLike, max_row_bytes: int = MAX_ROW_BYTES) -> JsonRows:
    """Like :func:`load_json_rows`, keeping each row's location for later messages.

    A file whose first character is ``[`` is one JSON array (ToolAlpaca's
    ``train_data.json``), read whole up to :data:`MAX_ARRAY_FILE_BYTES`; anything
    else is JSON lines (ADGEN's ``.json`` files are), read line by line, blank
    lines ignored. A line longer than ``max_row_bytes`` is reported, not read
    (parsing costs tens of times a row's size). A single pretty-printed object
    is accepted too. A file without a single row is a :class:`DataError`.
    """
    file = _checked_file(path)
    result = JsonRows(str(path))
    with open(file, "rb") as handle:
        if handle.read(len(BOM)) != BOM:
            handle.seek(0)
        start = handle.tell()
        if handle.read(4096).lstrip()[:1] == b"[":
            handle.seek(start)
            _read_array(_read_whole(handle, file, MAX_ARRAY_FILE_BYTES, "a JSON array file"), result)
        else:
            handle.seek(start)
            for number, raw in _lines(handle, max_row_bytes):
                if raw is None:
                    result.error(f"line {number}", f"row longer than {max_row_bytes} bytes, the limit "
                                                   "(max_row_bytes): not read")
                else:
                    _read_line(number, raw, result)
            if not result.rows and len(result.errors) > 1:
                handle.seek(start)
                _try_single_object(handle, max_row_bytes, result)
    if not result.rows and not result.errors:
        raise DataError(f"{file}: no rows: the file is empty or blank")
    return result


def _checked_file(path: PathLike) -> Path:
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: no such file")
    if file.is_dir():
        raise DataError(f"{file}: is a folder, expected a JSON or JSON-lines file")
    return file


def _lines(handle: BinaryIO, limit: int) -> Iterator[Tuple[int, Optional[bytes]]]:
    """``(line number, bytes)`` of each line; ``None`` for a line longer than ``limit``, skipped unread."""
    number = 0
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) <= limit or line.endswith(NEWLINE):
            yield number, line.rstrip(NEWLINE)
            continue
        while line and not line.endswith(NEWLINE):  # the rest of the long line, a bounded piece at a time
            line = handle.readline(1 << 20)
        yield number, None


def _read_whole(handle: BinaryIO, file: Path, limit: int, what: str) -> bytes:
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{file}: {what} longer than {limit} bytes is not read whole; write it as JSON lines "
                        "(one row per line)")
    return data


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
        result.error("line 1", f"expected a JSON array or JSON lines, got {json_type_name(items)}")
        return
    for index, item in enumerate(items):
        result.add(f"item {index}", item)


def _try_single_object(handle: BinaryIO, limit: int, result: JsonRows) -> None:
    """A pretty-printed single object fails line by line; read it whole (it is one row) instead."""
    data = handle.read(limit + 1)
    if len(data) > limit:
        return
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if isinstance(value, dict):
        result.errors.clear()
        result.add("line 1", value)
