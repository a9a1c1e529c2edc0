"""ChatGLM3 hub checkpoint -> llama.cpp GGUF (``chatglm`` architecture), and GGUF quantization.

llama.cpp is our peer in the generation benchmarks, and it only reads GGUF.
Its own converter (``convert_hf_to_gguf.py``, class ``ChatGLMModel``) needs
torch, transformers and THUDM's remote tokenizer code; this script writes the
same file from numpy, ``gguf`` (llama.cpp's gguf-py) and ``sentencepiece``
only, streaming: tensors are memory-mapped from the safetensors files and
written in chunks, so a 12.5 GB checkpoint converts in well under 1 GB of RSS.

What matches the converter vendored in llama-cpp-python 0.3.36 (llama.cpp
0c1e570, gguf-py 0.19.0): tensor names (``gguf.get_tensor_name_map``), their
order (shards sorted by file name, tensors by name), tensor types (norms and
biases F32, the rest the chosen ``--outtype``), every ``chatglm.*`` and
``general.*`` key (``gguf.Metadata``), the rope settings (``rope.dimension_count``
= head_dim * 0.5, ``rope.freq_base`` = 10000 * rope_ratio; llama.cpp applies
NORM, i.e. GLM's interleaved-pair, rotary to it) and the tokenizer of
``set_vocab_chatglm3`` (SentencePiece pieces and scores, ids 0/1/2 renamed
``<unk>``/``<bos>``/``<eos>``, ChatGLM3's nine special tokens as CONTROL,
padding rows ``[PAD<id>]`` UNUSED, ``tokenizer.ggml.pre = chatglm-spm``,
special ids from ``gguf.SpecialVocab``). Two deliberate differences: upstream
takes the ChatGLM3 tokenizer path only when ``_name_or_path`` names
``THUDM/chatglm3-6b`` (this script always does: it converts ChatGLM3), and it
takes ``head_count_kv`` from ``multi_query_group_num`` even when
``multi_query_attention`` is off (here: ``num_attention_heads`` then).
Checked: with upstream's ``set_vocab`` swapped for ours (THUDM's tokenizer
code is not at hand), upstream's converter writes byte-identical files for the
tiny test checkpoint (f32, f16; also bf16 in two shards) and for the 6B shape
(2 layers, and all 28: 12.5 GB); our vocabulary equals the package's
tokenizer's pieces for all 65,024 ids. ``tokenizer.model`` defaults to the
package's copy when the folder has none (the benchmarks' random checkpoints).

Run with the llama.cpp environment (never imports MindSpore or glm3_mindspore)::

    /work/venv-llama/bin/python benchmarks/_gguf.py convert --src FOLDER --dst out-f16.gguf --outtype f16
    /work/venv-llama/bin/python benchmarks/_gguf.py quantize --src out-f16.gguf --dst out-q4_0.gguf --type q4_0
    /work/venv-llama/bin/python benchmarks/_gguf.py info out-f16.gguf          # keys and tensors

``quantize`` is llama.cpp's own quantizer (``llama_model_quantize`` through
llama-cpp-python's ctypes binding) with its default parameters, as
``llama-quantize IN OUT Q4_0`` would run it (so ``output.weight`` becomes Q6_K).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import numpy as np

import gguf
from gguf.utility import LocalTensor, SafetensorsLocal

ARCH = gguf.MODEL_ARCH.CHATGLM
OUTTYPES: Dict[str, gguf.LlamaFileType] = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
WEIGHT_QTYPE = {gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
                gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16}
QUANT_FTYPES: Dict[str, gguf.LlamaFileType] = {  # llama_ftype values, the names llama-quantize accepts
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
}
# upstream tokenization_chatglm.py: appended after the SentencePiece vocabulary, in this order
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
SOURCE_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # BF16 read as raw bits
CHUNK_BYTES = 64 << 20  # written per chunk, so no tensor is ever converted whole
# the real ChatGLM3 SentencePiece model the package ships (read as a file): for random benchmark checkpoints
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "src/glm3_mindspore/resources/tokenizer/tokenizer.model"


# --------------------------------------------------------------------------- checkpoint
def load_config(src: Path) -> Dict[str, Any]:
    """``config.json``, after checking llama.cpp's chatglm graph can run it (it assumes these)."""
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    expect = {"rmsnorm": True, "add_bias_linear": False, "post_layer_norm": True,
              "apply_residual_connection_post_layernorm": False}
    wrong = {k: config.get(k) for k, v in expect.items() if config.get(k, v) != v}
    if config.get("pre_seq_len"):
        wrong["pre_seq_len"] = config["pre_seq_len"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.get("kv_channels", head_dim) != head_dim:  # llama.cpp derives head_dim = hidden / heads
        wrong["kv_channels"] = config["kv_channels"]
    if wrong:
        raise ValueError(f"llama.cpp's chatglm graph cannot run this config: {wrong}")
    return config


def index_tensors(src: Path) -> Dict[str, LocalTensor]:
    """Name -> memory-mappable tensor, in upstream's order (``ModelBase.index_tensors``)."""
    index_file = src / "model.safetensors.index.json"
    weight_map: Dict[str, str] = {}
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        parts = sorted(set(weight_map.values()))
    else:
        parts = sorted(p for p in os.listdir(src) if p.startswith("model") and p.endswith(".safetensors"))
    if not parts:
        raise FileNotFoundError(f"no model*.safetensors in {src} (torch .bin checkpoints are not supported here)")
    tensors: Dict[str, LocalTensor] = {}
    for part in parts:
        with SafetensorsLocal(src / part) as part_tensors:  # sorted by name, like safetensors' keys()
            tensors.update(part_tensors)
    if weight_map and set(weight_map) != set(tensors):
        raise ValueError(f"index and shards disagree: {sorted(set(weight_map) ^ set(tensors))[:8]}")
    return tensors


class ConvertedTensor:
    """A safetensors tensor cast to ``dtype`` on the fly: what ``GGUFWriter.write_tensor_data`` reads.

    It has the two things the writer uses, ``nbytes`` and ``tofile``; ``tofile``
    converts ``CHUNK_BYTES`` of rows at a time from the memory map, so RAM holds
    one chunk, never the tensor (the file pages it maps are page cache).
    """

    def __init__(self, source: LocalTensor, dtype: np.dtype):
        if source.dtype not in SOURCE_DTYPES:
            raise ValueError(f"unsupported safetensors dtype {source.dtype}")
        self.source, self.dtype, self.shape = source, np.dtype(dtype), source.shape
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self) -> np.ndarray:
        """The source as a 2-D memory-mapped array (1-D tensors are one row)."""
        flat = self.source.mmap_bytes().view(SOURCE_DTYPES[self.source.dtype])
        return flat.reshape(self.shape[0] if len(self.shape) > 1 else 1, -1)

    def cast(self, block: np.ndarray) -> np.ndarray:
        if self.source.dtype == "BF16":  # bfloat16 is the top half of a float32 (exact widening)
            block = (block.astype(np.uint32) << 16).view(np.float32)
        return block.astype(self.dtype, copy=False)

    def tofile(self, fout: BinaryIO) -> None:
        rows = self.rows()
        step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * 4))
        for start in range(0, rows.shape[0], step):
            self.cast(rows[start:start + step]).tofile(fout)


