"""``glm3 serve`` end to end: the real server (uvicorn on a free local port) driven by the official openai client.

The tiny fixture model has random weights: its replies are noise, but greedy
noise is reproducible, which is what most of these tests compare. The tool
tests run a second server on a copy that this module first trains, for a few
seconds, to call a tool (with ``tools`` and with legacy ``functions``), to
answer from the tool's result, and to write a call the safe parser must refuse.
"""

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

openai = pytest.importorskip("openai")

from glm3_mindspore import ChatGLM3ForConditionalGeneration, ChatGLM3Tokenizer  # noqa: E402
from glm3_mindspore.chat import chat_stop_ids  # noqa: E402
from glm3_mindspore.data import Turn, conversation_turns, encode_turns, labels_from_loss_masks  # noqa: E402
from glm3_mindspore.labels import IGNORE_INDEX  # noqa: E402
from glm3_mindspore.serving import BackgroundServer, ServerSettings  # noqa: E402
from conftest import TINY  # noqa: E402

KEY = "test-key"
MODEL = "chatglm3-6b"
MAX_LEN = 512  # the fixture's seq_length
BODY_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def model():
    return ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)


@pytest.fixture(scope="module")
def server(model):
    tokenizer = ChatGLM3Tokenizer.from_pretrained(TINY)
    settings = ServerSettings(model_name=MODEL, api_key=KEY, max_body_bytes=BODY_LIMIT)
    with BackgroundServer(model, tokenizer, settings, max_batch=8, max_model_len=MAX_LEN) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


# ------------------------------------------------------------ a tool-calling tiny model
FUNCTIONS = [{"name": "get_weather", "description": "the weather in a city", "parameters": {"city": "string"}},
             {"name": "lookup", "description": "look a word up", "parameters": {"q": "string"}}]
TOOLS = [{"type": "function", "function": function} for function in FUNCTIONS]
WEATHER_QUESTION = {"role": "user", "content": "北京天气?"}
WEATHER_RESULT = "晴"
WEATHER_ANSWER = "北京晴。"
REFUSED_QUESTION = {"role": "user", "content": "查"}
REFUSED_CALL = "```python\ntool_call(q=__import__('os').system('echo pwned'))\n```"  # not a literal: never run
TRAINING_STEPS = 45
LEARNING_RATE = 2e-2


def tool_conversations(tokenizer):
    """The turns the tool model learns, encoded (ids, labels) by the package's fine-tuning data code."""
    def weather(tools):
        return conversation_turns({"tools": tools, "conversations": [
            WEATHER_QUESTION,
            {"role": "tool", "name": "get_weather", "parameters": {"city": "北京"}, "observation": WEATHER_RESULT},
            {"role": "assistant", "content": WEATHER_ANSWER}]})

    refused = conversation_turns({"tools": TOOLS, "conversations": [REFUSED_QUESTION]}) + [
        Turn("assistant", "lookup", REFUSED_CALL, True), Turn("observation", "", "", False)]
    encoded = [encode_turns(turns, tokenizer) for turns in (weather(TOOLS), weather(FUNCTIONS), refused)]
    return [(ids, labels_from_loss_masks(ids, masks)) for ids, masks in encoded]


def train_to_call_tools(model, tokenizer) -> float:
    """A few Adam steps on the labelled tokens of :func:`tool_conversations`, until greedy decoding writes them.

    The embeddings stay as they are (their gradients are the slow part);
    logits are taken only where a label is. Returns the last loss.
    """
    rows = tool_conversations(tokenizer)
    width = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), width), np.int32)
    labels = np.full((len(rows), width), IGNORE_INDEX, np.int32)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)], labels[i, :len(row_labels)] = row_ids, row_labels
    rows_at, columns_at = np.nonzero(labels[:, 1:] != IGNORE_INDEX)  # position i predicts label i + 1
    where = ms.Tensor(np.stack((rows_at, columns_at), 1).astype(np.int32))
    targets = ms.Tensor(labels[:, 1:][rows_at, columns_at])
    network = model.transformer
    weights = [p for p in model.trainable_params() if "word_embeddings" not in p.name]
    optimizer = nn.Adam(weights, learning_rate=LEARNING_RATE)

    def loss_of(input_ids):
        return ops.cross_entropy(network.output_layer(ops.gather_nd(network(input_ids), where)), targets)

    gradients = ms.value_and_grad(loss_of, None, optimizer.parameters)

    @ms.jit
    def step(input_ids):
        loss, grads = gradients(input_ids)
        optimizer(grads)
        return loss

    model.set_train(True)
    for _ in range(TRAINING_STEPS):
        loss = step(ms.Tensor(ids))
    model.set_train(False)
    return float(loss.asnumpy())


