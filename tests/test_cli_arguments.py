"""The glm3 command line as a parser: decoding flags default to the library's."""

from glm3_mindspore.cli import build_parser
from glm3_mindspore.cli.common import sampling_kwargs
from glm3_mindspore.generation import CHAT_DEFAULTS, GenerationConfig

def test_chat_decoding_defaults_are_chat_defaults_and_generate_ones_generation_configs():
    parser = build_parser()
    chat = sampling_kwargs(parser.parse_args(["chat", "--model", "m"]))
    assert {k: chat[k] for k in ("do_sample", "top_p", "temperature")} == {
        k: CHAT_DEFAULTS[k] for k in ("do_sample", "top_p", "temperature")}
    generate = sampling_kwargs(parser.parse_args(["generate", "hi", "--model", "m"]))
    reference = GenerationConfig()
    assert (generate["do_sample"], generate["temperature"], generate["top_p"], generate["top_k"]) == (
        reference.do_sample, reference.temperature, reference.top_p, reference.top_k)
    chosen = sampling_kwargs(parser.parse_args(["chat", "--model", "m", "--greedy", "--temperature", "0.5"]))
    assert chosen["do_sample"] is False and chosen["temperature"] == 0.5