# --------------------------------------------------------------------------- tokenizer
def chatglm3_vocab(tokenizer_model: Path, vocab_size: int) -> Tuple[List[bytes], List[float], List[int]]:
    """Tokens, scores and token types as upstream's ``set_vocab_chatglm3`` builds them.

    Upstream reads them through THUDM's ``ChatGLMTokenizer``; its
    ``_convert_id_to_token`` is SentencePiece's ``IdToPiece`` for ordinary ids,
    the special-token text for ids just past the SentencePiece vocabulary, and
    "" for bos/eos/pad and the padding rows, which is what is reproduced here.
    """
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(tokenizer_model))
    n_sp = sp.vocab_size()
    special = {n_sp + i: token for i, token in enumerate(SPECIAL_TOKENS)}
    if n_sp + len(SPECIAL_TOKENS) > vocab_size:
        raise ValueError(f"padded_vocab_size {vocab_size} < {n_sp} pieces + {len(SPECIAL_TOKENS)} special tokens")
    renamed = {0: "<unk>", 1: "<bos>", 2: "<eos>"}
    tokens: List[bytes] = []
    scores: List[float] = []
    types: List[int] = []
    for token_id in range(vocab_size):
        if token_id >= n_sp:
            piece = special.get(token_id, "")
            tokens.append(piece.encode("utf-8") if piece else f"[PAD{token_id}]".encode("utf-8"))
            scores.append(0.0)
            types.append(gguf.TokenType.CONTROL if piece else gguf.TokenType.UNUSED)
            continue
        piece = renamed.get(token_id) or sp.IdToPiece(token_id)
        tokens.append(piece.encode("utf-8"))
        scores.append(sp.GetScore(token_id) if piece else 0.0)
        if sp.IsUnknown(token_id):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.IsControl(token_id):
            types.append(gguf.TokenType.CONTROL)
        elif sp.IsUnused(token_id):
            types.append(gguf.TokenType.UNUSED)
        elif sp.IsByte(token_id):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


