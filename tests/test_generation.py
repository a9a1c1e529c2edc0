"""generate(): upstream greedy parity, compiled == PyNative == no cache, stopping, sampling, errors."""

import io

import mindspore as ms
import numpy as np
import pytest
from mindspore.graph import api as graph_api

from glm3_mindspore import ChatGLM3ForConditionalGeneration, GenerationConfig, TextIteratorStreamer, TextStreamer
from glm3_mindspore.generation import GenerationConfigError, PromptTooLongError
from glm3_mindspore.generation.logits import (
    apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, choose_tokens,
    guard_invalid_scores, process_scores, softmax,
)
from conftest import TINY

CHAT_STOP = [2, 64795, 64797]


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_chat_greedy_matches_upstream(model, expected, compiled):
    prompt = expected["chat_input_ids"]
    out = model.generate(prompt, max_new_tokens=24, eos_token_id=CHAT_STOP, compiled=compiled)
    assert out[:, prompt.shape[1]:].tolist() == expected["chat_greedy_ids"].tolist()
    assert out[:, :prompt.shape[1]].tolist() == prompt.tolist()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_left_padded_batch_greedy_matches_upstream(model, expected, compiled):
    prompt = expected["batch_input_ids"]
    out = model.generate(prompt, attention_mask=expected["batch_attention_mask"],
                         position_ids=expected["batch_position_ids"], max_new_tokens=16,
                         eos_token_id=CHAT_STOP, compiled=compiled)
    assert out[:, prompt.shape[1]:].tolist() == expected["batch_greedy_ids"].tolist()


def test_default_mask_and_positions_come_from_left_padding(model, expected):
    prompt = expected["batch_input_ids"]
    out = model.generate(prompt, max_new_tokens=16, eos_token_id=CHAT_STOP)
    assert out[:, prompt.shape[1]:].tolist() == expected["batch_greedy_ids"].tolist()


def test_cached_decoding_equals_full_recomputation(model, expected):
    prompt = expected["batch_input_ids"]
    kwargs = dict(attention_mask=expected["batch_attention_mask"], max_new_tokens=10, eos_token_id=CHAT_STOP)
    cached = model.generate(prompt, **kwargs)
    full = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.tolist() == full.tolist()


def test_decoding_compiles_one_graph_once_and_never_again(expected):
    fresh = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    prompt = expected["chat_input_ids"]
    before = len(graph_api.ms_compile_cache)  # MindSpore's registry of compiled graph phases
    fresh.generate(prompt, max_new_tokens=24, eos_token_id=[])
    assert len(graph_api.ms_compile_cache) - before == 1  # the decode step; prompts run op by op
    fresh.generate(prompt[:, :12], max_new_tokens=40, eos_token_id=[], do_sample=True, seed=1)
    assert len(graph_api.ms_compile_cache) - before == 1  # same engine, another prompt length: no new graph


def test_rows_stop_independently_and_are_padded(model, expected):
    prompt = expected["batch_input_ids"]
    first_of_row0 = int(expected["batch_greedy_ids"][0, 0])
    out = model.generate(prompt, max_new_tokens=16, eos_token_id=[first_of_row0], pad_token_id=0)
    new = out[:, prompt.shape[1]:]
    assert new[0].tolist() == [first_of_row0] + [0] * 15
    assert new[1:].tolist() == expected["batch_greedy_ids"][1:].tolist()


def test_generation_stops_when_all_rows_finish(model, expected):
    prompt = expected["chat_input_ids"]
    stop_at = int(expected["chat_greedy_ids"][0, 3])
    out = model.generate(prompt, max_new_tokens=24, eos_token_id=[stop_at])
    assert out[0, prompt.shape[1]:].tolist() == expected["chat_greedy_ids"][0, :4].tolist()


def test_max_length_counts_the_prompt_and_ms_tensor_in_gives_tensor_out(model, expected):
    prompt = expected["chat_input_ids"]
    out = model.generate(ms.Tensor(prompt), max_length=prompt.shape[1] + 5, eos_token_id=[])
    assert isinstance(out, ms.Tensor) and out.shape == (1, prompt.shape[1] + 5)


def test_sampling_is_reproducible_with_a_seed(model, expected):
    prompt = expected["chat_input_ids"]
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.95, eos_token_id=[])
    first = model.generate(prompt, seed=7, **kwargs)
    again = model.generate(prompt, seed=7, **kwargs)
    other = model.generate(prompt, seed=8, **kwargs)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    pynative = model.generate(prompt, seed=7, compiled=False, **kwargs)
    assert pynative.tolist() == first.tolist()