@pytest.fixture(scope="module")
def tool_client():
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    tokenizer = ChatGLM3Tokenizer.from_pretrained(TINY)
    assert train_to_call_tools(model, tokenizer) < 0.05
    with BackgroundServer(model, tokenizer, ServerSettings(model_name=MODEL), max_batch=2, max_model_len=MAX_LEN) as server:
        yield openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def ask(client, text, max_tokens=12, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          temperature=0, max_tokens=max_tokens, **kwargs)


def joined_stream(client, text, max_tokens=12, **kwargs):
    stream = ask(client, text, max_tokens, stream=True, **kwargs)
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return content, finish, chunks


def post(server, path, body: bytes, key=KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(server.url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(value, timeout=30.0):
    """``value()`` once it is truthy (polled), else None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := value()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


def chat_body(**fields):
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


# ------------------------------------------------------------------ happy paths
def test_the_models_list_names_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_health_is_the_readiness_probe_and_needs_no_key(server):
    with urllib.request.urlopen(server.url.replace("/v1", "/health"), timeout=30) as response:
        body = json.loads(response.read())
    assert response.status == 200 and body["status"] == "ok" and body["max_batch"] == 8


def test_a_greedy_chat_reply_is_model_chat_greedy_and_usage_counts_the_tokenizers_tokens(client, model):
    tokenizer = ChatGLM3Tokenizer.from_pretrained(TINY)
    reply = ask(client, "你好")
    expected = model.generate(tokenizer.build_chat_input("你好")["input_ids"], max_new_tokens=12, do_sample=False,
                              eos_token_id=chat_stop_ids(tokenizer))
    prompt_length = len(tokenizer.build_chat_input("你好")["input_ids"][0])
    new_ids = expected[0, prompt_length:].tolist()
    direct, _ = model.chat(tokenizer, "你好", do_sample=False, max_new_tokens=12)
    assert reply.choices[0].message.content == (direct if isinstance(direct, str) else direct["content"])
    assert reply.usage.prompt_tokens == prompt_length
    assert reply.usage.completion_tokens == len(new_ids)
    assert reply.usage.total_tokens == prompt_length + len(new_ids)
    assert reply.choices[0].finish_reason == ("stop" if new_ids[-1] in chat_stop_ids(tokenizer) else "length")


def test_streamed_deltas_joined_equal_the_non_streamed_reply(client):
    whole = ask(client, "讲个故事", max_tokens=30)
    content, finish, chunks = joined_stream(client, "讲个故事", max_tokens=30, stream_options={"include_usage": True})
    assert content == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[0].choices[0].delta.role == "assistant"


class BatchWatcher:
    """The most rows the server's batcher decoded at once while the ``with`` block ran."""

    def __init__(self, batcher) -> None:
        self.batcher, self.most, self.done = batcher, 0, threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while not self.done.wait(0.01):
            self.most = max(self.most, self.batcher.stats()["running"])

    def __enter__(self) -> "BatchWatcher":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.done.set()
        self.thread.join()


def test_eight_concurrent_greedy_requests_equal_their_sequential_replies(server, client):
    questions = [f"问题 {i}: {'为什么' * i}天是蓝的?" for i in range(8)]
    sequential = [ask(client, q, max_tokens=24).choices[0].message.content for q in questions]
    with BatchWatcher(server.service.batcher) as watcher, ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda q: ask(client, q, max_tokens=24).choices[0].message.content, questions))
        streamed = list(pool.map(lambda q: joined_stream(client, q, max_tokens=24)[0], questions))
    assert watcher.most > 4  # they did decode together
    assert concurrent == sequential
    assert streamed == sequential


