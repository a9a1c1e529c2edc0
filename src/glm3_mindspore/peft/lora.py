"""LoRA for ChatGLM3: ``y = x W^T + b + scaling * dropout(x) A^T B^T`` on chosen ``Linear`` layers.

Each targeted :class:`~glm3_mindspore.modeling.layers.Linear` is replaced in
place by a :class:`LoraLinear` that keeps the base ``weight`` / ``bias``
parameters themselves (same objects, same names, so base checkpoints still load
name for name) and adds ``lora_A.weight`` ``[r, in]`` and ``lora_B.weight``
``[out, r]``. Adapters are saved and loaded in PEFT's layout
(``adapter_config.json`` + ``adapter_model.safetensors`` with keys like
``base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight``).

Merging adds ``scaling * B @ A`` to the base weight and sets the layer's
``lora_scaling`` parameter to 0; unmerging undoes both. Both are in-place
writes to parameters, so graphs compiled before (generation, a jitted train
step) stay valid and never apply the update twice. Changing which layers carry
LoRA (``get_peft_model``, ``merge_and_unload``) changes the network itself:
those functions drop the model's compiled generation graphs, and any other
compiled step must be rebuilt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import HeUniform, Normal, Zero, initializer

from ..hub import HubOptions, resolve_file
from ..modeling.layers import Linear
from ..modeling.pretrained import uninitialized_parameters
from .config import (
    ADAPTER_CONFIG_NAME, ADAPTER_TORCH_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, AdapterError, LoraConfig,
)
from .weights import checkpoint_name, drop_generation_cache, freeze_all_but, load_exact, write_parameter

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped model
_ADAPTER_NAME_IN_KEY = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")  # "...lora_A.default.weight"


class LoraLinear(Linear):
    """A :class:`Linear` plus a low-rank update, owning the base layer's own parameters.

    ``lora_scaling`` is a non-trainable scalar parameter (``scaling`` while the
    update is separate, 0 once merged into ``weight``), read by compiled graphs
    at run time instead of being baked into them as a constant.
    """

    def __init__(
        self,
        base: Linear,
        r: int,
        scaling: float,
        dropout: float = 0.0,
        init_lora_weights: Union[bool, str] = True,
        adapter_dtype=ms.float32,
    ) -> None:
        with uninitialized_parameters():  # placeholders, replaced by the base layer's parameters below
            super().__init__(base.in_features, base.out_features, bias=base.bias is not None, dtype=base.weight.dtype)
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        self.r = r
        self.scaling = float(scaling)
        self.merged = False
        with uninitialized_parameters():  # values come from _initial_adapter_weights
            self.lora_A = Linear(base.in_features, r, bias=False, dtype=adapter_dtype)
            self.lora_B = Linear(r, base.out_features, bias=False, dtype=adapter_dtype)
        init_a, init_b = _initial_adapter_weights(init_lora_weights, r, base.in_features, base.out_features)
        self.lora_A.weight.set_data(initializer(init_a, self.lora_A.weight.shape, adapter_dtype).init_data())
        self.lora_B.weight.set_data(initializer(init_b, self.lora_B.weight.shape, adapter_dtype).init_data())
        self.lora_scaling = Parameter(Tensor(self.scaling, ms.float32), name="lora_scaling", requires_grad=False)
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else None

    def construct(self, x: Tensor) -> Tensor:
        result = super().construct(x)
        hidden = x if self.lora_dropout is None else self.lora_dropout(x)
        update = self.lora_B(self.lora_A(hidden))  # each casts its weight to the activation dtype
        return result + update * self.lora_scaling.astype(result.dtype)

    def name_parameters(self, path: str) -> None:
        """Give the adapter parameters unique full names (optimizers key their state by ``param.name``)."""
        self.lora_A.weight.name = f"{path}.lora_A.weight"
        self.lora_B.weight.name = f"{path}.lora_B.weight"
        self.lora_scaling.name = f"{path}.lora_scaling"

    # ------------------------------------------------------------ merging
    def delta_weight(self) -> np.ndarray:
        """``scaling * B @ A`` in float32, shaped like ``weight``."""
        a = self.lora_A.weight.asnumpy().astype(np.float32)
        b = self.lora_B.weight.asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (b @ a)

    def merge(self) -> None:
        if self.merged:
            return
        write_parameter(self.weight, self.weight.asnumpy().astype(np.float32) + self.delta_weight())
        write_parameter(self.lora_scaling, np.float32(0))
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        write_parameter(self.weight, self.weight.asnumpy().astype(np.float32) - self.delta_weight())
        write_parameter(self.lora_scaling, np.float32(self.scaling))
        self.merged = False

    def set_scaling(self, scaling: float) -> None:
        if self.merged:
            raise AdapterError("cannot change the scaling of a merged LoRA layer; unmerge it first")
        self.scaling = float(scaling)
        write_parameter(self.lora_scaling, np.float32(scaling))

    def to_linear(self) -> Linear:
        """A plain :class:`Linear` holding this layer's base ``weight`` / ``bias`` parameters."""
        with uninitialized_parameters():
            linear = Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=self.weight.dtype)
        linear.weight = self.weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extend_repr(self) -> str:
        return f"{super().extend_repr()}, r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def _initial_adapter_weights(init: Union[bool, str], r: int, in_features: int, out_features: int):
    """PEFT's initialisations: A kaiming-uniform (a=sqrt(5)) and B zero, so the update starts at 0.

    ``False`` leaves B at torch ``nn.Linear``'s default too (the update is then
    non-zero: for tests); ``"gaussian"`` draws A from N(0, 1/r).
    """
    kaiming = HeUniform(negative_slope=math.sqrt(5))  # torch's nn.init.kaiming_uniform_(a=sqrt(5))
    if init is False:
        return kaiming, HeUniform(negative_slope=math.sqrt(5))
    if init == "gaussian":
        return Normal(1.0 / r), Zero()
    return kaiming, Zero()


