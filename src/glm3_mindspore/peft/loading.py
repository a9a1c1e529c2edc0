"""Putting a tuning method on a model: from a run's settings (:func:`apply_tuning_method`), or a base model plus a
saved LoRA adapter or P-Tuning v2 prefix in one call (:func:`load_pretrained_with_adapter`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Type, Union

from ..hub import HubOptions, resolve_file
from .config import ADAPTER_CONFIG_NAME, AdapterError, LoraConfig, lora_config_from
from .lora import get_peft_model, load_adapter, merge_and_unload
from .ptuning import load_prefix, read_prefix_config, setup_ptuning


def apply_tuning_method(model, peft: Union[LoraConfig, Mapping[str, Any], None] = None):
    """LoRA when ``peft`` gives its settings (see :func:`lora_config_from`), P-Tuning v2 when the model's config
    has ``pre_seq_len``, else the model as it is (full fine-tuning)."""
    lora = lora_config_from(peft)
    if lora is not None:
        return get_peft_model(model, lora)
    if model.config.pre_seq_len:
        return setup_ptuning(model)
    return model


def load_pretrained_with_adapter(
    base: Union[str, os.PathLike],
    adapter: Union[str, os.PathLike],
    *,
    merge: bool = False,
    is_trainable: bool = False,
    model_class: Optional[Type] = None,
    adapter_revision: Optional[str] = None,
    **kwargs: Any,
):
    """``from_pretrained(base)`` with ``adapter`` applied, like PEFT's ``PeftModel.from_pretrained``.

    ``adapter`` is a folder or hub repo id holding either a PEFT LoRA adapter
    (``adapter_config.json``) or a P-Tuning v2 prefix (``config.json`` with
    ``pre_seq_len``; the base is then built with that prefix length). ``merge``
    folds a LoRA adapter into the weights and returns the plain architecture.
    Other keyword arguments go to ``from_pretrained`` (``ms_dtype``, hub options;
    ``cache_dir`` / ``token`` / ``local_files_only`` apply to the adapter too).
    """
    if model_class is None:
        from ..modeling import ChatGLM3ForConditionalGeneration as model_class
    # the base's hub options (a copy: from_pretrained takes them too), with the adapter's own revision
    options = dataclasses.replace(HubOptions.pop_from(dict(kwargs)), revision=adapter_revision)
    if resolve_file(adapter, ADAPTER_CONFIG_NAME, options, required=False) is not None:
        model = model_class.from_pretrained(base, **kwargs)
        load_adapter(model, adapter, is_trainable=is_trainable, options=options)
        return merge_and_unload(model) if merge else model
    prefix = read_prefix_config(adapter, options)
    if prefix is None:
        raise AdapterError(f"{adapter}: neither a LoRA adapter ({ADAPTER_CONFIG_NAME}) nor a P-Tuning v2 prefix "
                           "(config.json with pre_seq_len)")
    if merge:
        raise AdapterError(f"{adapter}: is a P-Tuning v2 prefix; only LoRA adapters can be merged into the weights")
    pre_seq_len, prefix_projection = prefix
    model = model_class.from_pretrained(base, pre_seq_len=pre_seq_len, prefix_projection=prefix_projection, **kwargs)
    load_prefix(model, adapter, options)
    if is_trainable:
        setup_ptuning(model)
    return model
