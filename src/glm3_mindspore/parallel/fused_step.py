"""The fused train step (gradients, clipping and the update in one graph) and the gradient arithmetic it shares.

:class:`FusedTrainStep` is what MindSpore's SEMI_AUTO_PARALLEL compiles:
``AutoParallel`` must wrap the whole step to insert the collectives of the
shard strategies and the pipeline schedule.
:class:`FusedTrainDriver` gives it the host interface of the trainer's own
:class:`~glm3_mindspore.training.train_step.TrainStep`, which uses
:func:`global_norm` and :func:`scale_gradients` from here as well.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

BATCH_KEYS = ("input_ids", "position_ids", "attention_mask", "labels")

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


def scale_gradients(hyper_map, multiplier, grads):
    """Every gradient times ``multiplier`` (a scalar tensor), inside a graph."""
    return hyper_map(ops.partial(_scale, multiplier), grads)


def global_norm(hyper_map, grads):
    """L2 norm of all gradients, in fp32, inside a graph (``hyper_map``: an ``ops.HyperMap``); a scalar.

    Under SEMI_AUTO_PARALLEL it is the norm of the whole, unsliced gradients
    on every rank (see ``_norm_term``), so all ranks clip alike and agree on
    skipping an overflowing fp16 step."""
    return ops.sqrt(ops.addn(hyper_map(_square_sum, grads))).reshape(())


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
            self.optimizer(scale_gradients(self.hyper_map, multiplier, grads))
        return loss, norm


class FusedTrainDriver:
    """The :class:`TrainStep` interface over a compiled :class:`FusedTrainStep`.

    ``compiled`` is what runs the step: ``AutoParallel(step)`` on a cluster, or
    ``mindspore.jit(step.construct)`` in one process. One micro-batch per
    update (pipeline micro-batches live inside the graph); with a
    ``loss_scaler`` the scale goes into the graph and follows its overflows.
    """

    def __init__(self, step: FusedTrainStep, compiled: Callable,
                 loss_scaler=None) -> None:
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


__all__ = ["BATCH_KEYS", "FusedTrainDriver", "FusedTrainStep", "global_norm", "scale_gradients"]
