"""What LoRA and P-Tuning share: freezing, checkpoint names, and exact, in-place loading of a few tensors.

Values are written into parameters in place (``Parameter.copy_``), not by
``Parameter.set_data``: a graph compiled earlier (the generation engine's
prefill/decode steps, a jitted train step) keeps reading the parameter's
original storage, so only an in-place write reaches it.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from mindspore import Parameter, nn

from ..parameter_io import write_parameter
from .config import AdapterError

_LIST_LIMIT = 6


def checkpoint_name(model: nn.Cell, name: str) -> str:
    """Hub name of a parameter path (``transformer.`` prefixed for a bare ``ChatGLM3Model``)."""
    to_checkpoint = getattr(model, "checkpoint_name", None)
    return to_checkpoint(name) if callable(to_checkpoint) else name


def named_parameters(model: nn.Cell, keep: Callable[[str], bool]) -> Iterator[Tuple[str, Parameter]]:
    """``(checkpoint name, parameter)`` for the parameters whose path ``keep`` accepts."""
    for name, param in model.parameters_and_names():
        if keep(name):
            yield checkpoint_name(model, name), param


def freeze_all_but(model: nn.Cell, trainable: Callable[[str], bool]) -> List[str]:
    """Set ``requires_grad`` so that exactly the parameters ``trainable`` accepts train; their paths."""
    kept = []
    for name, param in model.parameters_and_names():
        param.requires_grad = bool(trainable(name))
        if param.requires_grad:
            kept.append(name)
    return kept


def drop_generation_cache(model: nn.Cell) -> None:
    """Forget the model's decoding engines (their compiled graphs and KV buffers); rebuilt on demand."""
    clear = getattr(model, "clear_generation_cache", None)
    if callable(clear):
        clear()


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


def load_exact(
    params: Mapping[str, Parameter],
    tensors: Iterable[Tuple[str, np.ndarray]],
    source: str,
    what: str,
    ignore: Optional[Callable[[str], bool]] = None,
) -> List[str]:
    """Load ``tensors`` into ``params`` (both keyed by checkpoint name) only if every key fits.

    Any missing key, unexpected key or shape mismatch raises one
    :class:`AdapterError` naming ``source`` and the keys; nothing is written then.
    Keys ``ignore`` accepts are skipped. Returns the keys loaded.
    """
    arrays: Dict[str, np.ndarray] = {}
    unexpected: List[str] = []
    mismatched: List[str] = []
    seen = set()
    for key, array in tensors:
        if ignore is not None and ignore(key):
            continue
        seen.add(key)
        param = params.get(key)
        if param is None:
            unexpected.append(key)
        elif tuple(array.shape) != tuple(param.shape):
            mismatched.append(f"{key} {tuple(array.shape)} in the file vs {tuple(param.shape)} in the model")
        else:
            arrays[key] = array
    missing = [key for key in params if key not in seen]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + _listing(mismatched))
    if missing:
        problems.append("missing keys: " + _listing(missing))
    if unexpected:
        problems.append("unexpected keys: " + _listing(unexpected))
    if problems:
        raise AdapterError(f"{source}: {what} does not fit the model: " + "; ".join(problems))
    for key, array in arrays.items():
        write_parameter(params[key], array)
    return list(arrays)
