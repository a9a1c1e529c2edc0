"""Small file helpers shared by every writer: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    A crash or kill while writing leaves ``target`` as it was (old content or absent).
    The file gets the permissions ``open`` would give (``0o666`` less the umask),
    as Hugging Face writes, so a model saved here can be served by another user.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(target)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_copy(source: PathLike, target: PathLike) -> None:
    if Path(source).resolve() == Path(target).resolve():
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def read_json_object(path: PathLike, error: type = ValueError, expected: type = dict) -> Any:
    """A JSON file that must hold an object (or another ``expected`` type: ``list``); bad JSON or another type
    raises ``error`` naming the file and line. Every JSON file the package reads goes through here."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, expected):
        raise error(f"{path}: expected a JSON {_JSON_NAMES.get(expected, expected.__name__)}, "
                    f"got {json_type_name(data)}")
    return data


_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def json_type_name(value: object) -> str:
    """The JSON name of a value's type, for error messages (``null``, ``array`` ...)."""
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def _new_file_beside(target: Path) -> Path:
    """A new empty file named ``.<target name>.<random>.tmp`` in ``target``'s folder, mode by the umask.

    Unlike :func:`tempfile.mkstemp`, whose files are always ``0o600``.
    """
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