def test_a_client_that_disconnects_mid_stream_stops_its_generation_and_the_others_are_served(server, client,
                                                                                         monkeypatch):
    handles = []
    submit = server.service.batcher.submit
    monkeypatch.setattr(server.service.batcher, "submit", lambda *a, **k: handles.append(submit(*a, **k)) or handles[-1])
    expected = ask(client, "别走", max_tokens=40).choices[0].message.content
    other = ThreadPoolExecutor(1).submit(lambda: joined_stream(client, "别走", max_tokens=40)[0])
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", chat_body(stream=True, max_tokens=480, temperature=0),
                       {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    leaving = wait_until(lambda: next((h for h in handles if h.max_new_tokens == 480 and h.generated), None))
    connection.sock.shutdown(2)  # the client goes away mid-stream
    connection.close()
    assert wait_until(lambda: leaving.finish_reason) == "cancelled"
    assert len(leaving.generated) < 480
    assert other.result(timeout=120) == expected
    assert server.service.batcher.stats()["running"] == 0


def test_a_raw_completion_continues_the_prompt_and_streams_the_same_text(client):
    whole = client.completions.create(model=MODEL, prompt="从前有座山", max_tokens=10, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="从前有座山", max_tokens=10, temperature=0, stream=True) if c.choices)
    assert whole.choices[0].text == streamed and whole.usage.prompt_tokens == 2 + len(
        ChatGLM3Tokenizer.from_pretrained(TINY).sp_model.encode("从前有座山"))


def test_a_stop_string_ends_the_reply_before_it(client):
    full = ask(client, "数数", max_tokens=20).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = ask(client, "数数", max_tokens=20, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client):
    def sample():
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              temperature=0.9, top_p=0.9, seed=3, max_tokens=8).choices[0].message.content
    assert sample() == sample()


# ------------------------------------------------------------------ tool calls
def ask_tools(tool_client, messages, **kwargs):
    return tool_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=60, **kwargs)


def test_a_tool_call_round_trip(tool_client):
    first = ask_tools(tool_client, [WEATHER_QUESTION], tools=TOOLS).choices[0]
    assert first.finish_reason == "tool_calls" and first.message.content is None
    [call] = first.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "北京"}
    result = {"role": "tool", "tool_call_id": call.id, "content": WEATHER_RESULT}
    answer = ask_tools(tool_client, [WEATHER_QUESTION, first.message, result], tools=TOOLS).choices[0]
    assert answer.message.content == WEATHER_ANSWER and answer.finish_reason == "stop"
    assert not answer.message.tool_calls


def test_a_streamed_tool_call_comes_in_openais_delta_shape(tool_client):
    whole = ask_tools(tool_client, [WEATHER_QUESTION], tools=TOOLS).choices[0].message.tool_calls[0]
    chunks = [c for c in ask_tools(tool_client, [WEATHER_QUESTION], tools=TOOLS, stream=True) if c.choices]
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    opening, *rest = calls
    assert opening.index == 0 and opening.id.startswith("call_") and opening.type == "function"
    assert opening.function.name == "get_weather" and opening.function.arguments == ""
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    assert json.loads("".join(d.function.arguments for d in rest)) == json.loads(whole.function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)


def test_legacy_functions_get_a_function_call_and_a_function_message_gets_the_answer(tool_client):
    first = ask_tools(tool_client, [WEATHER_QUESTION], functions=FUNCTIONS).choices[0]
    assert first.finish_reason == "function_call" and not first.message.tool_calls
    assert first.message.function_call.name == "get_weather"
    assert json.loads(first.message.function_call.arguments) == {"city": "北京"}
    called = {"role": "assistant", "content": None, "function_call": first.message.function_call.model_dump()}
    result = {"role": "function", "name": "get_weather", "content": WEATHER_RESULT}
    answer = ask_tools(tool_client, [WEATHER_QUESTION, called, result], functions=FUNCTIONS).choices[0]
    assert answer.message.content == WEATHER_ANSWER and answer.finish_reason == "stop"
    streamed = [c.choices[0].delta.function_call for c in
                ask_tools(tool_client, [WEATHER_QUESTION], functions=FUNCTIONS, stream=True)
                if c.choices and c.choices[0].delta.function_call]
    assert streamed[0].name == "get_weather"
    assert "".join(d.arguments or "" for d in streamed) == first.message.function_call.arguments


def test_tool_choice_none_gives_the_model_no_tools(tool_client):
    reply = ask_tools(tool_client, [WEATHER_QUESTION], tools=TOOLS, tool_choice="none").choices[0]
    assert not reply.message.tool_calls and reply.finish_reason in ("stop", "length")


