"""Checkpoint formats: hub layout (safetensors, ``pytorch_model*.bin``), MindSpore ``.ckpt``.

Everything reads to and writes from ``(name, numpy array)`` pairs, one shard at a
time, so a model is never held twice in memory.
"""

from .errors import CheckpointError
from .hub_layout import iter_tensors, resolve_weight_files, tensor_shapes, write_weights

__all__ = ["CheckpointError", "iter_tensors", "resolve_weight_files", "tensor_shapes", "write_weights"]
