"""The glm3 command line as a parser: every sub-command answers --help, and decoding flags default to the library's."""

import subprocess
import sys

import pytest

from glm3_mindspore.cli import COMMANDS, build_parser
from glm3_mindspore.cli.common import sampling_kwargs
from glm3_mindspore.generation import CHAT_DEFAULTS, GenerationConfig

# sub-commands with sub-commands of their own
NESTED = {"data": ["check", "format-tool-alpaca"], "lora": ["merge"], "parallel": ["plan"],
          "ckpt": ["merge", "reshard", "strategy", "import-mindformers", "export-mindformers"]}


def test_glm3_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "glm3_mindspore", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS] + [[c, s] for c, subs in NESTED.items() for s in subs],
                         ids=" ".join)
def test_every_subcommand_answers_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: glm3 " + " ".join(argv)) and "-h, --help" in out


@pytest.mark.parametrize("command", sorted(NESTED))
def test_nested_help_lists_the_subcommands_tested_here(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert all(sub in out for sub in NESTED[command])


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
