"""One optimisation step: gradients (compiled), optional all-reduce, clipping, AdamW.

Split in two compiled functions so that the host can look at the gradient
norm between them: with fp16 loss scaling an overflowing step is skipped (and
the scale lowered) without a data-dependent branch inside a graph.

* ``gradients(batch, loss_scale)`` -> ``(loss, grads)`` with ``grads`` scaled;
  micro-batches of an accumulation window are summed;
* ``apply(grads, multiplier)`` multiplies the gradients by ``multiplier`` (unscale,
  average over micro-batches, clip) and runs the optimiser.

The other form, gradients, clipping and the update in one graph, is what
MindSpore's SEMI_AUTO_PARALLEL compiles: it lives with the parallel code
(:class:`~glm3_mindspore.parallel.fused_step.FusedTrainStep`).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..parallel.fused_step import BATCH_KEYS, FusedTrainDriver, FusedTrainStep, global_norm, scale_gradients
from ..runtime import device_target
from .optim import DynamicLossScaler

__all__ = ["BATCH_KEYS", "FusedTrainDriver", "FusedTrainStep", "TrainStep", "host_global_norm"]  # fused: old path


class _ScaledLoss(nn.Cell):
    """``loss * scale`` of a causal LM whose ``construct`` returns ``(loss, logits)``."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.model = model

    def construct(self, input_ids, position_ids, attention_mask, labels, scale):
        loss = self.model(input_ids, position_ids, attention_mask, labels)[0]
        return loss * scale, loss


_add = ops.MultitypeFuncGraph("add")


@_add.register("Tensor", "Tensor")
def _add_tensors(a, b):
    return a + b


class TrainStep:
    """Compiled gradient and update functions for ``model`` and ``optimizer``."""

    def __init__(self, model: nn.Cell, optimizer, compiled: bool = True,
                 grad_reducer: Optional[Callable] = None, max_grad_norm: Optional[float] = None,
                 loss_scaler: Optional[DynamicLossScaler] = None) -> None:
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.loss_scaler = loss_scaler
        self.grad_reducer = grad_reducer
        self.hyper_map = ops.HyperMap()
        loss_net = _ScaledLoss(model)
        self._value_and_grad = ms.value_and_grad(loss_net, None, optimizer.parameters, has_aux=True)
        jit = ms.jit if compiled else (lambda f: f)
        self._gradients = jit(self._gradients_impl)
        self._accumulate = jit(self._accumulate_impl)
        self._norm = jit(self._norm_impl)
        self._apply = jit(self._apply_impl)
        # on CPU a BLAS dot on the host beats MindSpore's reductions (docs/performance.md)
        self._norm_on_host = device_target() == "CPU"
        self._pending = None
        self._pending_count = 0

    # ---------------------------------------------------------------- graphs
    def _gradients_impl(self, input_ids, position_ids, attention_mask, labels, scale):
        (_, loss), grads = self._value_and_grad(input_ids, position_ids, attention_mask, labels, scale)
        return loss, grads

    def _accumulate_impl(self, total, grads):
        return self.hyper_map(_add, total, grads)

    def _norm_impl(self, grads):
        return global_norm(self.hyper_map, grads)

    def _apply_impl(self, grads, multiplier):
        self.optimizer(scale_gradients(self.hyper_map, multiplier, grads))
        return multiplier

    # ------------------------------------------------------------------ host
    def forward_backward(self, batch: Dict[str, np.ndarray]) -> float:
        """Gradients of one micro-batch, added to the pending window; returns its loss."""
        scale = self.loss_scaler.scale if self.loss_scaler else 1.0
        inputs = [Tensor(batch[k].astype(np.int32)) for k in BATCH_KEYS]
        loss, grads = self._gradients(*inputs, Tensor(scale, ms.float32))
        grads = ms.mutable(tuple(grads))  # a tensor tuple passed as a constant would recompile every call
        self._pending = grads if self._pending is None else ms.mutable(tuple(self._accumulate(self._pending, grads)))
        self._pending_count += 1
        return float(loss.asnumpy())

    def step(self) -> Tuple[float, bool]:
        """Update with the pending gradients; returns (gradient norm, whether applied)."""
        if self._pending is None:
            raise RuntimeError("step() called before forward_backward()")
        grads, count = self._pending, self._pending_count
        self._pending, self._pending_count = None, 0
        if self.grad_reducer is not None:
            grads = ms.mutable(tuple(self.grad_reducer(grads)))
        scale = self.loss_scaler.scale if self.loss_scaler else 1.0
        norm = (host_global_norm(grads) if self._norm_on_host else float(self._norm(grads).asnumpy())) / (scale * count)
        finite = bool(np.isfinite(norm))
        if self.loss_scaler is not None:
            self.loss_scaler.update(finite)
        if not finite:
            return norm, False
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = min(1.0, self.max_grad_norm / (norm + 1e-6))
        self._apply(grads, Tensor(clip / (scale * count), ms.float32))
        return norm, True


def host_global_norm(grads, chunk: int = 1 << 20) -> float:
    """L2 norm of all gradients from their host memory: float32 dot products of 1M-element
    chunks (BLAS, multi-threaded), summed in float64 (relative error ~1e-7)."""
    total = 0.0
    for grad in grads:
        flat = grad.asnumpy().reshape(-1)
        if flat.dtype != np.float32:
            flat = flat.astype(np.float32)
        for start in range(0, flat.size, chunk):
            part = flat[start:start + chunk]
            total += float(np.dot(part, part))
    return float(np.sqrt(total))
