"""What every ChatGLM3 model shares: dtypes, weight loading and saving, ``from_pretrained``.

Checkpoint formats live in :mod:`glm3_mindspore.checkpoints`; this module only
maps checkpoint names onto parameters and reports what did not fit.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import nn

from ..configuration import ChatGLM3Config
from ..hub import HubOptions
from ..parameter_io import numpy_dtype, write_parameter
from ..quantization import QUANTIZABLE_LAYERS, DEFAULT_GROUP_SIZE, QuantizationConfig, QuantizationError
from ..runtime import supports_bf16_compute
from .layers import Linear, QuantizedLinear

logger = logging.getLogger(__name__)

# Buffers upstream checkpoints carry that are not parameters here.
IGNORED_CHECKPOINT_KEYS = ("rotary_pos_emb.inv_freq",)
# transformer.encoder.layers.<index>.<rest>: the per-layer weights.
LAYER_NAME = re.compile(r"^(transformer\.encoder\.layers\.)(\d+)(\..+)$")
_LISTED = 8  # names a message lists before "... and N more"

AllowMissing = Union[bool, Sequence[str]]
Shape = Tuple[int, ...]

_DTYPES = {
    "float32": ms.float32, "fp32": ms.float32, "float": ms.float32,
    "float16": ms.float16, "fp16": ms.float16, "half": ms.float16,
    "bfloat16": ms.bfloat16, "bf16": ms.bfloat16,
}


def resolve_dtype(dtype: Any, default=ms.float32):
    """``ms.float16`` / ``"fp16"`` / ``"float16"`` / ``"torch.float16"`` -> a MindSpore dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, str):
        name = dtype.lower().replace("torch.", "").replace("mindspore.", "").replace("ms.", "")
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
        return _DTYPES[name]
    if dtype in (ms.float32, ms.float16, ms.bfloat16):
        return dtype
    raise ValueError(f"unsupported parameter dtype {dtype}; use float32, float16 or bfloat16")


def dtype_argument(ms_dtype: Any, kwargs: Dict[str, Any]) -> Any:
    """``ms_dtype``, or transformers' ``dtype`` / ``torch_dtype`` popped from ``kwargs`` (not config overrides)."""
    given = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype") if name in kwargs}
    if ms_dtype is not None:
        given["ms_dtype"] = ms_dtype
    if len({str(value) for value in given.values()}) > 1:
        raise ValueError(f"conflicting parameter dtypes: {', '.join(f'{k}={v!r}' for k, v in given.items())}; "
                         "pass one of ms_dtype, dtype, torch_dtype")
    return next(iter(given.values()), None)


def default_compute_dtype(param_dtype, quantized: bool = False):
    """Compute in the parameter dtype, except on CPU for bf16 (no bf16 matmul) and quantized models: fp32.

    A quantized model's products accumulate in fp32 in our kernels either way;
    16-bit activations would only add conversions around MindSpore's slow CPU
    float16 elementwise ops.
    """
    if not supports_bf16_compute() and (param_dtype == ms.bfloat16 or quantized):
        return ms.float32
    return param_dtype


class WeightLoadingError(ValueError):
    """Checkpoint tensors that cannot go into the model (shape mismatch); names them."""


