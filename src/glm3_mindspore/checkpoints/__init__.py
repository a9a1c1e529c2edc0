"""Every on-disk format of weights: hub layout (safetensors, ``pytorch_model*.bin``), MindSpore ``.ckpt``, and the
per-rank slices and strategy files of sharded runs (:mod:`.distributed`).

Everything reads to and writes from ``(name, numpy array)`` pairs, one shard at a
time, so a model is never held twice in memory. Trainer checkpoints (model,
optimizer state, trainer state) are the trainer's: :mod:`glm3_mindspore.training.checkpointing`.
"""

from .errors import CheckpointError
from .hub_layout import iter_tensors, resolve_weight_files, tensor_shapes, write_weights

__all__ = ["CheckpointError", "iter_tensors", "resolve_weight_files", "tensor_shapes", "write_weights"]