def test_a_call_the_safe_parser_refuses_comes_back_as_text_with_the_reason_and_is_never_run(tool_client):
    reply = ask_tools(tool_client, [REFUSED_QUESTION], tools=TOOLS).choices[0]
    assert reply.finish_reason == "stop" and not reply.message.tool_calls
    assert "__import__('os').system('echo pwned')" in reply.message.content
    assert "tool_call" in reply.message.model_extra["tool_call_error"]
    chunks = [c.choices[0].delta for c in ask_tools(tool_client, [REFUSED_QUESTION], tools=TOOLS, stream=True)
              if c.choices]
    assert "".join(d.content or "" for d in chunks) == reply.message.content
    assert [d.model_extra["tool_call_error"] for d in chunks if "tool_call_error" in d.model_extra] == [
        reply.message.model_extra["tool_call_error"]]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("body, status, param, code", [
    (b'{"model": "chatglm3-6b", "messages": [', 400, None, "invalid_json"),
    (json.dumps({"model": MODEL}).encode(), 400, "messages", "missing"),
    (json.dumps({"model": MODEL, "messages": []}).encode(), 400, "messages", "too_short"),
    (json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}).encode(), 400,
     "messages[0].role", "literal_error"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user"}]}).encode(), 400, "messages[0].content", None),
    (chat_body(temperature="hot"), 400, "temperature", "float_type"),
    (chat_body(temperature="0.5"), 400, "temperature", "float_type"),
    (chat_body(messages="hello"), 400, "messages", "list_type"),
    (chat_body(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    (chat_body(stream="yes"), 400, "stream", "bool_type"),
    (chat_body(tools="get_weather"), 400, "tools", "list_type"),
    (chat_body(stop=7), 400, "stop", None),
    (chat_body(top_p=1.5), 400, "top_p", "less_than_equal"),
    (b'["not", "an", "object"]', 400, None, None),
    (chat_body(max_tokens=0), 400, "max_tokens", "greater_than"),
    (chat_body(max_tokens=-5), 400, "max_tokens", "greater_than"),
    (chat_body(max_tokens=MAX_LEN), 400, "max_tokens", "context_length_exceeded"),
    (chat_body(messages=[{"role": "user", "content": "很长 " * 600}]), 400, "messages", "context_length_exceeded"),
    (chat_body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]), 400, "messages",
     None),
    (chat_body(n=2), 400, "n", "unsupported_value"),
    (chat_body(tool_choice="required", tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tool_choice",
     "unsupported_value"),
    (chat_body(tools=[{"type": "function"}]), 400, "tools[0]", None),
    (chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    (chat_body(model="gpt-4"), 404, "model", "model_not_found"),
    (b'{"model": "chatglm3-6b", "messages": [{"role": "user", "content": "' + b"x" * BODY_LIMIT + b'"}]}', 413,
     None, "request_too_large"),
    (b'{"model": "chatglm3-6b", "messages": [{"role": "user", "content": "q"}], "tools": '
     + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, None),
    (chat_body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 50_000 + "]" * 50_000}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}]), 400, "messages[1].tool_calls[0]", None),
    (chat_body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "function_call":
        {"name": "f", "arguments": '{"x": ' + "[" * 50_000 + "]" * 50_000 + "}"}},
        {"role": "function", "name": "f", "content": "r"}]), 400, "messages[1].function_call", None),
    (chat_body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"arguments": "{}"}}]}, {"role": "tool", "content": "r"}]), 400,
     "messages[1].tool_calls[0].function.name", "missing"),
])
def test_bad_input_gets_an_openai_error_body_naming_the_field(server, client, body, status, param, code):
    got, error = post(server, "/chat/completions", body)
    assert got == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"} and error["error"]["message"]
    assert error["error"]["param"] == param
    if code is not None:
        assert error["error"]["code"] == code
    assert ask(client, "还在吗", max_tokens=2).choices  # the server, and its worker, go on


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_api_key_is_a_401(server, key):
    status, error = post(server, "/chat/completions", chat_body(), key=key)
    assert status == 401 and error["error"]["code"] == "invalid_api_key"
    if key is not None:  # the openai client itself refuses to send no key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key=key, max_retries=0).models.list()


def test_the_server_binds_to_localhost_by_default(server):
    assert server.host == "127.0.0.1"
    from glm3_mindspore.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"