@dataclass
class LoadReport:
    """What a weight load did (or would do), by checkpoint name."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Shape, Shape]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.missing:
            parts.append(f"missing: {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (not used): {_listing(self.unexpected)}")
        if self.mismatched:
            parts.append(self.mismatches())
        return "; ".join(parts)

    def mismatches(self) -> str:
        return "shape mismatch: " + _listing(
            [f"{n} checkpoint {tuple(a)} vs model {tuple(b)}" for n, a, b in self.mismatched])

    def check(self, model_name: str, allowed_missing: Sequence[str], strict: bool = False) -> None:
        """Raise :class:`WeightLoadingError` for shape mismatches and for missing weights not allowed.

        ``allowed_missing``: glob patterns of checkpoint names that may be absent
        (they keep their initial values); ``strict`` also refuses unexpected names.
        What is accepted but not loaded is logged.
        """
        refused = [n for n in self.missing if not any(fnmatch.fnmatchcase(n, p) for p in allowed_missing)]
        problems = []
        if self.mismatched:
            problems.append(self.mismatches())
        if refused:
            problems.append(f"missing from the checkpoint: {_listing(refused)} (pass allow_missing=[names] "
                            "for weights you mean to train from their initial values)")
        if strict and self.unexpected:
            problems.append(f"unexpected: {_listing(self.unexpected)}")
        if problems:
            raise WeightLoadingError(f"cannot load the checkpoint into {model_name}: {'; '.join(problems)}")
        if self.missing:
            logger.warning("%s: left at their initial values: %s", model_name, _listing(self.missing))
        if self.unexpected:
            logger.warning("%s: checkpoint tensors not used: %s", model_name, _listing(self.unexpected))


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def compare_shapes(expected: Mapping[str, Shape], given: Mapping[str, Shape]) -> LoadReport:
    """The :class:`LoadReport` loading tensors of shapes ``given`` into parameters of shapes ``expected`` gives."""
    report = LoadReport()
    for name, shape in given.items():
        if name.endswith(IGNORED_CHECKPOINT_KEYS):
            report.ignored.append(name)
        elif name not in expected:
            report.unexpected.append(name)
        elif tuple(shape) != tuple(expected[name]):
            report.mismatched.append((name, tuple(shape), tuple(expected[name])))
        else:
            report.loaded.append(name)
    report.missing = [name for name in expected if name not in given]
    return report


def checkpoint_layers(names: Iterable[str]) -> List[int]:
    """The layer indices the checkpoint names hold, sorted."""
    return sorted({int(match.group(2)) for match in map(LAYER_NAME.match, names) if match})


class ChatGLM3PreTrainedModel(nn.Cell):
    """Base class: holds the config and dtypes, loads and saves hub-layout checkpoints."""

    config_class = ChatGLM3Config
    base_model_prefix = "transformer"
    # Checkpoint names (glob patterns) of heads a base checkpoint lacks and fine-tuning
    # trains from their initial values; from_pretrained allows them to be missing.
    heads_to_train: Tuple[str, ...] = ("transformer.prefix_encoder.*",)

    def __init__(self, config: ChatGLM3Config, dtype=None, compute_dtype=None) -> None:
        super().__init__()
        if not isinstance(config, ChatGLM3Config):
            raise TypeError(f"config must be a ChatGLM3Config, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.param_dtype = resolve_dtype(dtype)
        self.compute_dtype = resolve_dtype(compute_dtype, default_compute_dtype(self.param_dtype,
                                                                                config.quantization is not None))
        self.generation_config = None  # set by the generation layer (GenerationMixin.from_pretrained)

    # ----------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: ChatGLM3Config, ms_dtype=None, compute_dtype=None, **_: Any):
        """A randomly initialised model (normal(0, 0.02) weights, unit norms)."""
        return cls(config, dtype=ms_dtype, compute_dtype=compute_dtype)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[str, os.PathLike],
        *,
        config: Optional[ChatGLM3Config] = None,
        ms_dtype=None,
        compute_dtype=None,
        progress: bool = True,
        allow_missing: AllowMissing = (),
        **kwargs: Any,
    ):
        """Load a model: a hub-layout folder, a hub repo id, or one weight file (weights only, never code).

        A single file may be a MindSpore ``.ckpt`` (MindFormers' names accepted),
        ``.safetensors`` or ``.bin``; its config is ``config.json`` beside it, else
        ChatGLM3-6B's (pass ``config=`` for another model). ``ms_dtype``: parameter
        dtype (``float32`` default as in Hugging Face; ``"auto"`` takes the
        checkpoint's ``torch_dtype``, the default for quantized models; ``dtype=``
        and ``torch_dtype=``, as transformers spells it, mean the same). Other
        keyword arguments override config fields (e.g. ``seq_length=4096``,
        ``pre_seq_len=128``); ``quantization_bit=8`` or ``4`` (upstream's field, also
        read from ``config.json``) quantizes the linear layers tensor by tensor while
        loading, with ``quantization_config`` (a dict or
        :class:`~glm3_mindspore.quantization.QuantizationConfig`) for the int4 group
        size and the output layer's bits. Hub options: ``revision``, ``cache_dir``,
        ``local_files_only``, ``token``.

        The config is checked against the checkpoint's names and shapes before the
        network is built. A weight the checkpoint lacks is a
        :class:`WeightLoadingError`, except the class's ``heads_to_train`` and the
        checkpoint names (or glob patterns) in ``allow_missing`` (``True``: any),
        which keep their initial values.
        """
        from .. import checkpoints

        options = HubOptions.pop_from(kwargs)
        ms_dtype = dtype_argument(ms_dtype, kwargs)
        if isinstance(kwargs.get("quantization_config"), QuantizationConfig):
            kwargs["quantization_config"] = kwargs["quantization_config"].to_dict()
        if config is None:
            config = ChatGLM3Config.from_pretrained(name_or_path, **vars(options), **kwargs)
        elif kwargs:
            config = ChatGLM3Config.from_dict({**config.to_dict(), **kwargs})
        if ms_dtype is None and config.quantization is not None:
            ms_dtype = "auto"  # a quantized model keeps its float tensors (embeddings, norms) as stored
        if ms_dtype == "auto":
            ms_dtype = config.torch_dtype or "float32"
        files = checkpoints.resolve_weight_files(name_or_path, options)
        cls.check_checkpoint(config, checkpoints.tensor_shapes(files), allow_missing)
        with uninitialized_parameters():  # the checkpoint overwrites them: skip random init
            model = cls(config, dtype=ms_dtype, compute_dtype=compute_dtype)
        model.load_weights(checkpoints.iter_tensors(files, progress=progress), allow_missing=allow_missing)
        model.init_parameters_data()  # parameters the checkpoint lacked get their initial values
        model.set_train(False)
        return model

    # ---------------------------------------------------------------- weights
    def checkpoint_name(self, param_name: str) -> str:
        """Hub checkpoint name of a parameter (base models gain the ``transformer.`` prefix)."""
        if isinstance(self, _base_model_class()):
            return f"{self.base_model_prefix}.{param_name}"
        return param_name

    def param_name(self, checkpoint_name: str) -> str:
        if isinstance(self, _base_model_class()) and checkpoint_name.startswith(self.base_model_prefix + "."):
            return checkpoint_name[len(self.base_model_prefix) + 1:]
        return checkpoint_name

    @classmethod
    def allowed_missing(cls, allow_missing: AllowMissing) -> List[str]:
        """Glob patterns of checkpoint names that may be missing: ``allow_missing`` and the class's heads."""
        if allow_missing is True:
            return ["*"]
        if isinstance(allow_missing, str) or not isinstance(allow_missing, (Sequence, bool)):
            raise TypeError(f"allow_missing must be True, False or a list of names, got {allow_missing!r}")
        return [*cls.heads_to_train, *(allow_missing or ())]

    @classmethod
    def expected_shapes(cls, config: ChatGLM3Config) -> Dict[str, Shape]:
        """Checkpoint name -> shape of every weight of this class built from ``config``.

        Read off a one-layer skeleton with lazy parameters (no memory, no time),
        its layer repeated ``num_layers`` times: the real network is not built.
        """
        skeleton_config = type(config).from_dict({**config.to_dict(), "num_layers": 1, "seq_length": 2})
        with uninitialized_parameters():
            skeleton = cls(skeleton_config)
        shapes: Dict[str, Shape] = {}
        for name, param in skeleton.parameters_and_names():
            checkpoint_name = skeleton.checkpoint_name(name)
            match = LAYER_NAME.match(checkpoint_name)
            if match is None:
                shapes[checkpoint_name] = tuple(param.shape)
                continue
            for layer in range(config.num_layers):
                shapes[f"{match.group(1)}{layer}{match.group(3)}"] = tuple(param.shape)
        return shapes

    @classmethod
    def check_checkpoint(cls, config: ChatGLM3Config, shapes: Mapping[str, Shape],
                         allow_missing: AllowMissing = ()) -> LoadReport:
        """Raise :class:`WeightLoadingError` unless tensors of ``shapes`` fit the model ``config`` describes.

        Checked before the network is built, so a config that does not fit its
        checkpoint (``num_layers: 1000000`` beside two layers) fails at once.
        """
        if config.quantization is not None and not any(name.endswith(".weight_scale") for name in shapes):
            # float weights, quantized while they load: check them against the float model
            config = type(config).from_dict({**config.to_dict(), "quantization_bit": 0, "quantization_config": None})
        layers = checkpoint_layers(shapes)
        if layers and layers != list(range(config.num_layers)):
            held = f"layers {layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) \
                else f"layers {_listing([str(n) for n in layers])}"
            raise WeightLoadingError(
                f"the config says num_layers={config.num_layers} but the checkpoint holds {len(layers)} "
                f"({held}): pass the config that belongs to this checkpoint")
        report = compare_shapes(cls.expected_shapes(config), shapes)
        report.check(cls.__name__, cls.allowed_missing(allow_missing))
        return report

    def load_weights(
        self,
        tensors: Union[Mapping[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]],
        strict: bool = False,
        allow_missing: AllowMissing = (),
    ) -> LoadReport:
        """Copy checkpoint tensors into the parameters, converting dtypes; report by name.

        Tensors are consumed one at a time, so an iterator over shards keeps peak
        memory near one copy of the weights. Shape mismatches and missing weights
        (but the class's ``heads_to_train`` and ``allow_missing``, as in
        :meth:`from_pretrained`) raise :class:`WeightLoadingError`; unexpected
        names are logged (``strict=True`` raises for them too).
        """
        from ..checkpoints.mapped import release_pages

        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        params = dict(self.parameters_and_names())
        quantized = {f"{name}.weight": cell for name, cell in self.cells_and_names() if isinstance(cell, QuantizedLinear)}
        report = LoadReport()
        for checkpoint_name, array in items:
            name = self.param_name(checkpoint_name)
            if name.endswith(IGNORED_CHECKPOINT_KEYS):
                report.ignored.append(checkpoint_name)
                continue
            layer = quantized.get(name)
            if layer is not None and is_float_array(array):  # a float checkpoint into a quantized layer
                if tuple(array.shape) != (layer.out_features, layer.in_features):
                    report.mismatched.append((checkpoint_name, tuple(array.shape), (layer.out_features, layer.in_features)))
                    continue
                layer.load_float_weight(array, checkpoint_name)
                release_pages(array)
                report.loaded += [name, name + "_scale"]
                del array
                continue
            param = params.get(name)
            if param is None:
                report.unexpected.append(checkpoint_name)
                continue
            if tuple(array.shape) != tuple(param.shape):
                report.mismatched.append((checkpoint_name, tuple(array.shape), tuple(param.shape)))
                continue
            write_parameter(param, array)
            release_pages(array)
            report.loaded.append(name)
            del array  # a converted copy must not outlive its turn
        loaded = set(report.loaded)
        report.missing = [self.checkpoint_name(n) for n in params if n not in loaded]
        self.loading_info = report
        report.check(type(self).__name__, [] if strict else self.allowed_missing(allow_missing), strict)
        return report

    def named_weights(self, dtype=None) -> Iterator[Tuple[str, np.ndarray]]:
        """``(checkpoint name, numpy array)`` for every parameter, float ones optionally cast.

        Quantized values and their scales are never cast: their format is fixed.
        """
        target = None if dtype is None else numpy_dtype(resolve_dtype(dtype))
        for name, param in self.parameters_and_names():
            array = param.asnumpy()
            keep = target is None or is_quantized_parameter(name, param)
            yield self.checkpoint_name(name), array if keep else array.astype(target)

    # ----------------------------------------------------------- quantization
    def quantize(self, bits: int, group_size: int = DEFAULT_GROUP_SIZE, output_layer_bits: Optional[int] = 8):
        """Quantize the linear layers in place, as upstream's ``model.quantize(bits)``; returns the model.

        ``bits`` 8 (per output channel) or 4 (per group of ``group_size``) for the
        attention and MLP layers of every block; the output layer gets
        ``output_layer_bits`` (None keeps it in the model's dtype). Embeddings and
        norms keep their dtype; on CPU the model then computes in float32.
        Layer by layer, so only one float weight is widened at a time. See
        :mod:`glm3_mindspore.quantization`.
        """
        if self.config.quantization is not None:
            raise QuantizationError(f"{type(self).__name__} is already quantized "
                                    f"({self.config.quantization.bits}-bit); load the float checkpoint to re-quantize")
        if getattr(self, "peft_config", None) is not None:
            raise QuantizationError(f"{type(self).__name__} has a LoRA adapter: merge it first "
                                    "(merge_and_unload), then quantize")
        quantization = QuantizationConfig(bits=bits, group_size=group_size, output_layer_bits=output_layer_bits)
        for path, parent, attribute, role in self.quantizable_layers():
            layer_bits = quantization.bits_for(role)
            if layer_bits is None:
                continue
            layer = QuantizedLinear.from_linear(getattr(parent, attribute), quantization, layer_bits)
            setattr(parent, attribute, layer)
            for param in layer.get_parameters():  # compiled graphs need unique, full names
                param.name = f"{path}.{param.name.rsplit('.', 1)[-1]}"
        self.config.quantization_bit = bits
        self.config.quantization_config = quantization.to_dict()
        compute = default_compute_dtype(self.param_dtype, quantized=True)
        for _, cell in self.cells_and_names():
            if isinstance(cell, ChatGLM3PreTrainedModel):  # the model and its base model carry the dtype
                cell.compute_dtype = compute
        clear = getattr(self, "clear_generation_cache", None)
        if clear is not None:
            clear()  # compiled graphs hold the float layers
        return self

    def inference_widens_weights(self) -> bool:
        """Whether some product would cast or dequantize its weight (no CPU kernels for it).

        A compiled graph keeps every intermediate, so such a model decodes op by
        op rather than hold a widened copy of all its weights.
        """
        for _, cell in self.cells_and_names():
            if isinstance(cell, QuantizedLinear) and cell.kernel is None:
                return True
            if isinstance(cell, Linear) and cell.kernel is None and cell.weight.dtype != self.compute_dtype:
                return True
        return False

    def quantizable_layers(self) -> Iterator[Tuple[str, nn.Cell, str, str]]:
        """``(path, parent cell, attribute, role)`` of every float linear layer quantization applies to."""
        for parent_path, cell in list(self.cells_and_names()):
            for attribute, role in QUANTIZABLE_LAYERS.items():
                if isinstance(getattr(cell, attribute, None), Linear):
                    yield f"{parent_path}.{attribute}" if parent_path else attribute, cell, attribute, role

    def state_dict(self) -> Dict[str, np.ndarray]:
        return dict(self.named_weights())

    def _given_weights(self, state_dict: Mapping[str, np.ndarray], dtype) -> Iterator[Tuple[str, np.ndarray]]:
        """``state_dict`` in parameter order, checked name for name and shape for shape against the model."""
        target = numpy_dtype(resolve_dtype(dtype))
        expected = {self.checkpoint_name(name): tuple(p.shape) for name, p in self.parameters_and_names()}
        missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match {type(self).__name__}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for name, shape in expected.items():
            array = np.asarray(state_dict[name])
            if tuple(array.shape) != shape:
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(array.shape)}, the model {shape}")
            yield name, array.astype(target, copy=False)

    def recompute_cells(self) -> List[nn.Cell]:
        """The cells gradient checkpointing recomputes in the backward pass instead of keeping their
        activations: every transformer block. The trainer asks for them (``gradient_checkpointing``)."""
        transformer = self if isinstance(self, _base_model_class()) else getattr(self, self.base_model_prefix)
        return list(transformer.encoder.layers)

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = self.trainable_params() if trainable_only else self.get_parameters()
        return int(sum(int(np.prod(p.shape)) for p in params))

    # ----------------------------------------------------------------- saving
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        max_shard_size: Union[int, str] = "5GB",
        safe_serialization: bool = True,
        dtype=None,
        state_dict: Optional[Mapping[str, np.ndarray]] = None,
    ) -> Path:
        """Write the hub layout (``config.json`` + safetensors shards and index, or ``.bin``).

        The folder loads back here and in upstream's PyTorch code (its ``auto_map``
        points at THUDM's published modelling code). ``state_dict`` (checkpoint
        name -> array, every parameter) replaces the parameters' own values, as in
        Hugging Face: a model-parallel run saves the tensors merged from its slices.
        """
        from .. import checkpoints

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        save_dtype = resolve_dtype(dtype, self.param_dtype)
        values = {**self.config.to_dict(), **hub_config_fields(save_dtype)}
        if self.config.quantization is not None:
            values.pop("auto_map")  # upstream's code cannot read our quantized format
        config = ChatGLM3Config.from_dict(values)
        weights = self.named_weights(save_dtype) if state_dict is None else self._given_weights(state_dict, save_dtype)
        checkpoints.write_weights(folder, weights, max_shard_size=max_shard_size,
                                  safe_serialization=safe_serialization)
        config.save_pretrained(folder)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(folder)
        return folder


