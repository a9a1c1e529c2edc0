"""``glm3 data``: check fine-tuning files and convert ToolAlpaca data.

``glm3 data check FILE --format adgen|conversations [--tokenizer T]`` lists
malformed rows with their line numbers (and goes on), then, with a
tokenizer, how many rows the length limits cut. Lines are streamed; one longer
than ``--max-row-bytes`` is reported as malformed without being read. It exits
1 when some rows are malformed or the file has no rows, 0 otherwise.

``glm3 data format-tool-alpaca --path train_data.json --out tool_alpaca.jsonl``
converts ToolAlpaca data as THUDM's ``format_tool_alpaca.py`` does, skipping
(and counting) instances it cannot convert.
"""

from __future__ import annotations

import functools
import sys
from typing import Dict, List, Sequence

import numpy as np

from ..data.jsonl import MAX_ROW_BYTES

DATA_FORMATS = ("adgen", "conversations")


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check fine-tuning data files, convert ToolAlpaca data")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    check = commands.add_parser("check", help="validate a JSON-lines file and count truncated rows")
    check.add_argument("path", help="JSON lines (or a JSON array) of rows")
    check.add_argument("--format", choices=DATA_FORMATS, default="adgen",
                       help="adgen: content/summary rows; conversations: ChatGLM3 multi-turn rows")
    check.add_argument("--tokenizer", help="folder, tokenizer.model or hub id; enables token counts")
    check.add_argument("--adgen-format", choices=("chat", "plain"), default="chat", help="ADGEN layout")
    check.add_argument("--max-source-length", type=int, default=64)
    check.add_argument("--max-target-length", type=int, default=127)
    check.add_argument("--max-seq-length", type=int, default=None, help="conversations: cut rows at this length")
    check.add_argument("--max-errors", type=int, default=20, help="malformed rows to list (default 20)")
    check.add_argument("--max-row-bytes", type=int, default=MAX_ROW_BYTES,
                       help=f"longer lines are reported as malformed, not read (default {MAX_ROW_BYTES})")
    check.set_defaults(func=run_check)

    convert = commands.add_parser("format-tool-alpaca", help="ToolAlpaca train_data.json -> conversations JSON lines")
    convert.add_argument("--path", required=True, help="ToolAlpaca data/train_data.json")
    convert.add_argument("--out", required=True, help="output JSON-lines file (written atomically)")
    convert.add_argument("--max-errors", type=int, default=20, help="skipped instances to list (default 20)")
    convert.set_defaults(func=run_format_tool_alpaca)


def run_check(args) -> int:
    from ..data import AdgenProcessor, ConversationProcessor, DataConfig, check_adgen_row, check_rows
    from ..data import conversation_turns

    config = DataConfig(format=args.adgen_format, max_source_length=args.max_source_length,
                        max_target_length=args.max_target_length, max_seq_length=args.max_seq_length)
    if args.format == "adgen":
        checked = check_rows(args.path, functools.partial(check_adgen_row, config=config), args.max_row_bytes)
    else:
        checked = check_rows(args.path, conversation_turns, args.max_row_bytes)
    _print_errors(checked.errors, args.max_errors)
    print(f"{args.path}: {len(checked.rows) + len(checked.errors)} rows, {len(checked.rows)} usable, "
          f"{len(checked.errors)} malformed")
    if args.tokenizer and checked.rows:
        from ..tokenization import ChatGLM3Tokenizer

        tokenizer = ChatGLM3Tokenizer.from_pretrained(args.tokenizer)
        if args.format == "adgen":
            processor = AdgenProcessor(tokenizer, config)
            limits = (f"{config.format} format, max_source_length={config.max_source_length}, "
                      f"max_target_length={config.max_target_length}")
        else:
            processor = ConversationProcessor(tokenizer, config)
            limits = f"max_seq_length={config.max_seq_length}"
        print(f"tokens ({limits}): {_token_report(processor, checked.rows)}")
    return 1 if checked.errors else 0


def run_format_tool_alpaca(args) -> int:
    from ..data import format_tool_alpaca

    report = format_tool_alpaca(args.path, args.out)
    _print_errors(report.skipped, args.max_errors)
    print(report.summary())
    print(f"wrote {report.converted} conversations to {args.out}")
    return 0


# ------------------------------------------------------------------ helpers
def _token_report(processor, rows: Sequence[dict]) -> str:
    counts: Dict[str, int] = {name: 0 for name in processor.stat_columns}
    lengths: List[int] = []
    for row in rows:
        example = processor.encode_row(row)
        lengths.append(len(example["input_ids"]))
        for name in counts:
            counts[name] += bool(example[name])
    flags = ", ".join(f"{name}: {count}" for name, count in counts.items())
    length = np.asarray(lengths)
    return (f"{flags}; row length min {length.min()}, mean {length.mean():.1f}, "
            f"p95 {int(np.percentile(length, 95))}, max {length.max()}")


def _print_errors(errors, limit: int) -> None:
    for error in errors[:max(limit, 0)]:
        print(error, file=sys.stderr)
    if len(errors) > limit:
        print(f"... and {len(errors) - limit} more", file=sys.stderr)
