"""ADGEN rows in both layouts, the bundled dev split through ``datasets``, and batching."""

import json
import pickle
import re
import sys

import numpy as np
import pytest

from glm3_mindspore.data import (
    AdgenProcessor,
    ConversationProcessor,
    DataCollator,
    DataConfig,
    DataError,
    LengthBucketSampler,
    build_dataset,
)
from glm3_mindspore.resources import adgen_dev_path

GMASK, SOP, USER, ASSISTANT, EOS = 64790, 64792, 64795, 64796, 2
X = -100
CONTENT, SUMMARY = "类型#裙*颜色#红色", "红色连衣裙。"
CONTENT_IDS = [30910, 33467, 31010, 56778, 30998, 33692, 31010, 32632]  # ▁ 类型 # 裙 * 颜色 # 红色
SUMMARY_IDS = [30910, 32632, 44724, 31155]  # ▁ 红色 连衣裙 。
NEWLINE = [30910, 13]  # ▁ \n : the metadata "" + "\n" of a turn


@pytest.fixture(scope="module")
def dev_rows():
    return [json.loads(line) for line in adgen_dev_path().read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------ one row
def test_chat_row_token_by_token(tokenizer):
    example = AdgenProcessor(tokenizer, DataConfig(format="chat")).encode(CONTENT, SUMMARY)
    prompt = [GMASK, SOP, USER, *NEWLINE, *CONTENT_IDS, ASSISTANT]
    target = [*NEWLINE, *SUMMARY_IDS, EOS]
    assert example["input_ids"] == prompt + target
    assert example["labels"] == [X] * len(prompt) + target
    assert prompt == tokenizer.build_chat_input(CONTENT)["input_ids"][0].tolist()  # training matches inference
    assert target[:-1] == tokenizer.build_single_message("assistant", "", SUMMARY)[1:]


def test_plain_row_token_by_token(tokenizer):
    example = AdgenProcessor(tokenizer, DataConfig(format="plain")).encode(CONTENT, SUMMARY)
    assert example["input_ids"] == [GMASK, SOP, *CONTENT_IDS, *SUMMARY_IDS, EOS]
    assert example["labels"] == [X] * 10 + [*SUMMARY_IDS, EOS]


def test_chat_row_is_the_two_turn_conversation(tokenizer, dev_rows):
    adgen = AdgenProcessor(tokenizer, DataConfig(max_source_length=256, max_target_length=256))
    conversations = ConversationProcessor(tokenizer)
    for row in dev_rows[:20]:
        turns = {"conversations": [{"role": "user", "content": row["content"]},
                                   {"role": "assistant", "content": row["summary"]}]}
        expected = conversations.encode_row(turns)
        example = adgen.encode_row(row)
        assert (example["input_ids"], example["labels"]) == (expected["input_ids"], expected["labels"])


def test_truncation_cuts_content_and_keeps_the_assistant_token(tokenizer):
    config = DataConfig(format="chat", max_source_length=10, max_target_length=3)
    example = AdgenProcessor(tokenizer, config).encode(CONTENT, SUMMARY)
    assert example["input_ids"] == [GMASK, SOP, USER, *NEWLINE, *CONTENT_IDS[:4], ASSISTANT, 30910, 13, 30910, EOS]
    assert example["labels"] == [X] * 10 + [30910, 13, 30910, EOS]
    assert example["source_truncated"] and example["target_truncated"]
    plain = AdgenProcessor(tokenizer, DataConfig(format="plain", max_source_length=5, max_target_length=2))
    example = plain.encode(CONTENT, SUMMARY)
    assert example["input_ids"] == [GMASK, SOP, *CONTENT_IDS[:3], *SUMMARY_IDS[:2], EOS]
    assert len(example["input_ids"]) <= plain.config.seq_length


def test_eval_mode_gives_prompt_and_reference(tokenizer):
    example = AdgenProcessor(tokenizer, DataConfig(256, 256), mode="eval").encode(CONTENT, SUMMARY)
    assert example["input_ids"][-1] == ASSISTANT
    assert example["input_ids"] == tokenizer.build_chat_input(CONTENT)["input_ids"][0].tolist()
    assert example["reference"] == SUMMARY and "labels" not in example


def test_bad_settings_and_rows(tokenizer):
    with pytest.raises(DataError, match="format must be"):
        DataConfig(format="alpaca")
    with pytest.raises(DataError, match="max_target_length must be a positive integer"):
        DataConfig(max_target_length=0)
    with pytest.raises(DataError, match="leaves no room"):
        AdgenProcessor(tokenizer, DataConfig(max_source_length=6))
    processor = AdgenProcessor(tokenizer)
    with pytest.raises(DataError, match="row 1 of the batch: 'summary' must be a string, got null"):
        processor({"content": ["a", "b"], "summary": ["x", None]})
    with pytest.raises(DataError, match="no 'summary' column"):
        processor({"content": ["a"], "answer": ["x"]})


# --------------------------------------------------- the reference fixture
def test_reproduces_expected_train_batch_layout(tokenizer, dev_rows, expected_train):
    """expected_train.npz: build_chat_input(content) + ids("\\n" + summary)[:40] + eos, right-padded.

    Upstream's fixture encoded "\\n" + summary as one text; build_single_message
    (what upstream multi-turn fine-tuning and our chat format use) encodes the
    "\\n" and the summary separately, which adds one "▁" (30910) before the summary.
    Everything else — prompt, eos, -100 masks, padding, positions — is identical.
    """
    processor = AdgenProcessor(tokenizer, DataConfig(max_source_length=256, max_target_length=40))
    examples = [processor.encode_row(row) for row in dev_rows[:4]]
    for example, row, ids, mask in zip(examples, dev_rows, expected_train["input_ids"], expected_train["attention_mask"]):
        fixture = ids[mask == 1].tolist()
        prompt = tokenizer.build_chat_input(row["content"])["input_ids"][0].tolist()
        assert example["input_ids"][:len(prompt)] == fixture[:len(prompt)] == prompt
        ours, theirs = example["input_ids"][len(prompt):], fixture[len(prompt):]
        assert ours[:2] == theirs[:2] == NEWLINE and ours[-1] == theirs[-1] == EOS
        assert ours[2:] == ([30910] + theirs[2:-1])[:38] + [EOS]  # the one extra "▁"

    # The collator turns the fixture's own rows into exactly its padded arrays.
    rows = [{"input_ids": ids[mask == 1], "labels": labels[mask == 1]}
            for ids, labels, mask in zip(*(expected_train[k] for k in ("input_ids", "labels", "attention_mask")))]
    batch = DataCollator()(rows)
    for key in ("input_ids", "labels", "attention_mask", "position_ids"):
        np.testing.assert_array_equal(batch[key], expected_train[key])
    ours = DataCollator()(examples)
    np.testing.assert_array_equal(ours["attention_mask"], expected_train["attention_mask"])
    np.testing.assert_array_equal(ours["position_ids"], expected_train["position_ids"])
    np.testing.assert_array_equal(ours["labels"] == X, expected_train["labels"] == X)


# ----------------------------------------------------- the dev split, 1,070 rows
@pytest.mark.parametrize("fmt, source, target, counts", [
    ("chat", 64, 127, {"source_truncated": 71, "target_truncated": 8}),
    ("plain", 64, 127, {"source_truncated": 42, "target_truncated": 6}),
    ("chat", 256, 256, {"source_truncated": 0, "target_truncated": 0}),
    ("plain", 256, 256, {"source_truncated": 0, "target_truncated": 0}),
])
def test_dev_split_through_datasets(tokenizer, fmt, source, target, counts):
    config = DataConfig(format=fmt, max_source_length=source, max_target_length=target)
    dataset, stats = build_dataset(adgen_dev_path(), AdgenProcessor(tokenizer, config))
    assert len(dataset) == stats.rows_read == stats.rows_kept == 1070 and not stats.skipped
    assert stats.counts == counts
    assert max(len(ids) for ids in dataset["input_ids"]) <= config.seq_length
    assert all(len(i) == len(l) for i, l in zip(dataset["input_ids"], dataset["labels"]))


def test_truncation_is_logged_and_missing_datasets_is_explained(tokenizer, dev_rows, caplog, monkeypatch):
    _, stats = build_dataset(dev_rows[:50], AdgenProcessor(tokenizer, DataConfig(max_target_length=20)))
    assert stats.source == "<rows>" and stats.counts["target_truncated"] == 50
    assert "50 rows processed, 0 skipped as malformed; source_truncated: 5, target_truncated: 50" in caplog.text
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=re.escape("pip install 'glm3-mindspore[data]'")):
        build_dataset(dev_rows[:1], AdgenProcessor(tokenizer))


