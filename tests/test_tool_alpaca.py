"""ToolAlpaca -> ChatGLM3 conversations, as THUDM's format_tool_alpaca.py."""

import json
from collections import Counter

import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.data import (
    ConversationProcessor,
    DataError,
    convert_instance,
    convert_tool_alpaca,
    format_tool_alpaca,
    load_json_rows,
)


@pytest.fixture()
def sample(fixtures_dir):
    return fixtures_dir / "data" / "tool_alpaca_sample.json"


def upstream_convert(setting):
    """THUDM ChatGLM3 finetune_chatmodel_demo/scripts/format_tool_alpaca.py, per API."""
    examples, err_count = [], 0
    api_desc = [setting["NLDocumentation"]]
    for instance in setting["Instances"]:
        try:
            conv = [{"role": "user", "content": instance["input"]}]
            for step in instance["intermediate_steps"]:
                tool_name, params, react = step[0]
                step_thought = react.split("Action:")[0].strip()
                observation = step[1]
                conv.append({"role": "assistant", "content": step_thought})
                conv.append({"role": "tool", "name": tool_name, "parameters": json.loads(params),
                             "observation": observation})
            conv.append({"role": "assistant", "content": instance["Final Thought"] + "\n" + instance["output"]})
        except Exception:
            err_count += 1
        else:
            examples.append({"tools": api_desc, "conversations": conv})
    return examples, err_count


def test_one_instance_by_hand(sample):
    weather = load_json_rows(sample)[0][0]
    example = convert_instance(weather["Instances"][0], [weather["NLDocumentation"]])
    assert example == {
        "tools": [weather["NLDocumentation"]],
        "conversations": [
            {"role": "user", "content": "What's the weather in Beijing right now?"},
            {"role": "assistant", "content": "I need the current weather in Beijing."},
            {"role": "tool", "name": "getWeather", "parameters": {"city": "Beijing"},
             "observation": "Status Code: 200. Response: {\"temperature\": 25, \"conditions\": \"sunny\"}"},
            {"role": "assistant", "content": "I have the current weather in Beijing.\nIt is 25°C and sunny in Beijing."},
        ],
    }


def test_matches_upstream_on_what_upstream_accepts(sample):
    rows, _ = load_json_rows(sample)
    ours, report = convert_tool_alpaca(rows)
    theirs = []
    for setting in rows:
        if "NLDocumentation" in setting:  # upstream dies with KeyError on the others
            theirs.extend(upstream_convert(setting)[0])
    # Upstream keeps the instance whose action input is a JSON array; training then fails on it.
    assert ours == [e for e in theirs if all(isinstance(m.get("parameters", {}), dict) for m in e["conversations"])]
    assert (report.settings, report.instances, report.converted) == (3, 6, 2)
    assert report.turns == Counter({4: 1, 6: 1})


def test_file_conversion_reports_and_keeps_going(sample, tmp_path, tokenizer):
    out = tmp_path / "formatted" / "tool_alpaca.jsonl"
    report = format_tool_alpaca(sample, out)
    assert report.converted == 2 and report.settings == 4
    reasons = [str(e).split(": ", 1)[1] for e in report.skipped]
    assert reasons == [
        "item 3: expected a JSON object, got string",
        "item 0 (WeatherAPI), instance 1: intermediate_steps[0]: action input is not JSON "
        "(Expecting property name enclosed in double quotes)",
        "item 0 (WeatherAPI), instance 2: missing key 'Final Thought'",
        "item 1 (NoDocs): missing NLDocumentation; its 1 instance(s) skipped",
        "item 2 (Calculator), instance 1: intermediate_steps[0]: action input must be a JSON object, got array",
    ]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "°C" in lines[0]  # ensure_ascii=False, like upstream
    processor = ConversationProcessor(tokenizer)
    for line in lines:
        example = processor.encode_row(json.loads(line))
        assert not example["no_labels"]
        assert tokenizer.decode(example["input_ids"]).count("tool_call(") == line.count('"role": "tool"')


def test_unreadable_input_leaves_the_output_alone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    broken = tmp_path / "train_data.json"
    broken.write_text('[{"Name": "x",\n "Instances": [}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        format_tool_alpaca(broken, out)
    assert out.read_text(encoding="utf-8") == "precious\n"


def test_glm3_data_format_tool_alpaca_converts_reports_and_fails_on_a_missing_file(sample, tmp_path, capsys):
    out = tmp_path / "tool_alpaca.jsonl"
    assert main(["data", "format-tool-alpaca", "--path", str(sample), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "6 instances: 2 converted, 4 skipped (5 problems)" in captured.out
    assert "instance 2: missing key 'Final Thought'" in captured.err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    assert main(["data", "format-tool-alpaca", "--path", str(tmp_path / "missing.json"), "--out", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