# ------------------------------------------------------------ token choice units
def test_temperature_top_k_top_p_against_hand_computed_distributions():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=np.float32))
    np.testing.assert_allclose(softmax(apply_temperature(logits, 2.0)),
                               np.sqrt([[0.5, 0.2, 0.15, 0.1, 0.05]]) / np.sqrt([0.5, 0.2, 0.15, 0.1, 0.05]).sum(),
                               rtol=1e-5)
    top2 = softmax(apply_top_k(logits, 2))
    np.testing.assert_allclose(top2, [[0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]], rtol=1e-5, atol=1e-7)
    # top_p 0.8: ascending cumulative mass 0.05, 0.15, 0.30, 0.50 (<= 0.2 removed: 0.05, 0.1), keep 3
    nucleus = softmax(apply_top_p(logits, 0.8))
    np.testing.assert_allclose(nucleus, [[0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]], rtol=1e-5, atol=1e-7)
    # top_p keeps at least the most likely token
    assert np.isfinite(apply_top_p(logits, 1e-6)).sum() == 1


def test_repetition_penalty_matches_hugging_face_rule():
    scores = np.array([[2.0, -2.0, 1.0, -1.0]], dtype=np.float32)
    penalised = apply_repetition_penalty(scores, np.array([[0, 1, 1]]), 2.0)
    np.testing.assert_allclose(penalised, [[1.0, -4.0, 1.0, -1.0]])


def test_invalid_scores_are_replaced_like_upstream():
    scores = np.array([[0.0, np.nan, 1.0, 2.0, 3.0, 4.0, 5.0]], dtype=np.float32)
    guarded = guard_invalid_scores(scores)
    assert guarded[0, 5] == 5e4 and guarded.sum() == 5e4
    config = GenerationConfig(do_sample=False)
    assert process_scores(np.array([[1.0, np.inf, 0, 0, 0, 0]], np.float32), np.zeros((1, 1), int), config).argmax() == 5


def test_sampling_draws_follow_the_distribution():
    probs = np.array([0.5, 0.3, 0.2, 0.0])
    scores = np.log(np.where(probs > 0, probs, 1e-30))[None].repeat(20000, 0)
    draws = choose_tokens(scores, True, np.random.default_rng(0))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, probs, atol=0.015)
    greedy = choose_tokens(scores[:2], False, None)
    assert greedy.tolist() == [0, 0]


# ---------------------------------------------------------------------- errors
def test_prompt_longer_than_seq_length_is_a_clear_error_or_truncated(model):
    long_prompt = np.array([[64790, 64792] + [30910] * 600])
    with pytest.raises(PromptTooLongError, match="seq_length=512"):
        model.generate(long_prompt, max_new_tokens=4)
    near_the_end = long_prompt[:, :505]  # room for 7 more positions only
    assert model.generate(near_the_end, max_new_tokens=50, eos_token_id=[]).shape[1] == 512
    out = model.generate(long_prompt, max_new_tokens=4, truncate_prompt=True, eos_token_id=[])
    assert out.shape[1] <= 512 and out[0, :2].tolist() == [64790, 64792]


def test_prompt_not_shorter_than_max_length_is_a_clear_error(model, expected):
    prompt = expected["chat_input_ids"]
    with pytest.raises(PromptTooLongError, match="max_length=10"):
        model.generate(prompt, max_length=10)


def test_prompt_too_long_error_cites_the_limits_the_caller_gave(model):
    # Before: "... too many for max_length=20 and the model's seq_length=512" when only max_new_tokens was given.
    long_prompt = np.array([[64790, 64792] + [30910] * 600])
    with pytest.raises(PromptTooLongError) as caught:
        model.generate(long_prompt, max_new_tokens=4)
    message = str(caught.value)
    assert message.startswith("the prompt has 602 tokens with max_new_tokens=4: 91 too many for the model's "
                              "seq_length=512") and "max_length" not in message
    with pytest.raises(PromptTooLongError, match=r"too many for max_length=600 and the model's seq_length=512 "
                                                 r"\(pass truncate_prompt=True .*raise max_length"):
        model.generate(long_prompt, max_length=600)