# --------------------------------------------------------------------------- model-level API
def lora_layers(model: nn.Cell) -> List[Tuple[str, LoraLinear]]:
    """``(path, layer)`` of every LoRA layer, in network order."""
    return [(path, cell) for path, cell in model.cells_and_names() if isinstance(cell, LoraLinear)]


def _replace_child(root: nn.Cell, path: str, new: nn.Cell) -> None:
    """Put ``new`` at ``path`` without renaming any parameter (unlike attribute assignment)."""
    parent_path, _, name = path.rpartition(".")
    parent = dict(root.cells_and_names())[parent_path] if parent_path else root
    parent.insert_child_to_cell(name, new)


def get_peft_model(model: nn.Cell, config: Optional[LoraConfig] = None) -> nn.Cell:
    """Add LoRA to ``model`` in place (and return it): targeted layers wrapped, base frozen.

    Afterwards ``model.trainable_params()`` is exactly the adapter parameters
    (plus biases for ``bias="all"`` / ``"lora_only"``; nothing with
    ``inference_mode``), and ``model.peft_config`` is ``config``.
    """
    config = config or LoraConfig()
    config.check_initialisation()
    refuse_quantized(model, "LoRA")
    if lora_layers(model):
        raise AdapterError(f"{type(model).__name__} already has LoRA layers; one adapter per model is supported")
    linears = [(path, cell) for path, cell in model.cells_and_names() if isinstance(cell, Linear)]
    targets = [(path, cell) for path, cell in linears if config.matches(path)]
    if not targets:
        names = sorted({path.rsplit(".", 1)[-1] for path, _ in linears})
        raise AdapterError(f"target_modules {config.target_modules!r} matched no Linear layer of "
                           f"{type(model).__name__}; its Linear layers are named {', '.join(names)}")
    for path, base in targets:
        layer = LoraLinear(base, config.r, config.scaling, config.lora_dropout, config.init_lora_weights)
        layer.set_train(model.training)
        _replace_child(model, path, layer)
        layer.name_parameters(path)
    if config.base_model_name_or_path is None:
        config = dataclasses.replace(config, base_model_name_or_path=_base_name(model))
    model.peft_config = config
    if config.inference_mode:
        freeze_all_but(model, lambda name: False)
    else:
        mark_only_lora_as_trainable(model, config.bias)
    drop_generation_cache(model)
    logger.info("LoRA on %d layers: %s", len(targets), trainable_summary(model))
    return model


