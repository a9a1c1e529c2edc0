"""The PyTorch side of ``bench_generate.py``: transformers' ``GlmForCausalLM`` on torch CPU.

Runs in its own virtual environment (torch, transformers, safetensors, numpy;
not the package's) as a subprocess of the benchmark, never at the same time as
the MindSpore measurement. Sub-commands:

``convert SRC DST``
    A hub-layout ChatGLM3 folder (``config.json`` + ``model.safetensors``) to a
    ``GlmForCausalLM`` folder. ``query_key_value`` splits into ``q/k/v_proj``
    (rows ``[H*D | G*D | G*D]``), ``dense_h_to_4h`` is ``gate_up_proj`` (same
    ``[gate | up]`` order), the rotary embedding (interleaved pairs on half of
    each head) is GLM's with ``partial_rotary_factor=0.5``.
``logits MODEL PROMPTS OUT``
    fp32 logits of every position of the ``parity`` prompt, for the agreement check.
``train MODEL BATCH OUT``
    AdamW steps on one fixed batch (``bench_train.py``): seconds per step and the losses.
``bench MODEL PROMPTS OUT``
    Warm-up, then prefill time (``max_new_tokens=1``) and the time for
    ``--new-tokens`` greedy tokens, per batch; JSON to OUT.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed  # noqa: E402

STAMP = "converted_from.json"


def glm_config(chatglm: dict, dtype: str):
    from transformers import GlmConfig

    heads, groups = chatglm["num_attention_heads"], chatglm["multi_query_group_num"]
    if not chatglm.get("multi_query_attention", False):
        groups = heads
    values = dict(
        vocab_size=chatglm["padded_vocab_size"],
        hidden_size=chatglm["hidden_size"],
        intermediate_size=chatglm["ffn_hidden_size"],
        num_hidden_layers=chatglm["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=chatglm["kv_channels"],
        rms_norm_eps=chatglm["layernorm_epsilon"],
        attention_bias=bool(chatglm.get("add_qkv_bias", False)),
        max_position_embeddings=chatglm["seq_length"],
        pad_token_id=chatglm.get("pad_token_id", 0),
        eos_token_id=chatglm.get("eos_token_id", 2),
        tie_word_embeddings=False,
    )
    theta = 10000.0 * float(chatglm.get("rope_ratio", 1))
    params = inspect.signature(GlmConfig.__init__).parameters
    if "rope_parameters" in params:  # transformers >= 5
        values["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5}
        values["dtype"] = dtype
    else:  # 4.46 .. 4.x
        values.update(rope_theta=theta, partial_rotary_factor=0.5, torch_dtype=dtype)
    return GlmConfig(**values)


def convert(src: Path, dst: Path, dtype: str) -> None:
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    chatglm = json.loads((src / "config.json").read_text(encoding="utf-8"))
    stamp = {"source": str(src.resolve()), "source_mtime": (src / "model.safetensors").stat().st_mtime, "dtype": dtype}
    if (dst / STAMP).exists() and json.loads((dst / STAMP).read_text()) == stamp:
        print(f"reusing {dst}", file=sys.stderr)
        return
    if chatglm.get("add_bias_linear") or not chatglm.get("rmsnorm", True) or chatglm.get("pre_seq_len"):
        sys.exit("convert: only rmsnorm=True, add_bias_linear=False, no prefix are supported by GlmForCausalLM")
    config = glm_config(chatglm, dtype)
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    tdtype = getattr(torch, dtype)
    source = load_file(str(src / "model.safetensors"))

    def t(name):
        return torch.from_numpy(np.ascontiguousarray(source[name].astype(np.float32))).to(tdtype)

    state = {
        "model.embed_tokens.weight": t("transformer.embedding.word_embeddings.weight"),
        "model.norm.weight": t("transformer.encoder.final_layernorm.weight"),
        "lm_head.weight": t("transformer.output_layer.weight"),
    }
    for i in range(config.num_hidden_layers):
        s, o = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        qkv = t(s + "self_attention.query_key_value.weight")
        state[o + "self_attn.q_proj.weight"] = qkv[:q].clone()
        state[o + "self_attn.k_proj.weight"] = qkv[q:q + kv].clone()
        state[o + "self_attn.v_proj.weight"] = qkv[q + kv:].clone()
        if config.attention_bias:
            bias = t(s + "self_attention.query_key_value.bias")
            state[o + "self_attn.q_proj.bias"] = bias[:q].clone()
            state[o + "self_attn.k_proj.bias"] = bias[q:q + kv].clone()
            state[o + "self_attn.v_proj.bias"] = bias[q + kv:].clone()
        state[o + "self_attn.o_proj.weight"] = t(s + "self_attention.dense.weight")
        state[o + "mlp.gate_up_proj.weight"] = t(s + "mlp.dense_h_to_4h.weight")
        state[o + "mlp.down_proj.weight"] = t(s + "mlp.dense_4h_to_h.weight")
        state[o + "input_layernorm.weight"] = t(s + "input_layernorm.weight")
        state[o + "post_attention_layernorm.weight"] = t(s + "post_attention_layernorm.weight")
    del source
    dst.mkdir(parents=True, exist_ok=True)
    (dst / STAMP).unlink(missing_ok=True)
    config.save_pretrained(dst)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / STAMP).write_text(json.dumps(stamp))


def load(folder: Path, dtype: str, attn: str):
    from transformers import GlmForCausalLM

    tdtype = getattr(torch, dtype)
    kwargs = {"attn_implementation": attn} if attn != "default" else {}
    try:
        model, info = GlmForCausalLM.from_pretrained(folder, dtype=tdtype, output_loading_info=True, **kwargs)
    except TypeError:  # transformers 4.x spells it torch_dtype
        model, info = GlmForCausalLM.from_pretrained(folder, torch_dtype=tdtype, output_loading_info=True, **kwargs)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"load: the converted checkpoint does not fit GlmForCausalLM: {bad}")
    model.eval()
    gc = model.generation_config
    gc.eos_token_id = None  # every row runs the full length, as eos_token_id=[] does on our side
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.temperature = gc.top_p = gc.top_k = None
    return model


def cmd_logits(args) -> None:
    torch.set_num_threads(args.threads)
    model = load(Path(args.model), args.dtype, args.attn)
    ids = torch.from_numpy(np.load(args.prompts)["parity"].astype(np.int64))
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    np.savez(args.out, logits=logits.float().numpy())


def cmd_bench(args) -> None:
    import transformers

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load(Path(args.model), args.dtype, args.attn)
    load_s = time.perf_counter() - t0
    prompts = np.load(args.prompts)
    extra = {"cache_implementation": "static"} if args.cache == "static" else {}
    results = {
        "impl": "torch", "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "dtype": args.dtype, "cache": args.cache,
        "attn": getattr(model.config, "_attn_implementation", "?"), "load_s": load_s, "batches": {},
    }
    for batch in args.batches:
        ids = torch.from_numpy(prompts[f"b{batch}"].astype(np.int64))
        mask = torch.ones_like(ids)

        def run(new):
            with torch.inference_mode():
                elapsed, background, out = timed(lambda: model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new, **extra))
            assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
            return elapsed, background, out

        entry = {key: [] for key in ("warmup_s", "warmup_bg", "prefill_s", "prefill_bg", "full_s", "full_bg")}
        warm = run(2)
        entry["warmup_s"].append(warm[0])
        entry["warmup_bg"].append(warm[1])
        for _ in range(args.repeats):
            elapsed, background, _ = run(1)
            entry["prefill_s"].append(elapsed)
            entry["prefill_bg"].append(background)
        for _ in range(args.repeats):
            elapsed, background, tokens = run(args.new_tokens)
            entry["full_s"].append(elapsed)
            entry["full_bg"].append(background)
        entry["tokens"] = tokens[:, ids.shape[1]:].numpy().tolist()
        results["batches"][str(batch)] = entry
        print(f"torch batch {batch}: prefill {min(entry['prefill_s']):.3f}s, "
              f"{args.new_tokens} tokens {min(entry['full_s']):.3f}s", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results))


def cmd_train(args) -> None:
    """AdamW steps on one fixed batch: per-step seconds and the losses (for bench_train.py)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load(Path(args.model), args.dtype, args.attn)
    model.train()
    batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in np.load(args.batch).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step():
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    results = {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "losses": [], "step_s": [], "step_bg": []}
    for index in range(args.warmup + args.steps):
        elapsed, background, loss = timed(step)
        results["losses"].append(loss)
        if index >= args.warmup:
            results["step_s"].append(elapsed)
            results["step_bg"].append(background)
    Path(args.out).write_text(json.dumps(results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", default="float32")
    for name in ("logits", "bench"):
        p = sub.add_parser(name)
        p.add_argument("model")
        p.add_argument("prompts")
        p.add_argument("out")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--attn", default="default", help="attn_implementation: default (sdpa), eager, sdpa")
        if name == "bench":
            p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
            p.add_argument("--new-tokens", type=int, default=32)
            p.add_argument("--repeats", type=int, default=2)
            p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    t = sub.add_parser("train")
    t.add_argument("model")
    t.add_argument("batch")
    t.add_argument("out")
    t.add_argument("--dtype", default="float32")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--attn", default="default")
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.command == "train":
        cmd_train(args)
        return
    if args.command == "convert":
        convert(Path(args.src), Path(args.dst), args.dtype)
    elif args.command == "logits":
        cmd_logits(args)
    else:
        cmd_bench(args)


if __name__ == "__main__":
    main()