def test_bad_generate_arguments_are_named(model, expected):
    prompt = expected["chat_input_ids"]
    with pytest.raises(GenerationConfigError, match="num_beams must be an int >= 1"):
        model.generate(prompt, num_beams=0)
    with pytest.raises(GenerationConfigError, match="unknown argument.*tempreature"):
        model.generate(prompt, tempreature=0.5)
    with pytest.raises(GenerationConfigError, match="top_p"):
        model.generate(prompt, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="different lengths"):
        model.generate([[1, 2, 3], [4, 5]])


# -------------------------------------------------------------------- streamers
def test_text_streamer_never_splits_multibyte_characters(tokenizer):
    text = "emoji 😀🎉 mixed 中文"
    ids = tokenizer.encode(text, add_special_tokens=False)
    sink = io.StringIO()
    pieces = []

    class Recorder(TextStreamer):
        def on_text(self, chunk, stream_end=False):
            pieces.append(chunk)
            super().on_text(chunk, stream_end)

    streamer = Recorder(tokenizer, skip_prompt=True, stream=sink)
    streamer.put(np.array([[64790, 64792]]))
    for token in ids:
        streamer.put(np.array([token]))
    streamer.end()
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert sink.getvalue() == text + "\n"


def test_iterator_streamer_yields_the_generated_text(model, tokenizer, expected):
    import threading

    prompt = expected["chat_input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=False)
    worker = threading.Thread(target=model.generate, args=(prompt,),
                              kwargs=dict(max_new_tokens=24, eos_token_id=CHAT_STOP, streamer=streamer))
    worker.start()
    text = "".join(streamer)
    worker.join()
    assert text == tokenizer.decode(expected["chat_greedy_ids"][0])


def test_generation_config_json_is_read(tmp_path, expected):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    GenerationConfig(eos_token_id=CHAT_STOP, pad_token_id=0, max_length=64).save_pretrained(folder)
    loaded = ChatGLM3ForConditionalGeneration.from_pretrained(folder, ms_dtype=ms.float32)
    assert loaded.generation_config.eos_token_ids == CHAT_STOP
    out = loaded.generate(expected["chat_input_ids"])
    assert out.shape[1] <= 64


def test_bf16_parameters_generate_compiled_like_pynative(expected):
    # CPU has no compiled bf16 gather: the engine looks embeddings up outside the graph
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype="bfloat16")
    prompt = expected["chat_input_ids"]
    compiled = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert compiled.tolist() == model.generate(prompt, max_new_tokens=6, eos_token_id=[], compiled=False).tolist()


# ---------------------------------------------------------------------- out of memory
MINDSPORE_OOM = ("Memory not enough: current free memory size[1048576] is smaller than required size[4294967296].\n\n"
                 "----------------------------------------------------\n- C++ Call Stack: (For framework developers)\n"
                 "mindspore/ccsrc/memory/mem_pool/mem_dynamic_allocator.cc:212 AllocTensorMem\n")


def test_mindspore_out_of_memory_becomes_a_clear_package_error_in_generate_and_chat(model, tokenizer, monkeypatch):
    # Before: MindSpore's RuntimeError and its C++ stack reached the caller.
    from glm3_mindspore import OutOfMemoryError
    from glm3_mindspore.generation.engine import DecodingEngine

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(MINDSPORE_OOM)

    monkeypatch.setattr(DecodingEngine, "prefill", out_of_memory)
    calls = [lambda: model.generate(np.array([[64790, 64792, 30910]]), max_new_tokens=2),
             lambda: model.chat(tokenizer, "你好"),
             lambda: next(model.stream_chat(tokenizer, "你好"))]
    for call in calls:
        with pytest.raises(OutOfMemoryError) as caught:
            call()
        message = str(caught.value)
        assert isinstance(caught.value, MemoryError) and caught.value.__cause__ is None
        parameters = f"{model.num_parameters():,}"
        assert message.startswith(f"generation ran out of host (CPU) memory: the model has {parameters} parameters")
        for advice in ("quantization_bit=8 or 4", "shorten the prompt", "smaller batch", "required size[4294967296]"):
            assert advice in message
        assert "C++ Call Stack" not in message


def test_other_mindspore_runtime_errors_pass_through_generate(model, monkeypatch):
    from glm3_mindspore.generation.engine import DecodingEngine

    def broken(*args, **kwargs):
        raise RuntimeError("some other kernel failure")

    monkeypatch.setattr(DecodingEngine, "prefill", broken)
    with pytest.raises(RuntimeError, match="some other kernel failure"):
        model.generate(np.array([[64790, 64792, 30910]]), max_new_tokens=2)
