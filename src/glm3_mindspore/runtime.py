"""Host set-up for MindSpore and the one backend switch the model code consults.

On CPU, MindSpore's asynchronous dispatch makes the many small ops of a
transformer several times slower and reports errors at the wrong op, so
importing this package switches CPU execution to synchronous launch. Nothing else is changed:
no environment variables, no global dtype, no execution mode.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import mindspore as ms

_configured = False


def device_target() -> str:
    """The device MindSpore runs on: ``"CPU"``, ``"GPU"`` or ``"Ascend"``."""
    return ms.get_context("device_target")


def is_ascend() -> bool:
    """True on Ascend, where fused kernels (flash attention, rms_norm, int8 weight matmul) may replace the portable ops."""
    return device_target() == "Ascend"


def configure_host() -> None:
    """Make MindSpore behave well on this host; called once at import, idempotent."""
    global _configured
    if _configured:
        return
    if device_target() == "CPU":
        ms.runtime.launch_blocking()
    _configured = True


@functools.lru_cache(maxsize=None)
def supports_bf16_compute() -> bool:
    """MindSpore's CPU backend has no bfloat16 matmul or gather kernels; Ascend and GPU have them."""
    return device_target() != "CPU"


@contextlib.contextmanager
def op_by_op() -> Iterator[None]:
    """Run model calls op by op (PyNative) inside the block, whatever mode the caller set.

    MindFormers-style scripts set ``GRAPH_MODE`` globally, and in it every
    ``Cell`` call compiles a graph, which keeps all its intermediates alive for
    its whole run. Code that must free them as it goes (prompts) runs here;
    ``mindspore.jit`` functions stay compiled either way.
    """
    mode = ms.get_context("mode")
    if mode == ms.PYNATIVE_MODE:
        yield
        return
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=mode)
