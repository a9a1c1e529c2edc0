"""Moving values in and out of MindSpore parameters, safely for compiled graphs, and their numpy dtypes."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor


def numpy_bfloat16() -> np.dtype:
    """MindSpore's numpy ``bfloat16`` (numpy has none of its own): how every bfloat16 tensor is held on the host,
    read from checkpoints and written to them."""
    from mindspore.common.np_dtype import bfloat16

    return np.dtype(bfloat16)


def numpy_dtype(dtype):
    """The numpy scalar type of a MindSpore dtype."""
    if dtype == ms.bfloat16:
        return numpy_bfloat16().type
    return {ms.float32: np.float32, ms.float16: np.float16, ms.int32: np.int32, ms.int64: np.int64,
            ms.int8: np.int8, ms.uint8: np.uint8, ms.bool_: np.bool_}[dtype]


def write_parameter(param, value) -> None:
    """Put ``value`` (numpy or Tensor, cast to the parameter's dtype) into ``param``.

    ``Parameter.set_data`` swaps the parameter's storage, and graphs compiled
    before (and even after) keep reading the old one; an in-place ``copy_``
    reaches them. Parameters not materialised yet (lazy init) take ``set_data``.
    """
    if isinstance(value, Tensor):
        value = value.asnumpy()
    tensor = Tensor.from_numpy(np.array(value, dtype=numpy_dtype(param.dtype), order="C", copy=True))
    if getattr(param, "has_init", False):
        param.set_data(tensor)
    else:
        param.copy_(tensor)  # unlike ops.assign, also for bfloat16 on CPU