def refuse_quantized(model: nn.Cell, what: str) -> None:
    """LoRA layers wrap float weights: a quantized base has none to train, merge or add to."""
    quantization = getattr(getattr(model, "config", None), "quantization", None)
    if quantization is not None:
        raise AdapterError(f"{what} on a quantized model ({quantization.bits}-bit weights) is not supported: "
                           "load the float checkpoint, train or merge there, then quantize the result")


def _base_name(model: nn.Cell) -> Optional[str]:
    """The base model's hub name as its ``config.json`` records it (Hugging Face's ``_name_or_path`` key)."""
    config = getattr(model, "config", None)
    name = config.to_dict().get("_name_or_path") if config is not None else None
    return name if isinstance(name, str) else None


def _adapter_paths(model: nn.Cell, bias: str = "none") -> List[str]:
    """Parameter paths an adapter consists of: every ``lora_A``/``lora_B`` weight, and biases per ``bias``."""
    paths = []
    for path, layer in lora_layers(model):
        paths += [f"{path}.lora_A.weight", f"{path}.lora_B.weight"]
        if bias == "lora_only" and layer.bias is not None:
            paths.append(f"{path}.bias")
    if bias == "all":
        paths += [name for name, _ in model.parameters_and_names() if name.endswith(".bias")]
    return paths


def mark_only_lora_as_trainable(model: nn.Cell, bias: str = "none") -> List[str]:
    """Freeze every parameter except the adapter's; returns the trainable paths."""
    keep = set(_adapter_paths(model, bias))
    return freeze_all_but(model, keep.__contains__)


def _adapter_parameters(model: nn.Cell, bias: str) -> Dict[str, Parameter]:
    """Adapter parameters keyed by their PEFT file key."""
    keep = set(_adapter_paths(model, bias))
    return {PEFT_PREFIX + checkpoint_name(model, name): param
            for name, param in model.parameters_and_names() if name in keep}


def _peft_config(model: nn.Cell) -> LoraConfig:
    config = getattr(model, "peft_config", None)
    if not isinstance(config, LoraConfig) or not lora_layers(model):
        raise AdapterError(f"{type(model).__name__} has no LoRA adapter: call get_peft_model or load_adapter first")
    return config


def lora_state_dict(model: nn.Cell, values: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The adapter tensors under PEFT's key names (no adapter name, ``base_model.model.`` prefix).

    ``values`` (checkpoint name -> array) replaces the parameters' own values,
    e.g. the tensors merged from a model-parallel run's slices.
    """
    config = _peft_config(model)
    params = _adapter_parameters(model, config.bias)
    if values is None:
        return {key: param.asnumpy() for key, param in params.items()}
    missing = [key for key in params if key[len(PEFT_PREFIX):] not in values]
    if missing:
        raise AdapterError(f"the given values lack {len(missing)} adapter tensors, e.g. {missing[:3]}")
    return {key: np.asarray(values[key[len(PEFT_PREFIX):]]) for key in params}


def save_adapter(model: nn.Cell, directory: Union[str, os.PathLike],
                 state_dict: Optional[Mapping[str, np.ndarray]] = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout), each atomically.

    ``state_dict``: checkpoint name -> array to write instead of the parameters' values.
    """
    from ..checkpoints.safetensors_io import save_safetensors

    config = _peft_config(model)
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / ADAPTER_WEIGHTS_NAME, lora_state_dict(model, state_dict), {"format": "pt"})
    dataclasses.replace(config, inference_mode=True).save_pretrained(folder)  # as PEFT writes it
    return folder


def _file_key(key: str) -> str:
    """PEFT file key as we store it: ``base_model.model.`` prefixed, without an adapter name."""
    key = _ADAPTER_NAME_IN_KEY.sub(r".\1.weight", key)
    return key if key.startswith(PEFT_PREFIX) else PEFT_PREFIX + key


