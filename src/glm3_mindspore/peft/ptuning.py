"""P-Tuning v2 as upstream ChatGLM does it: train only ``transformer.prefix_encoder``.

The model builds the prefix encoder itself when ``config.pre_seq_len`` is set
(``from_pretrained(base, pre_seq_len=128, prefix_projection=False)``); this
module freezes the rest and saves / loads the prefix alone, in upstream's
layout: a weight file holding only ``transformer.prefix_encoder.*`` keys beside
a ``config.json`` carrying ``pre_seq_len`` / ``prefix_projection``. We write
``prefix_encoder.safetensors``; ``safe_serialization=False`` writes upstream's
``pytorch_model.bin`` (``torch.load``-able, read by THUDM's ``ptuning/main.py``).
Loading also takes upstream's prefix-only ``pytorch_model.bin`` and full model
checkpoints, keeping only the prefix keys, like upstream's loader::

    {k[len("transformer.prefix_encoder."):]: v for k, v in state.items() if k.startswith("transformer.prefix_encoder.")}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from mindspore import nn

from ..configuration import CONFIG_NAME
from ..fileio import read_json_object
from ..hub import HubOptions, is_local, resolve_file
from ..modeling.chatglm3 import PrefixEncoder
from .config import AdapterError
from .weights import drop_generation_cache, freeze_all_but, load_exact, named_parameters

PREFIX_KEY = "transformer.prefix_encoder."
PREFIX_WEIGHTS_NAME = "prefix_encoder.safetensors"
UPSTREAM_PREFIX_WEIGHTS_NAME = "pytorch_model.bin"


def prefix_encoder_path(model: nn.Cell) -> str:
    """Path of the model's :class:`PrefixEncoder` (``transformer.prefix_encoder``)."""
    for path, cell in model.cells_and_names():
        if isinstance(cell, PrefixEncoder):
            return path
    raise AdapterError(
        f"{type(model).__name__} has no P-Tuning v2 prefix encoder: build the model with a prefix, "
        "e.g. from_pretrained(base, pre_seq_len=128, prefix_projection=False)")


def _in_prefix(model: nn.Cell):
    start = prefix_encoder_path(model) + "."
    return lambda name: name.startswith(start)


def setup_ptuning(model: nn.Cell) -> nn.Cell:
    """Freeze everything except the prefix encoder (upstream freezes the base the same way)."""
    freeze_all_but(model, _in_prefix(model))
    return model


def prefix_state_dict(model: nn.Cell, values: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The prefix encoder's tensors under upstream's names (``transformer.prefix_encoder.embedding.weight``...),
    from the parameters or from ``values`` (checkpoint name -> array) when given."""
    params = dict(named_parameters(model, _in_prefix(model)))
    if values is None:
        return {key: param.asnumpy() for key, param in params.items()}
    missing = [key for key in params if key not in values]
    if missing:
        raise ValueError(f"the given values lack the prefix encoder tensors {missing}")
    return {key: np.asarray(values[key]) for key in params}


def save_prefix(model: nn.Cell, directory: Union[str, os.PathLike], safe_serialization: bool = True,
                state_dict: Optional[Mapping[str, np.ndarray]] = None) -> Path:
    """Write the prefix weights and the model's ``config.json`` (with ``pre_seq_len``) into ``directory``."""
    from ..checkpoints.safetensors_io import save_safetensors
    from ..checkpoints.torch_pickle import save_torch_file

    tensors = prefix_state_dict(model, state_dict)
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        save_safetensors(folder / PREFIX_WEIGHTS_NAME, tensors, {"format": "pt"})
    else:
        save_torch_file(folder / UPSTREAM_PREFIX_WEIGHTS_NAME, tensors)
    model.config.save_pretrained(folder)
    return folder


def read_prefix_config(source: Union[str, os.PathLike], options: HubOptions = HubOptions()) -> Optional[Tuple[int, bool]]:
    """``(pre_seq_len, prefix_projection)`` from the ``config.json`` beside a prefix; ``None`` without one."""
    where = Path(source).expanduser()
    folder = where.parent if where.is_file() else source
    config_file = resolve_file(folder, CONFIG_NAME, options, required=False)
    if config_file is None:
        return None
    data = read_json_object(config_file, AdapterError)
    if not data.get("pre_seq_len"):
        return None
    return int(data["pre_seq_len"]), bool(data.get("prefix_projection", False))


def prefix_weight_files(source: Union[str, os.PathLike], options: HubOptions = HubOptions()) -> List[Path]:
    """The file(s) holding a prefix: one given file, ``prefix_encoder.safetensors``, or the folder's weights."""
    from ..checkpoints import resolve_weight_files

    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    ours = resolve_file(source, PREFIX_WEIGHTS_NAME, options, required=False)
    if ours is not None:
        return [ours]
    try:
        return resolve_weight_files(source, options)
    except FileNotFoundError:
        where = str(path) if is_local(source) else f"hub repository {source!r}"
        raise AdapterError(f"no P-Tuning v2 prefix in {where}: expected {PREFIX_WEIGHTS_NAME} or "
                           f"{UPSTREAM_PREFIX_WEIGHTS_NAME} (upstream's prefix-only checkpoint)") from None


def load_prefix(model: nn.Cell, source: Union[str, os.PathLike], options: HubOptions = HubOptions()) -> List[str]:
    """Load a saved prefix into ``model``'s prefix encoder; returns the keys loaded.

    ``source`` is a folder, hub repo id or single weight file. Only
    ``transformer.prefix_encoder.*`` keys are read; they must match the
    encoder exactly (``pre_seq_len`` and ``prefix_projection`` as trained), else
    :class:`AdapterError` names the file and keys and nothing is written.
    """
    from ..checkpoints import iter_tensors

    in_prefix = _in_prefix(model)
    trained = read_prefix_config(source, options)
    config = model.config
    if trained is not None and trained != (config.pre_seq_len, bool(config.prefix_projection)):
        raise AdapterError(
            f"{source}: the prefix was trained with pre_seq_len={trained[0]}, prefix_projection={trained[1]}; "
            f"the model has pre_seq_len={config.pre_seq_len}, prefix_projection={config.prefix_projection} "
            f"(build it with from_pretrained(base, pre_seq_len={trained[0]}, prefix_projection={trained[1]}))")
    params = dict(named_parameters(model, in_prefix))
    files = prefix_weight_files(source, options)
    where = str(files[0]) if len(files) == 1 else f"{source} ({len(files)} files)"
    loaded = load_exact(params, iter_tensors(files), where, "P-Tuning v2 prefix",
                        ignore=lambda key: not key.startswith(PREFIX_KEY))
    # A KV cache kept from before (the model's decoding engines, a caller's past_key_values) holds the old
    # prefix's keys and values: drop the model's engines so the next generate computes the new ones.
    drop_generation_cache(model)
    return loaded
