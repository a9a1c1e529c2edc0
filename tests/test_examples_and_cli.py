"""The inference examples of MindFormers' glm3 model card and the glm3 generate/chat commands run end to end on the tiny model."""

import io
import os
import subprocess
import sys

import pytest

from glm3_mindspore.cli import main
from conftest import TINY

REPO = TINY.parents[2]


def _run_example(name, **env):
    result = subprocess.run([sys.executable, str(REPO / "examples" / name)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_seed_infer_example_runs():
    lines = [line for line in _run_example("infer.py").splitlines() if line.strip()]
    assert len(lines) >= 2  # one reply per query


@pytest.mark.slow
def test_seed_multi_role_example_runs():
    out = _run_example("multi_role_infer.py", GLM3_MAX_NEW_TOKENS="24")
    assert "history:" in out and "'role': 'system'" in out


def test_tokenize_example_runs():
    out = _run_example("tokenize_tool_chat.py")
    assert "--- observation" in out and "<|assistant|>get_weather" in out


def test_glm3_generate_prints_a_continuation(capsys):
    assert main(["generate", "--model", str(TINY), "你好", "--max-new-tokens", "8", "--greedy"]) == 0
    assert capsys.readouterr().out.strip()


def test_glm3_generate_with_beams_prints_the_best_beam(capsys):
    assert main(["generate", "--model", str(TINY), "你好", "--max-new-tokens", "6", "--num-beams", "3", "--greedy"]) == 0
    assert capsys.readouterr().out.strip()


def test_glm3_chat_keeps_history_and_obeys_commands(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n\nclear\n再见\nexit\n"))
    assert main(["chat", "--model", str(TINY), "--max-length", "48", "--seed", "0", "--system", "你是导游"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and "(conversation cleared)" in out


def test_glm3_chat_bad_tools_file_is_one_clear_line(tmp_path, capsys):
    tools = tmp_path / "tools.json"
    tools.write_text("{not json")
    assert main(["chat", "--model", str(TINY), "--tools", str(tools)]) == 1
    err = capsys.readouterr().err
    assert "tools.json: not valid JSON" in err and "Traceback" not in err