def adapter_weights_file(adapter: Union[str, os.PathLike], options: HubOptions = HubOptions()) -> Path:
    """``adapter_model.safetensors`` (or an older PEFT's ``adapter_model.bin``) of an adapter folder / repo."""
    for name in (ADAPTER_WEIGHTS_NAME, ADAPTER_TORCH_WEIGHTS_NAME):
        found = resolve_file(adapter, name, options, required=False)
        if found is not None:
            return found
    raise AdapterError(f"{adapter}: no adapter weights (expected {ADAPTER_WEIGHTS_NAME} or {ADAPTER_TORCH_WEIGHTS_NAME})")


def load_adapter(
    model: nn.Cell,
    adapter: Union[str, os.PathLike],
    *,
    is_trainable: bool = False,
    options: HubOptions = HubOptions(),
) -> nn.Cell:
    """Load a PEFT LoRA adapter (local folder or hub repo id) into ``model``; returns the model.

    A model without LoRA gets the adapter's layers first (frozen unless
    ``is_trainable``); a model that already has LoRA must have the same layers
    and rank, and takes the adapter's scaling. Every tensor is checked before
    anything is written: a missing or unexpected key or a wrong shape raises
    :class:`AdapterError` naming the file and keys, and leaves the model as it was.
    """
    from ..checkpoints import iter_tensors

    config_file = resolve_file(adapter, ADAPTER_CONFIG_NAME, options)
    config = dataclasses.replace(LoraConfig.from_json_file(config_file), inference_mode=not is_trainable,
                                 _source=str(config_file))
    weights = adapter_weights_file(adapter, options)
    injected = not lora_layers(model)
    if injected:
        get_peft_model(model, dataclasses.replace(config, init_lora_weights=True))
    else:
        _check_same_layers(model, config, config_file)
    try:
        params = _adapter_parameters(model, config.bias)
        load_exact(params, ((_file_key(k), a) for k, a in iter_tensors([weights])), str(weights),
                   f"LoRA adapter (r={config.r} in {config_file.name})")
    except Exception:
        if injected:
            unload_lora(model)  # leave the model as it was
        raise
    if not injected:
        for _, layer in lora_layers(model):
            layer.set_scaling(config.scaling)
        model.peft_config = config
        if is_trainable:
            mark_only_lora_as_trainable(model, config.bias)
    return model


def _check_same_layers(model: nn.Cell, config: LoraConfig, source: Path) -> None:
    layers = lora_layers(model)
    wanted = [path for path, cell in model.cells_and_names()
              if isinstance(cell, Linear) and not isinstance(cell, LoraLinear) and config.matches(path)]
    if wanted:
        raise AdapterError(f"{source}: the model already has LoRA on other layers than this adapter targets "
                           f"({', '.join(wanted[:4])} ...); load the adapter into a fresh base model")
    ranks = sorted({layer.r for _, layer in layers})
    if ranks != [config.r]:
        raise AdapterError(f"{source}: adapter rank r={config.r}, the model's LoRA layers have r={ranks}")
    if any(layer.merged for _, layer in layers):
        raise AdapterError(f"{source}: the model's LoRA is merged into its weights; unmerge_lora(model) first")


def merge_lora(model: nn.Cell) -> int:
    """Add every adapter into its base weight (in place); returns the number of layers merged."""
    layers = lora_layers(model)
    for _, layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Cell) -> int:
    """Subtract merged adapters from the base weights again; returns the number of layers unmerged."""
    layers = lora_layers(model)
    for _, layer in layers:
        layer.unmerge()
    return len(layers)


def unload_lora(model: nn.Cell, merge: bool = False) -> nn.Cell:
    """Put plain ``Linear`` layers back (merging the adapters first if ``merge``); returns the model.

    Without ``merge`` a merged layer is unmerged first, so the result is the base model.
    """
    for path, layer in lora_layers(model):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _replace_child(model, path, layer.to_linear())
    if hasattr(model, "peft_config"):
        del model.peft_config
    drop_generation_cache(model)
    return model


def merge_and_unload(model: nn.Cell) -> nn.Cell:
    """The base architecture with the adapters merged in: ``save_pretrained`` then writes the hub layout."""
    return unload_lora(model, merge=True)


def trainable_summary(model: nn.Cell) -> str:
    """PEFT's ``print_trainable_parameters`` line."""
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters() if not p.name.endswith(".lora_scaling"))
    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    return (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}")
