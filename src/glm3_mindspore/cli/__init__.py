"""The ``glm3`` command line.

Each sub-command lives in its own module here with a ``register(subparsers)``
function that adds its parser and sets ``func`` to a handler returning an exit
code. Errors the user can fix are raised as :class:`CliError` and printed as
one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Sub-command modules, in the order ``glm3 --help`` lists them.
COMMANDS = [
    "demo",
    "finetune",
    "evaluate",
    "generate",
    "chat",
    "serve",
    "tokenize",
    "data",
    "convert",
    "lora",
    "launch",
    "parallel",
    "ckpt",
]


class CliError(Exception):
    """A problem with the user's input, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm3", description="ChatGLM3 on MindSpore")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, OSError, ValueError) as exc:  # OSError: missing files, permissions, a full disk
        print(f"glm3 {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
