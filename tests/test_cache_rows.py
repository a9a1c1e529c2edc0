"""Rows of one KV cache are independent: a sequence joins a batch that is already decoding and decodes as if alone.

This is what continuous batching (a server adding requests to a running
batch) needs of the cache: each row at its own length, a row prefilled while
the others keep what they hold, rows reset for reuse.
"""

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.generation.engine import DecodingEngine
from conftest import TINY

CHAT_STOP = [2, 64795, 64797]


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


def _alone(model, prompt: np.ndarray, steps: int):
    return model.generate(prompt[None], max_new_tokens=steps, eos_token_id=[])[0, len(prompt):].tolist()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pynative"])
def test_a_row_joins_a_decoding_batch_and_both_decode_as_if_alone(model, expected, compiled):
    first = expected["chat_input_ids"][0]
    second = expected["batch_input_ids"][1][expected["batch_attention_mask"][1] > 0]
    engine = DecodingEngine(model, batch=2, cache_length=256, compiled=compiled)
    tokens = {0: [], 1: []}
    positions = np.zeros(2, np.int64)

    def feed(row, prompt):
        logits = engine.prefill(prompt[None], np.arange(len(prompt))[None], np.ones((1, len(prompt))), rows=[row])
        tokens[row].append(int(logits[0].argmax()))
        positions[row] = len(prompt)

    def step(active):
        ids = np.array([[tokens[r][-1] if r in active else 0] for r in (0, 1)])
        mask = np.array([[1 if r in active else 0] for r in (0, 1)])
        logits = engine.decode(ids, positions[:, None], mask)
        for r in active:
            tokens[r].append(int(logits[r].argmax()))
            positions[r] += 1

    feed(0, first)
    for _ in range(3):
        step(active=(0,))  # row 1 is free: its slot is written, marked invalid, never read
    feed(1, second)  # joins while row 0 holds 4 tokens more than its prompt
    for _ in range(5):
        step(active=(0, 1))
    assert tokens[0] == _alone(model, first, 9)
    assert tokens[1] == _alone(model, second, 6)
    assert engine.cache.host_lengths.tolist() == [len(first) + 8, len(second) + 8]


def test_a_reset_row_starts_a_new_sequence_beside_one_that_goes_on(model, expected):
    first = expected["chat_input_ids"][0]
    engine = DecodingEngine(model, batch=2, cache_length=256, compiled=True)
    both = np.stack([first, first])
    logits = engine.prefill(both, np.broadcast_to(np.arange(len(first)), both.shape), np.ones(both.shape))
    model.reset_cache(engine.cache, rows=[1])  # row 1's request left; the row is reused
    second = first[:7]
    again = engine.prefill(second[None], np.arange(7)[None], np.ones((1, 7)), rows=[1])
    assert int(again[0].argmax()) == _alone(model, second, 1)[0]
    assert int(logits[0].argmax()) == _alone(model, first, 1)[0]
    assert engine.cache.host_lengths.tolist() == [len(first), 7]


def test_a_cache_carried_into_a_longer_one_decodes_on_unchanged(model, expected):
    """What a conversation does when its next turn outgrows the cache: the rows move into more slots."""
    prompt = expected["chat_input_ids"][0]
    short, long = (DecodingEngine(model, batch=1, cache_length=length, compiled=True) for length in (256, 512))
    logits = short.prefill(prompt[None], np.arange(len(prompt))[None], np.ones((1, len(prompt))))
    token = np.array([[int(logits[0].argmax())]])
    position = np.array([[len(prompt)]])
    long.take_over(short)
    assert long.cache.host_lengths.tolist() == short.cache.host_lengths.tolist()
    np.testing.assert_array_equal(long.decode(token, position), short.decode(token, position))