def test_load_dataset_json_map_and_num_proc(tokenizer, tmp_path, dev_rows):
    datasets = pytest.importorskip("datasets")
    processor = AdgenProcessor(tokenizer)
    raw = datasets.load_dataset("json", data_files=str(adgen_dev_path()), split="train",
                                cache_dir=str(tmp_path / "cache"))
    mapped = raw.select(range(200)).map(processor, batched=True, num_proc=2, remove_columns=raw.column_names)
    assert mapped[7]["input_ids"] == processor.encode_row(dev_rows[7])["input_ids"]
    assert sum(mapped["source_truncated"]) == sum(processor.encode_row(r)["source_truncated"] for r in dev_rows[:200])
    assert pickle.loads(pickle.dumps(processor)).encode_row(dev_rows[0]) == processor.encode_row(dev_rows[0])


def test_malformed_rows_are_skipped_with_line_numbers(tokenizer, tmp_path, dev_rows):
    lines = [json.dumps(r, ensure_ascii=False) for r in dev_rows[:3]]
    lines[1:1] = ['{"content": "x", "summary": 3}', "not json", "", '["a list"]']
    path = tmp_path / "train.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset, stats = build_dataset(path, AdgenProcessor(tokenizer))
    assert len(dataset) == 3 and stats.rows_read == 6
    assert [(e.line, e.message.split(":")[0]) for e in stats.skipped] == [
        (2, "'summary' must be a string, got number"), (3, "not valid JSON"), (5, "expected a JSON object, got array")]
    path.write_text("nope\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable rows"):
        build_dataset(path, AdgenProcessor(tokenizer))


