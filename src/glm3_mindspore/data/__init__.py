"""Fine-tuning data: files -> validated rows -> ``datasets`` -> token ids -> padded batches.

* :mod:`.jsonl` reads JSON lines (or a JSON array), reporting bad lines and going on;
* :class:`AdgenProcessor` (``content`` -> ``summary``, ``chat`` or ``plain`` layout) and
  :class:`ConversationProcessor` (multi-turn rows with tools) are picklable
  callables for ``dataset.map(processor, batched=True)``;
* :func:`build_dataset` does all of it through ``datasets`` and counts what was cut or skipped;
* :class:`DataCollator` pads a batch (right for training, with labels -100);
  :class:`LengthBucketSampler` groups rows of similar length;
* :func:`convert_tool_alpaca` turns ToolAlpaca data into the conversation format.

Example::

    processor = AdgenProcessor(tokenizer, DataConfig(max_source_length=64, max_target_length=127))
    dataset, stats = build_dataset("AdvertiseGen/train.json", processor)
    batch = DataCollator()([dataset[i] for i in range(8)])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .adgen import AdgenProcessor, check_adgen_row
from .collator import DataCollator, LengthBucketSampler
from .config import DataConfig, DataError
from .conversations import (
    ConversationProcessor,
    Turn,
    conversation_turns,
    encode_turns,
    labels_from_loss_masks,
)
from .jsonl import MAX_ROW_BYTES, JsonRows, RowError, load_json_rows, read_json_rows
from .tool_alpaca import ConversionReport, convert_instance, convert_tool_alpaca, format_tool_alpaca

__all__ = [
    "AdgenProcessor", "check_adgen_row", "ConversationProcessor", "DataConfig", "DataError", "DataCollator",
    "LengthBucketSampler", "DataStats", "build_dataset", "check_rows", "load_json_rows", "read_json_rows",
    "RowError", "JsonRows", "Turn", "conversation_turns", "encode_turns", "labels_from_loss_masks",
    "ConversionReport", "convert_instance", "convert_tool_alpaca", "format_tool_alpaca",
]

logger = logging.getLogger(__name__)
Processor = Union[AdgenProcessor, ConversationProcessor]
MAX_LOGGED_ERRORS = 20


@dataclass
class DataStats:
    """What :func:`build_dataset` read, skipped and cut.

    ``counts`` maps each flag of the processor (``source_truncated``,
    ``target_truncated`` for ADGEN; ``truncated``, ``no_labels`` for
    conversations) to the number of rows that have it.
    """

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: List[RowError] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        flags = ", ".join(f"{name}: {count}" for name, count in self.counts.items())
        return (f"{self.source}: {self.rows_kept} rows processed, {len(self.skipped)} skipped as malformed"
                + (f"; {flags}" if flags else ""))


def check_rows(source: Union[str, "os.PathLike[str]", Iterable[Mapping[str, Any]]],
               check_row: Callable[[Mapping[str, Any]], Any], max_row_bytes: int = MAX_ROW_BYTES) -> JsonRows:
    """Read ``source`` (a file, or rows) and move rows that ``check_row`` rejects to ``errors``."""
    if isinstance(source, (str, os.PathLike)):
        read = read_json_rows(source, max_row_bytes)
    else:
        read = JsonRows("<rows>")
        for index, row in enumerate(source):
            read.add(f"item {index}", row)
    good = JsonRows(read.path, errors=list(read.errors))
    for row, where in zip(read.rows, read.where):
        try:
            check_row(row)
        except DataError as exc:
            good.error(where, str(exc))
        else:
            good.add(where, row)
    good.errors.sort(key=lambda error: error.position)
    return good


def build_dataset(
    source: Union[str, "os.PathLike[str]", Iterable[Mapping[str, Any]]],
    processor: Processor,
    num_proc: Optional[int] = None,
) -> Tuple[Any, DataStats]:
    """Processed ``datasets.Dataset`` of ``source`` (a JSON / JSON-lines file, or rows) and its stats.

    Malformed rows are skipped, logged with their line and key, and listed in
    ``stats.skipped``; truncation and the other flags are counted in
    ``stats.counts`` and logged (as a warning when any row is flagged). The
    flag columns are removed from the returned dataset. Raises
    :class:`DataError` if no row is usable.
    """
    datasets = _require_datasets()
    checked = check_rows(source, processor.check_row)
    stats = DataStats(checked.path, rows_read=len(checked.rows) + len(checked.errors), skipped=checked.errors)
    for error in stats.skipped[:MAX_LOGGED_ERRORS]:
        logger.warning("skipped %s", error)
    if len(stats.skipped) > MAX_LOGGED_ERRORS:
        logger.warning("... and %d more malformed rows", len(stats.skipped) - MAX_LOGGED_ERRORS)
    if not checked.rows:
        first = f"; first: {stats.skipped[0]}" if stats.skipped else ""
        raise DataError(f"{checked.path}: no usable rows ({len(stats.skipped)} malformed{first})")
    raw = datasets.Dataset.from_dict(processor.to_columns(checked.rows))
    dataset = raw.map(processor, batched=True, num_proc=num_proc, remove_columns=raw.column_names,
                      desc=f"tokenizing {os.path.basename(checked.path)}")
    stats.counts = {name: int(sum(dataset[name])) for name in processor.stat_columns}
    stats.rows_kept = len(dataset)
    # Cut rows are expected with short limits (ADGEN at 64/127), but never silent.
    logger.log(logging.WARNING if any(stats.counts.values()) else logging.INFO, "%s", stats.summary())
    return dataset.remove_columns(list(processor.stat_columns)), stats


def _require_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("build_dataset needs the 'datasets' package: pip install 'glm3-mindspore[data]'") from None
    return datasets
