"""Batching: padding to the longest row (or a fixed length), and length bucketing.

Training pads on the right, as upstream fine-tuning does: pad id 0, attention
0, label -100, and position ids ``0 .. L-1`` over the whole row (pads
included; they are masked anyway). Generation prompts pad on the left, like
the tokenizer: pads get position 0 and real tokens count from 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..labels import IGNORE_INDEX
from .config import DataError

PADDED_KEYS = ("input_ids", "labels")


@dataclass
class DataCollator:
    """Turn a list of processed rows into numpy arrays of one length.

    Returns ``input_ids``, ``attention_mask``, ``position_ids`` and, when the
    rows have them, ``labels``. Any other key (e.g. ``reference``) is passed
    through as a list. ``pad_to`` fixes the length (a row longer than it is an
    error: truncate in the processor); otherwise rows are padded to the
    longest, rounded up to ``pad_to_multiple_of``.
    """

    pad_id: int = 0
    label_pad: int = IGNORE_INDEX
    pad_to: Optional[int] = None
    padding_side: str = "right"
    pad_to_multiple_of: Optional[int] = None
    dtype: Any = np.int64

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise DataError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        if not features:
            raise DataError("cannot collate an empty batch")
        rows = [_ints(f["input_ids"]) for f in features]
        labels = [_ints(f["labels"]) for f in features] if "labels" in features[0] else None
        length = self._length(rows)
        batch: Dict[str, List[List[int]]] = {"input_ids": [], "attention_mask": [], "position_ids": []}
        if labels is not None:
            batch["labels"] = []
        for index, row in enumerate(rows):
            n_pad = length - len(row)
            batch["input_ids"].append(self._pad(row, [self.pad_id] * n_pad))
            batch["attention_mask"].append(self._pad([1] * len(row), [0] * n_pad))
            if self.padding_side == "right":
                batch["position_ids"].append(list(range(length)))
            else:
                batch["position_ids"].append([0] * n_pad + list(range(len(row))))
            if labels is not None:
                if len(labels[index]) != len(row):
                    raise DataError(f"row {index}: {len(labels[index])} labels for {len(row)} input ids")
                batch["labels"].append(self._pad(labels[index], [self.label_pad] * n_pad))
        out: Dict[str, Any] = {k: np.asarray(v, dtype=self.dtype) for k, v in batch.items()}
        for key in features[0]:
            if key not in PADDED_KEYS:
                out[key] = [f[key] for f in features]
        return out

    def _length(self, rows: List[List[int]]) -> int:
        longest = max(len(r) for r in rows)
        if self.pad_to is not None:
            if longest > self.pad_to:
                raise DataError(f"a row has {longest} tokens, more than pad_to={self.pad_to}; "
                                "truncate in the processor (max_source/target_length, max_seq_length)")
            return self.pad_to
        multiple = self.pad_to_multiple_of
        return -(-longest // multiple) * multiple if multiple else longest

    def _pad(self, values: List[int], pads: List[int]) -> List[int]:
        return values + pads if self.padding_side == "right" else pads + values


class LengthBucketSampler:
    """Batches of row indices with similar lengths, so that dynamic padding wastes little.

    Each epoch the rows are shuffled, cut into buckets of
    ``batch_size * batches_per_bucket`` rows, each bucket is sorted by length and
    cut into batches, and the batches are shuffled. Deterministic for a given
    ``seed`` and :meth:`set_epoch`. ``shuffle=False`` keeps file order within
    the bucketing (useful for evaluation).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, batches_per_bucket: int = 50,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size <= 0 or batches_per_bucket <= 0:
            raise DataError("batch_size and batches_per_bucket must be positive")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.bucket_size = batch_size * batches_per_bucket
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        batches: List[List[int]] = []
        for start in range(0, len(order), self.bucket_size):
            bucket = order[start:start + self.bucket_size]
            bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
            batches.extend(bucket[i:i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)

    def __len__(self) -> int:
        # Buckets hold whole batches, so only the very last batch can be short.
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


def _ints(values: Any) -> List[int]:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64).tolist()
    return [int(v) for v in values]
