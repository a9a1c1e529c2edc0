"""Beam search: Hugging Face's beam outputs reproduced on the tiny model, cache reordering, scoring rules, errors."""

import json

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration, GenerationConfig
from glm3_mindspore.generation import GenerationConfigError
from glm3_mindspore.generation.beam_search import beam_search
from conftest import FIXTURES, TINY

BEAM_EXPECTED = json.loads((FIXTURES / "beam_expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


@pytest.mark.parametrize("name", sorted(BEAM_EXPECTED["cases"]))
def test_beam_search_reproduces_transformers(model, expected, name):
    """Sequences (to each one's generated length, eos included) as transformers' GlmForCausalLM returns them,
    best first; beyond that, our pad id."""
    case = BEAM_EXPECTED["cases"][name]
    prompt = expected[case["prompt"]]
    kwargs = {"attention_mask": expected["batch_attention_mask"]} if case["prompt"] == "batch_input_ids" else {}
    out = model.generate(prompt, do_sample=False, pad_token_id=0, **kwargs, **case["settings"])
    reference = np.array(case["sequences"])
    assert out.shape[0] == reference.shape[0]
    for row, length in enumerate(case["generated_lengths"]):
        end = prompt.shape[1] + length
        assert out[row, :end].tolist() == reference[row, :end].tolist(), f"row {row}"
        assert (out[row, end:] == 0).all()
    assert out.shape[1] == reference.shape[1]


@pytest.mark.parametrize("setting", [dict(compiled=False), dict(use_cache=False)], ids=["pynative", "no-cache"])
def test_reordered_static_cache_equals_pynative_and_recomputation(model, expected, setting):
    prompt = expected["batch_input_ids"]
    kwargs = dict(attention_mask=expected["batch_attention_mask"], num_beams=3, num_return_sequences=3,
                  max_new_tokens=6, eos_token_id=[2])
    assert model.generate(prompt, **kwargs).tolist() == model.generate(prompt, **setting, **kwargs).tolist()


class _TableDecoder:
    """A fake model: next-token log-probabilities depend on the last token only."""

    def __init__(self, table, prompt):
        self.table, self.last = np.log(np.asarray(table, np.float32)), prompt[:, -1].copy()
        self.reorders = []

    def first_logits(self):
        return self.table[self.last]

    def reorder(self, rows):
        self.reorders.append(rows.tolist())
        self.last = self.last[rows]

    def next_logits(self, tokens):
        self.last = tokens.copy()
        return self.table[self.last]


def test_beam_search_finds_the_path_greedy_misses():
    """Greedy takes token 1 (0.5 > 0.4), but 2 leads to a likelier end: 0.4 * 0.9 beats 0.5 * 0.6."""
    table = [[0.05, 0.5, 0.4, 0.05],  # after 0 (the prompt)
             [0.2, 0.1, 0.1, 0.6],  # after 1: eos (3) at best
             [0.05, 0.025, 0.025, 0.9],  # after 2: eos
             [0.25, 0.25, 0.25, 0.25]]
    prompt = np.zeros((2, 1), np.int64)  # one prompt, two beams
    config = GenerationConfig(num_beams=2, num_return_sequences=2, max_new_tokens=2, length_penalty=0.0)
    decoder = _TableDecoder(table, prompt)
    out = beam_search(decoder, prompt, config, np.array([3]), pad_id=0, max_new=2)
    assert out[:, 1:].tolist() == [[2, 3], [1, 3]]
    assert decoder.reorders == [[0, 0]]  # both running beams ("1", "2") continue the prompt's first row


def test_beam_sampling_is_reproducible_and_stays_in_the_nucleus(model, expected):
    prompt = expected["chat_input_ids"]
    kwargs = dict(num_beams=3, do_sample=True, top_k=5, max_new_tokens=6, eos_token_id=[2], seed=7)
    first, again = model.generate(prompt, **kwargs), model.generate(prompt, **kwargs)
    assert first.tolist() == again.tolist()
    assert model.generate(prompt, **{**kwargs, "seed": 8}).tolist() != first.tolist()


def test_sampling_returns_independent_draws_per_prompt(model, expected):
    prompt = expected["chat_input_ids"]
    out = model.generate(prompt, do_sample=True, num_return_sequences=3, max_new_tokens=5, seed=0)
    assert out.shape == (3, prompt.shape[1] + 5)
    assert len({tuple(row) for row in out[:, prompt.shape[1]:].tolist()}) == 3


def test_beam_settings_are_checked(model, expected):
    prompt = expected["chat_input_ids"]
    with pytest.raises(GenerationConfigError, match="num_return_sequences=5 exceeds num_beams=4"):
        model.generate(prompt, num_beams=4, num_return_sequences=5)
    with pytest.raises(GenerationConfigError, match="greedy decoding would repeat"):
        model.generate(prompt, num_return_sequences=2)
    with pytest.raises(GenerationConfigError, match="early_stopping"):
        model.generate(prompt, num_beams=2, early_stopping="sometimes")
    with pytest.raises(GenerationConfigError, match="cannot stream"):
        next(model.stream_generate(prompt, num_beams=2))


def test_chat_with_beams_answers_once(model, tokenizer):
    response, history = model.chat(tokenizer, "你好", history=[], num_beams=2, do_sample=False, max_length=64)
    assert isinstance(response, str) and history[-1]["role"] == "assistant"


@pytest.mark.parametrize("settings", [{}, {"num_beams": 2, "num_return_sequences": 2}], ids=["greedy", "beams"])
def test_zero_new_tokens_returns_the_prompt(model, settings):
    prompt = [[64790, 64792, 100]]
    assert model.generate(prompt, max_new_tokens=0, **settings).tolist() == prompt * settings.get("num_return_sequences", 1)


def test_zero_new_tokens_still_ends_a_stream(model, tokenizer):
    from glm3_mindspore import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    model.generate([[64790, 64792, 100]], max_new_tokens=0, streamer=streamer)
    assert "".join(streamer) == ""  # ends instead of waiting for text


def test_generation_config_files_with_nulls_take_the_defaults():
    config = GenerationConfig.from_dict({"num_beams": 4, "early_stopping": None, "length_penalty": None,
                                         "top_k": None, "max_new_tokens": None, "diversity_penalty": 0.0})
    assert (config.num_beams, config.early_stopping, config.length_penalty, config.top_k) == (4, False, 1.0, 0)
    assert config.max_new_tokens is None and config.extras == {"diversity_penalty": 0.0}
    with pytest.raises(GenerationConfigError, match="num_beam_groups=2"):
        GenerationConfig.from_dict({"num_beams": 4, "num_beam_groups": 2})