def is_float_array(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" or array.dtype == numpy_dtype(ms.bfloat16)


def is_quantized_parameter(name: str, param) -> bool:
    """Quantized values (int8, packed int4) and their scales, whose dtypes are part of the format."""
    return param.dtype in (ms.int8, ms.uint8) or name.endswith(".weight_scale")


def uninitialized_parameters():
    """Context in which ``Parameter(initializer(...))`` stays lazy (no random init in memory).

    For models whose values come from elsewhere (a checkpoint) and for skeletons
    read for their parameters' names and shapes (checks, parallel layouts).
    """
    try:
        from mindspore.nn.utils import no_init_parameters
    except ImportError:  # older/newer MindSpore without it: parameters are initialised eagerly
        import contextlib

        return contextlib.nullcontext()
    return no_init_parameters()


def hub_config_fields(dtype) -> Dict[str, Any]:
    """Fields that make a saved ``config.json`` loadable by upstream's PyTorch code."""
    repo = "THUDM/chatglm3-6b"
    return {
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_chatglm.ChatGLMConfig",
            "AutoModel": f"{repo}--modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": f"{repo}--modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": f"{repo}--modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSequenceClassification": f"{repo}--modeling_chatglm.ChatGLMForSequenceClassification",
        },
        "torch_dtype": {ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16"}[dtype],
    }


def _base_model_class():
    from .chatglm3 import ChatGLM3Model

    return ChatGLM3Model
