"""``glm3 data check`` and the forgiving JSON-lines reader behind it."""

import json

import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.data import DataError, load_json_rows, read_json_rows
from glm3_mindspore.resources import adgen_dev_path
from conftest import run_measured


# ------------------------------------------------------------------ reader
def test_reader_reports_bad_lines_and_keeps_going(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n{"a": \n\xff\xfe{}\n[1]\n"text"\n{"a": 2}')
    rows, errors = load_json_rows(path)
    assert rows == [{"a": 1}, {"a": 2}]
    assert [(e.line, e.message) for e in errors] == [
        (3, "not valid JSON: Expecting value at column 7"),
        (4, "not valid UTF-8 (byte 0xff at column 1)"),
        (5, "expected a JSON object, got array"),
        (6, "expected a JSON object, got string"),
    ]
    assert str(errors[0]) == f"{path}: line 3: not valid JSON: Expecting value at column 7"
    assert read_json_rows(path).where == ["line 1", "line 7"]


def test_reader_json_array_and_pretty_object(tmp_path):
    array = tmp_path / "array.json"
    array.write_text('[{"a": 1}, 2, {"b": 3}]', encoding="utf-8")
    rows, errors = load_json_rows(array)
    assert rows == [{"a": 1}, {"b": 3}] and [e.where for e in errors] == ["item 1"]
    pretty = tmp_path / "one.json"
    pretty.write_text('{\n  "a": 1\n}\n', encoding="utf-8")
    assert load_json_rows(pretty) == ([{"a": 1}], [])
    with pytest.raises(DataError, match="no such file"):
        load_json_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        load_json_rows(tmp_path)


# --------------------------------------------------------------------- CLI
def test_check_dev_split_with_token_counts(capsys, tiny_dir):
    code = main(["data", "check", str(adgen_dev_path()), "--tokenizer", str(tiny_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1070 rows, 1070 usable, 0 malformed" in out
    assert "chat format, max_source_length=64, max_target_length=127): source_truncated: 71, target_truncated: 8" in out
    main(["data", "check", str(adgen_dev_path()), "--tokenizer", str(tiny_dir), "--adgen-format", "plain",
          "--max-source-length", "256", "--max-target-length", "256"])
    assert "source_truncated: 0, target_truncated: 0; row length min" in capsys.readouterr().out


def test_check_malformed_lines_reports_line_numbers_and_keeps_going(tmp_path, capsys, tiny_dir):
    good = json.dumps({"content": "类型#裙", "summary": "好看。"}, ensure_ascii=False)
    path = tmp_path / "train.json"
    path.write_text("\n".join([good, "{oops", good, '{"content": "x"}', good, "]"]) + "\n", encoding="utf-8")
    code = main(["data", "check", str(path), "--tokenizer", str(tiny_dir), "--max-errors", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"{path}: line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2",
        f"{path}: line 4: missing key 'summary' (keys: content)",
        "... and 1 more",
    ]
    assert "6 rows, 3 usable, 3 malformed" in captured.out
    assert "source_truncated: 0, target_truncated: 0" in captured.out


def test_check_conversations(tmp_path, capsys, tiny_dir):
    row = {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    bad = {"conversations": [{"role": "tool", "name": "f"}]}
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    code = main(["data", "check", str(path), "--format", "conversations", "--tokenizer", str(tiny_dir),
                 "--max-seq-length", "8"])
    captured = capsys.readouterr()
    assert code == 1
    assert "line 2: conversations[0].parameters must be an object of tool arguments, got null" in captured.err
    assert "max_seq_length=8): truncated: 1, no_labels: 1; row length min 8" in captured.out


def test_check_without_tokenizer_and_bad_invocations(tmp_path, capsys):
    assert main(["data", "check", str(adgen_dev_path())]) == 0
    assert "tokens" not in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nope.json")]) == 1
    assert "glm3 data: error:" in capsys.readouterr().err
    assert main(["data", "check", str(adgen_dev_path()), "--max-source-length", "0"]) == 1
    assert "max_source_length must be a positive integer" in capsys.readouterr().err
    assert main(["data"]) == 2


# ------------------------------------------------------------------ hostile and careless input
def test_reader_reports_a_row_longer_than_the_limit_without_reading_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": "' + "x" * 5000 + '"}\n{"a": 2}\n{"a": "' + "y" * 5000 + '"}')
    result = read_json_rows(path, max_row_bytes=1000)
    assert result.rows == [{"a": 1}, {"a": 2}] and result.where == ["line 1", "line 3"]
    assert [str(e) for e in result.errors] == [
        f"{path}: line {n}: row longer than 1000 bytes, the limit (max_row_bytes): not read" for n in (2, 4)]


def test_check_streams_a_50_mb_line_in_bounded_time_and_memory(tmp_path):
    # Before: 24 s and 2.98 GB for one 50 MB line.
    path = tmp_path / "huge.json"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"content": "' + "x" * (50 << 20) + '", "summary": "s"}\n{"content": "c", "summary": "s"}\n')
    check = run_measured("from glm3_mindspore.cli import main", "main(['data', 'check', sys.argv[1]])", str(path))
    assert check["result"] == "1" and "line 1: row longer than 1048576 bytes" in check["stderr"]
    assert "2 rows, 1 usable, 1 malformed" in check["stdout"]
    assert check["seconds"] < 5 and check["grown_mb"] < 50


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_check_of_an_empty_file_is_an_error(tmp_path, capsys, content):
    # Before: "0 rows, 0 usable, 0 malformed" and exit 0.
    path = tmp_path / "empty.json"
    path.write_text(content, encoding="utf-8")
    assert main(["data", "check", str(path)]) == 1
    assert f"glm3 data: error: {path}: no rows: the file is empty or blank" in capsys.readouterr().err
    with pytest.raises(DataError, match="no rows"):
        read_json_rows(path)
