"""Moved to :mod:`glm3_mindspore.checkpoints.distributed` (one package for every on-disk format); kept so old
imports work."""

from ..checkpoints.distributed import (STRATEGY_FILE, SliceLayout, layout_entries, merge_tensor, merged_strategy_file,
                                       merged_tensors, rank_checkpoint_files, read_strategy, split_checkpoint,
                                       strategy_is_complete, strategy_message, transform_with_mindspore,
                                       write_merged_strategy, write_strategy_files)

__all__ = [
    "STRATEGY_FILE", "SliceLayout", "layout_entries", "merge_tensor", "merged_strategy_file", "merged_tensors",
    "rank_checkpoint_files", "read_strategy", "split_checkpoint", "strategy_is_complete", "strategy_message",
    "transform_with_mindspore", "write_merged_strategy", "write_strategy_files",
]