# ------------------------------------------------------------------ batching
def test_collator_dynamic_fixed_and_left_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [X, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = DataCollator()(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [8, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert batch["input_ids"].dtype == np.int64
    assert DataCollator(pad_to=5)(rows)["input_ids"].shape == (2, 5)
    assert DataCollator(pad_to_multiple_of=4)(rows)["labels"].tolist()[1] == [8, X, X, X]
    with pytest.raises(DataError, match="more than pad_to=2"):
        DataCollator(pad_to=2)(rows)
    left = DataCollator(padding_side="left")([{"input_ids": [5, 6, 7], "reference": "a"},
                                               {"input_ids": [8], "reference": "b"}])
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert left["reference"] == ["a", "b"] and "labels" not in left


def test_length_bucket_sampler():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47, 9, 46]
    sampler = LengthBucketSampler(lengths[:8], batch_size=2, batches_per_bucket=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(abs(lengths[a] - lengths[b]) == 1 for a, b in batches)  # similar lengths together
    assert batches == list(sampler)  # deterministic per epoch
    sampler.set_epoch(1)
    assert batches != list(sampler)
    odd = LengthBucketSampler(lengths[:7], batch_size=2, drop_last=True)
    assert len(odd) == len(list(odd)) == 3
    ordered = LengthBucketSampler(lengths, batch_size=5, batches_per_bucket=1, shuffle=False)
    assert list(ordered) == [[1, 3, 4, 2, 0], [5, 7, 9, 8, 6]]  # longest first in each bucket
