"""Random hub-layout ChatGLM3 checkpoints for the benchmarks, written with numpy only.

No MindSpore model is built: the tensor names and shapes follow from the config
(upstream's ``modeling_chatglm.py`` layout), the values are seeded N(0, 0.02)
(norm weights 1), and the folder is ``config.json`` + ``model.safetensors``, as
on the hub. A folder that already holds the same config and seed is reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

STAMP = "bench_weights.json"  # what was written, so a later run can reuse the folder


def chatglm3_shapes(config) -> Dict[str, Tuple[int, ...]]:
    """Hub names and shapes of every tensor of a ``ChatGLM3Config`` (RMSNorm, no linear biases)."""
    if not config.rmsnorm or config.add_bias_linear or config.pre_seq_len:
        raise ValueError("benchmark checkpoints support rmsnorm=True, add_bias_linear=False, no prefix")
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    q, kv = config.num_attention_heads * d, config.num_key_value_groups * d
    shapes: Dict[str, Tuple[int, ...]] = {"transformer.embedding.word_embeddings.weight": (config.padded_vocab_size, h)}
    for i in range(config.num_layers):
        p = f"transformer.encoder.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attention.query_key_value.weight"] = (q + 2 * kv, h)
        if config.add_qkv_bias:
            shapes[p + "self_attention.query_key_value.bias"] = (q + 2 * kv,)
        shapes[p + "self_attention.dense.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.dense_h_to_4h.weight"] = (2 * f, h)
        shapes[p + "mlp.dense_4h_to_h.weight"] = (h, f)
    shapes["transformer.encoder.final_layernorm.weight"] = (h,)
    shapes["transformer.output_layer.weight"] = (config.padded_vocab_size, h)
    return shapes


def random_tensors(config, seed: int = 0, dtype=np.float32) -> Iterator[Tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for name, shape in chatglm3_shapes(config).items():
        if name.endswith("layernorm.weight"):
            yield name, np.ones(shape, dtype=dtype)
        else:
            yield name, (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(dtype, copy=False)
    # upstream checkpoints carry the rotary buffer; loaders ignore it
    rotary = config.kv_channels // 2
    yield "transformer.rotary_pos_emb.inv_freq", (
        1.0 / (10000.0 * config.rope_ratio) ** (np.arange(0, rotary, 2, dtype=np.float32) / rotary)).astype(dtype)


def write_random_checkpoint(folder: Path, config, seed: int = 0, dtype: str = "float32") -> bool:
    """Write (or reuse) a random checkpoint of ``config`` in ``folder``; True when it was written now."""
    from glm3_mindspore import ChatGLM3Config
    from glm3_mindspore.checkpoints.safetensors_io import save_safetensors

    folder = Path(folder)
    config = ChatGLM3Config.from_dict({**config.to_dict(), "torch_dtype": dtype})
    stamp = {"config": config.to_dict(), "seed": seed, "dtype": dtype}
    stamp_path = folder / STAMP
    if stamp_path.exists() and (folder / "model.safetensors").exists():
        if json.loads(stamp_path.read_text(encoding="utf-8")) == json.loads(json.dumps(stamp)):
            return False
    folder.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    config.save_pretrained(folder)
    save_safetensors(folder / "model.safetensors", dict(random_tensors(config, seed, np.dtype(dtype))))
    stamp_path.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return True