# --------------------------------------------------------------------------- conversion
def tensor_qtype(gguf_name: str, n_dims: int, ftype: gguf.LlamaFileType) -> gguf.GGMLQuantizationType:
    """Upstream's ``prepare_tensors`` rule: 1-D, norms and non-weights stay F32."""
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return WEIGHT_QTYPE[ftype]


def add_model_keys(writer: gguf.GGUFWriter, config: Dict[str, Any], ftype: gguf.LlamaFileType) -> None:
    """``ChatGLMModel.set_gguf_parameters``."""
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    n_head_kv = config.get("multi_query_group_num", n_head) if config.get("multi_query_attention", True) else n_head
    writer.add_context_length(config.get("seq_length", n_embd))
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(config.get("ffn_hidden_size", 4 * n_embd))
    writer.add_block_count(config["num_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(config.get("layernorm_epsilon", 1e-5))
    writer.add_file_type(ftype)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
    writer.add_rope_dimension_count(int(config.get("attention_dim", n_embd // n_head) * partial))
    writer.add_add_bos_token(False)
    writer.add_rope_freq_base(10000 * config.get("rope_ratio", 1))


def add_general_keys(writer: gguf.GGUFWriter, src: Path) -> None:
    """``ModelBase.prepare_metadata``: general.type, name, size label... from the folder, as upstream."""
    counts = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, src, None, counts[0])
    metadata.name = metadata.name or src.name
    if metadata.size_label is None and counts[0] > 0:
        metadata.size_label = gguf.size_label(*counts)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def find_tokenizer(src: Path, tokenizer: Optional[Path] = None) -> Path:
    """``tokenizer``, else ``src/tokenizer.model``, else the package's copy (random checkpoints ship none)."""
    if tokenizer is not None:
        return Path(tokenizer)
    if (src / "tokenizer.model").is_file():
        return src / "tokenizer.model"
    if BUNDLED_TOKENIZER.is_file():
        print(f"_gguf: no tokenizer.model in {src}; using {BUNDLED_TOKENIZER}", file=sys.stderr)
        return BUNDLED_TOKENIZER
    raise FileNotFoundError(f"no tokenizer.model in {src}: pass --tokenizer")


def add_vocab_keys(writer: gguf.GGUFWriter, src: Path, vocab_size: int, tokenizer: Optional[Path] = None) -> None:
    """``ChatGLMModel.set_vocab_chatglm3`` (special ids from ``src``'s config files)."""
    tokens, scores, types = chatglm3_vocab(find_tokenizer(src, tokenizer), vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("chatglm-spm")  # ChatGLM3 prompts: "[gMASK]sop<|user|>\n...<|assistant|>"
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def convert(src: Path, dst: Path, outtype: str = "f16", tokenizer: Optional[Path] = None) -> Path:
    """Write ``dst`` from the hub folder ``src``; returns ``dst``. Streams (see module docstring).

    ``tokenizer``: the SentencePiece model, if not ``src/tokenizer.model`` (default then: the package's).
    """
    src, dst, ftype = Path(src), Path(dst), OUTTYPES[outtype]
    config = load_config(src)
    name_map = gguf.get_tensor_name_map(ARCH, config["num_layers"])
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    planned: List[ConvertedTensor] = []
    for hf_name, source in index_tensors(src).items():
        if hf_name.endswith(".rotary_pos_emb.inv_freq"):  # recomputed by llama.cpp
            continue
        gguf_name = name_map.get_name(hf_name.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"cannot map tensor {hf_name!r}")
        qtype = tensor_qtype(gguf_name, len(source.shape), ftype)
        tensor = ConvertedTensor(source, np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
        writer.add_tensor_info(gguf_name, tensor.shape, tensor.dtype, tensor.nbytes, raw_dtype=qtype)
        planned.append(tensor)
    add_general_keys(writer, src)
    add_model_keys(writer, config, ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab_keys(writer, src, config["padded_vocab_size"], tokenizer)

    partial = dst.with_name(dst.name + ".part")  # a crash leaves no file that looks complete
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in planned:
        writer.write_tensor_data(tensor)  # type: ignore[arg-type]  # duck-typed: nbytes + tofile
    writer.close()
    os.replace(partial, dst)
    return dst


# --------------------------------------------------------------------------- quantization
def quantize(src: Path, dst: Path, qtype: str, threads: Optional[int] = None) -> Path:
    """Quantize GGUF ``src`` to ``qtype`` with llama.cpp's ``llama_model_quantize`` (default params)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(QUANT_FTYPES[qtype])
    params.nthread = threads or os.cpu_count() or 1
    partial = Path(dst).with_name(Path(dst).name + ".part")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) returned {code}")
    os.replace(partial, dst)
    return Path(dst)


def info(path: Path, max_array: int = 4) -> None:
    """Print a GGUF's keys and tensors (a quick look for review)."""
    reader = gguf.GGUFReader(path)
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value: Any = field.contents()
        if isinstance(value, list) and len(value) > max_array:
            value = f"{value[:max_array]}... ({len(value)} items)"
        print(f"{field.name} = {value}")
    for tensor in reader.tensors:
        print(f"{tensor.name:32s} {tensor.tensor_type.name:5s} {list(tensor.shape)}")


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), GB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        kb = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    return kb / 1e6


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="hub folder -> GGUF f16/f32")
    conv.add_argument("--src", type=Path, required=True)
    conv.add_argument("--dst", type=Path, required=True)
    conv.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16")
    conv.add_argument("--tokenizer", type=Path, help="tokenizer.model if not in --src (default then: the package's)")
    quant = sub.add_parser("quantize", help="GGUF -> quantized GGUF (llama.cpp's quantizer)")
    quant.add_argument("--src", type=Path, required=True)
    quant.add_argument("--dst", type=Path, required=True)
    quant.add_argument("--type", choices=sorted(QUANT_FTYPES), required=True)
    quant.add_argument("--threads", type=int, default=None)
    show = sub.add_parser("info", help="print a GGUF's keys and tensors")
    show.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.command == "convert":
        out = convert(args.src, args.dst, args.outtype, args.tokenizer)
    elif args.command == "quantize":
        out = quantize(args.src, args.dst, args.type, args.threads)
    else:
        info(args.path)
        return
    print(f"wrote {out} ({out.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.1f} s, "
          f"peak RSS {peak_rss_gb():.2f} GB", file=sys.stderr)


if __name__ == "__main__":
    main()
