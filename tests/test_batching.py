"""Continuous batching (generation.batching): requests join a running batch, leave it at once, and
each decodes exactly as it would alone."""

import threading
import time

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration
from glm3_mindspore.generation import GenerationConfig, PromptTooLongError
from glm3_mindspore.generation import batching
from glm3_mindspore.generation.batching import (FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, ContinuousBatcher,
                                                engine_sizes)
from glm3_mindspore.generation.engine import DecodingEngine
from conftest import TINY

NO_EOS = GenerationConfig(max_new_tokens=10, eos_token_id=[-1])  # -1: no token ends the stream


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


@pytest.fixture(scope="module")
def batcher(model):
    batcher = ContinuousBatcher(model, max_batch=8, max_length=256).start()
    yield batcher
    batcher.close()


def prompts(count: int):
    return [[64790, 64792] + list(range(300 + 7 * i, 320 + 9 * i)) for i in range(count)]


def alone(model, prompt, new_tokens):
    return model.generate(np.array([prompt]), max_new_tokens=new_tokens, eos_token_id=[])[0, len(prompt):].tolist()


def tokens_of(handle):
    return [event.token_id for event in handle]


def test_eight_requests_decoded_together_equal_each_generated_alone(model, batcher):
    handles = [batcher.submit(p, NO_EOS) for p in prompts(8)]
    replies = [tokens_of(h) for h in handles]
    assert replies == [alone(model, p, 10) for p in prompts(8)]
    assert all(h.finish_reason == FINISH_LENGTH for h in handles)


def test_a_request_joins_a_batch_that_is_decoding_and_both_decode_as_if_alone(model, batcher):
    first, second = prompts(2)
    long_run = GenerationConfig(max_new_tokens=40, eos_token_id=[-1])
    running = batcher.submit(first, long_run)
    events = iter(running)
    head = [next(events).token_id for _ in range(5)]  # the first request is decoding now
    joined = batcher.submit(second, NO_EOS)
    assert tokens_of(joined) == alone(model, second, 10)
    assert head + [e.token_id for e in events] == alone(model, first, 40)


@pytest.mark.parametrize("budget", [batching.ADMIT_TOKENS, 64])
def test_waiting_requests_are_prefilled_together_within_the_token_budget_and_decode_as_if_alone(
        model, monkeypatch, budget):
    expected = [alone(model, p, 10) for p in prompts(8)]
    passes = []
    prefill = DecodingEngine.prefill

    def recorded(engine, ids, positions, mask, rows=None):
        passes.append(ids.shape)
        return prefill(engine, ids, positions, mask, rows=rows)

    monkeypatch.setattr(DecodingEngine, "prefill", recorded)
    monkeypatch.setattr(batching, "ADMIT_TOKENS", budget)
    batcher = ContinuousBatcher(model, max_batch=8, max_length=256)
    handles = [batcher.submit(p, NO_EOS) for p in prompts(8)]  # queued before the worker starts: one burst
    batcher.start()
    try:
        replies = [tokens_of(h) for h in handles]
    finally:
        batcher.close()
    assert replies == expected  # left-padded together, each as alone
    assert sum(rows for rows, _ in passes) == 8
    assert all(rows == 1 or rows * width <= budget for rows, width in passes)
    # prompts of 22, 24, ..., 36 tokens: all eight fit 512 padded tokens in one pass; 64 hold two
    # (2 x 24, 2 x 28, 2 x 32), then the last two one at a time (2 x 36 > 64)
    assert [rows for rows, _ in passes] == ([8] if budget > 64 else [2, 2, 2, 1, 1])


