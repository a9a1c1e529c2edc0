"""One optimisation step: gradients (compiled), optional all-reduce, clipping, AdamW.

Split in two compiled functions so that the host can look at the gradient
norm between them: with fp16 loss scaling an overflowing step is skipped (and
the scale lowered) without a data-dependent branch inside a graph.

* ``gradients(batch, loss_scale)`` -> ``(loss, grads)`` with ``grads`` scaled;
  micro-batches of an accumulation window are summed;
* ``apply(grads, multiplier)`` multiplies the gradients by ``multiplier`` (unscale,
  average over micro-batches, clip) and runs the optimiser.

:class:`FusedTrainStep` is the other form: gradients, clipping and the update in
one graph, which is what MindSpore's SEMI_AUTO_PARALLEL compiles (``AutoParallel``
must wrap the whole step to insert the collectives of the shard strategies and
the pipeline schedule). :class:`FusedTrainDriver` gives it the host interface
of :class:`TrainStep`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..runtime import device_target
from .optim import DynamicLossScaler

BATCH_KEYS = ("input_ids", "position_ids", "attention_mask", "labels")


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


_scale = ops.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor")
def _scale_tensor(multiplier, grad):
    return grad * multiplier.astype(grad.dtype)


_square_sum = ops.MultitypeFuncGraph("square_sum")
_reduce_sum = ops.ReduceSum(keep_dims=False)
# MindSpore's parallel compiler completes a norm of sliced gradients only when
# each square sum reaches the Sqrt through an ExpandDims marked ``grad_scale``
# (the pattern of ``ops.clip_by_global_norm``): there it divides each term by
# the number of devices holding the same slice and all-reduces the sum within
# and between pipeline stages. Elsewhere the mark does nothing.
_norm_term = ops.ExpandDims().add_prim_attr("grad_scale", True)


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    return _norm_term(_reduce_sum(ops.square(ops.cast(grad, ms.float32)), ()), 0)


def global_norm(hyper_map, grads):
    """L2 norm of all gradients, in fp32, inside a graph (``hyper_map``: an ``ops.HyperMap``); a scalar.

    Under SEMI_AUTO_PARALLEL it is the norm of the whole, unsliced gradients
    on every rank (see ``_norm_term``), so all ranks clip alike and agree on
    skipping an overflowing fp16 step."""
    return ops.sqrt(ops.addn(hyper_map(_square_sum, grads))).reshape(())


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
        self._norm_on_host = device_target() == "CPU"  # CPU reductions are ~20x slower than a BLAS dot
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
        grads = self.hyper_map(ops.partial(_scale, multiplier), grads)
        self.optimizer(grads)
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


class _Unreduced(nn.Cell):
    """The gradients as they are (no pipeline accumulation)."""

    def construct(self, grads):
        return grads


class FusedTrainStep(nn.Cell):
    """``(input_ids, position_ids, attention_mask, labels, loss_scale) -> (loss, grad norm)``, updating the weights.

    ``network`` maps the batch to the loss (the causal LM's loss cell, or its
    ``Pipeline`` of micro-batches); the backward pass starts from ``loss_scale``
    (1 in fp32/bf16, the dynamic fp16 scale otherwise), as MindSpore's
    loss-scaling train cells do. ``grad_reducer`` is applied to the gradients
    before the norm (``PipelineGradReducer`` under pipeline parallelism). The
    norm is taken over the whole gradients, unscaled: under SEMI_AUTO_PARALLEL
    :func:`global_norm` has the compiler sum it over slices and stages. The
    update is skipped when the norm is not finite (an fp16 overflow); else the
    gradients are unscaled and clipped by ``min(1, max_grad_norm / (norm + 1e-6))``
    as :class:`TrainStep` does.
    """

    def __init__(self, network: nn.Cell, optimizer, max_grad_norm: Optional[float] = None,
                 grad_reducer: Optional[nn.Cell] = None) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.optimizer = optimizer
        self.weights = ms.ParameterTuple(optimizer.parameters)
        self.grad_reducer = grad_reducer if grad_reducer is not None else _Unreduced()
        self.clip = max_grad_norm is not None
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm is not None else 1.0
        self.hyper_map = ops.HyperMap()
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, input_ids, position_ids, attention_mask, labels, loss_scale):
        loss = self.network(input_ids, position_ids, attention_mask, labels)
        sens = ops.fill(loss.dtype, loss.shape, loss_scale)
        grads = self.grad(self.network, self.weights)(input_ids, position_ids, attention_mask, labels, sens)
        grads = self.grad_reducer(grads)
        norm = global_norm(self.hyper_map, grads) / loss_scale
        multiplier = 1.0 / loss_scale
        if self.clip:
            multiplier = ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0) / loss_scale
        if ops.isfinite(norm):
            self.optimizer(self.hyper_map(ops.partial(_scale, multiplier), grads))
        return loss, norm


class FusedTrainDriver:
    """The :class:`TrainStep` interface over a compiled :class:`FusedTrainStep`.

    ``compiled`` is what runs the step: ``AutoParallel(step)`` on a cluster, or
    ``mindspore.jit(step.construct)`` in one process. One micro-batch per
    update (pipeline micro-batches live inside the graph); with a
    ``loss_scaler`` the scale goes into the graph and follows its overflows.
    """

    def __init__(self, step: FusedTrainStep, compiled: Callable,
                 loss_scaler: Optional[DynamicLossScaler] = None) -> None:
        self.cell = step
        self.optimizer = step.optimizer
        self.loss_scaler = loss_scaler
        self._compiled = compiled
        self._norm: Optional[float] = None
        self._after_compile: List[Callable[[], None]] = []

    def after_compile(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the step is compiled, before its first update (under SEMI_AUTO_PARALLEL the
        parameters take their sliced shapes at compile time, so slices are loaded then)."""
        self._after_compile.append(action)

    def forward_backward(self, batch: Dict[str, np.ndarray]) -> float:
        """Runs the whole step (the learning rate must be set before); returns the loss."""
        if self._norm is not None:
            raise RuntimeError("a fused train step updates on every batch: call step() after each forward_backward()")
        scale = self.loss_scaler.scale if self.loss_scaler else 1.0
        inputs = [Tensor(batch[k].astype(np.int32)) for k in BATCH_KEYS] + [Tensor(scale, ms.float32)]
        if self._after_compile:
            compile_only = getattr(self._compiled, "compile", None)
            if compile_only is not None:
                compile_only(*inputs)
            while self._after_compile:
                self._after_compile.pop(0)()
        loss, norm = self._compiled(*inputs)
        self._norm = float(norm.asnumpy())
        return float(loss.asnumpy())

    def step(self) -> Tuple[float, bool]:
        """The step already ran: its gradient norm, and whether it updated (no fp16 overflow)."""
        if self._norm is None:
            raise RuntimeError("step() called before forward_backward()")
        norm, self._norm = self._norm, None
        finite = bool(np.isfinite(norm))
        if self.loss_scaler is not None:
            self.loss_scaler.update(finite)
        return norm, finite