def wait_for(batcher, condition, timeout=60.0):
    """Poll the batcher's stats until ``condition(stats)``; every sample keeps the running rows in the engine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = batcher.stats()
        assert stats["running"] <= stats["engine_rows"]
        if condition(stats):
            return stats
        time.sleep(0.001)
    raise AssertionError(f"not reached in {timeout} s: {batcher.stats()}")


def test_engine_sizes_are_one_row_max_batch_and_its_halves_down_to_four():
    assert engine_sizes(8) == [1, 4, 8]
    assert engine_sizes(16) == [1, 4, 8, 16]
    assert engine_sizes(6) == [1, 6]
    assert engine_sizes(1) == [1]


def test_a_lone_request_decodes_on_one_row_and_moves_to_a_larger_engine_and_back_unchanged(model, batcher):
    first, second = prompts(2)
    expected_first, expected_second = alone(model, first, 200), alone(model, second, 30)  # before: not racing the batcher
    running = batcher.submit(first, GenerationConfig(max_new_tokens=200, eos_token_id=[-1]))
    assert wait_for(batcher, lambda s: s["running"] == 1)["engine_rows"] == 1
    joined = batcher.submit(second, GenerationConfig(max_new_tokens=30, eos_token_id=[-1]))
    assert wait_for(batcher, lambda s: s["running"] == 2)["engine_rows"] == 4  # the smallest engine for two rows
    assert tokens_of(joined) == expected_second
    wait_for(batcher, lambda s: s["engine_rows"] == 1 or s["running"] == 0)
    assert running.finish_reason is None  # moved back while the first request was still decoding
    assert tokens_of(running) == expected_first


def test_rows_move_up_to_the_full_engine_and_down_to_the_half_one_as_requests_come_and_go(model, batcher):
    many = prompts(6)
    expected_long = [alone(model, p, 180) for p in many[:2]]  # before: not racing the batcher
    expected_short = [alone(model, p, 10) for p in many[2:]]
    long_runs = [batcher.submit(p, GenerationConfig(max_new_tokens=180, eos_token_id=[-1])) for p in many[:2]]
    short_runs = [batcher.submit(p, NO_EOS) for p in many[2:]]
    assert wait_for(batcher, lambda s: s["running"] == 6)["engine_rows"] == 8
    assert [tokens_of(h) for h in short_runs] == expected_short
    wait_for(batcher, lambda s: s["engine_rows"] == 4 or s["running"] == 0)
    assert all(h.finish_reason is None for h in long_runs)  # the two long requests moved down while decoding
    assert [tokens_of(h) for h in long_runs] == expected_long


def test_an_eos_token_ends_the_stream_and_frees_the_row(model, batcher):
    prompt = prompts(1)[0]
    expected = alone(model, prompt, 6)
    handle = batcher.submit(prompt, GenerationConfig(max_new_tokens=50, eos_token_id=[expected[3]]))
    assert tokens_of(handle) == expected[:expected.index(expected[3]) + 1]
    assert handle.finish_reason == FINISH_STOP
    assert batcher.stats()["running"] == 0


def test_a_cancelled_request_frees_its_row_within_a_step_and_the_others_go_on(model, batcher):
    first, second = prompts(2)
    endless = GenerationConfig(max_new_tokens=200, eos_token_id=[-1])
    cancelled = batcher.submit(first, endless)
    other = batcher.submit(second, GenerationConfig(max_new_tokens=30, eos_token_id=[-1]))
    done = threading.Event()
    other_tokens = []
    threading.Thread(target=lambda: (other_tokens.extend(tokens_of(other)), done.set())).start()
    events = iter(cancelled)
    next(events)
    cancelled.cancel()
    steps_at_cancel = batcher.stats()["steps"]
    rest = list(events)
    assert rest[-1].finish_reason == FINISH_CANCELLED
    assert batcher.stats()["steps"] - steps_at_cancel <= 2  # gone before the next step (or the one under way)
    assert len(cancelled.generated) < 10
    assert done.wait(60)
    assert other_tokens == alone(model, second, 30)


def test_a_prompt_longer_than_the_model_allows_is_refused_at_submit(batcher):
    with pytest.raises(PromptTooLongError, match="256"):
        batcher.submit(list(range(100, 356)), NO_EOS)


def test_sampled_requests_with_a_seed_repeat_beside_other_requests(batcher):
    prompt = prompts(1)[0]
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.9, top_p=0.9, seed=7, eos_token_id=[-1])
    alone_tokens = tokens_of(batcher.submit(prompt, config))
    crowd = [batcher.submit(p, NO_EOS) for p in prompts(5)]
    beside = batcher.submit(prompt, config)
    assert tokens_of(beside) == alone_tokens
    for handle in crowd:
        tokens_of(handle)


def test_closing_the_batcher_ends_waiting_and_running_requests(model):
    batcher = ContinuousBatcher(model, max_batch=1, max_length=256).start()
    endless = GenerationConfig(max_new_tokens=200, eos_token_id=[-1])
    running, waiting = batcher.submit(prompts(1)[0], endless), batcher.submit(prompts(2)[1], endless)
    next(iter(running))
    time.sleep(0.05)
    batcher.close()
    assert list(running)[-1].finish_reason == FINISH_CANCELLED
    assert list(waiting)[-1].finish_reason == FINISH_CANCELLED
    assert not batcher.alive
