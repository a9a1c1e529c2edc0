"""The ADGEN metric on pairs computed by hand."""

import jieba
import pytest

from glm3_mindspore.data import load_json_rows
from glm3_mindspore.metrics import AdgenMetric, compute_adgen_metrics, score_pair
from glm3_mindspore.resources import adgen_dev_path

# ROUGE over jieba words (sets of n-grams, F = 2PR / (P + R)); BLEU-4 over characters,
# geometric mean of the four modified precisions times the brevity penalty; method 3
# replaces the k-th zero precision with 1 / (2**k * number of n-grams).
PAIRS = [
    # 这件|衬衫|很|修身 vs 这件|衬衫|很|宽松: unigrams 3/4, bigrams 2/3, LCS 3/4.
    # Characters: 1-grams 5/7, 2-grams 4/6, 3-grams 3/5, 4-grams 2/4 -> (1/7) ** (1/4).
    ("这件衬衫很修身", "这件衬衫很宽松", {"rouge-1": 75.0, "rouge-2": 66.6667, "rouge-l": 75.0, "bleu-4": 61.4788}),
    # 我|爱|北京 vs 我|爱|北京|天安门: P = 1, R = 3/4 -> F = 6/7; bigrams P = 1, R = 2/3 -> 0.8.
    # Characters all match; brevity penalty exp(1 - 7/4).
    ("我爱北京", "我爱北京天安门", {"rouge-1": 85.7143, "rouge-2": 80.0, "rouge-l": 85.7143, "bleu-4": 47.2367}),
    # 今天|很|好 vs 今天|不错: P = 1/3, R = 1/2 -> F = 0.4; no common bigram.
    # Characters: 2/4, 1/3, then 0/2 -> 1/(2*2), 0/1 -> 1/(4*1): (1/2 * 1/3 * 1/4 * 1/4) ** (1/4).
    ("今天很好", "今天不错", {"rouge-1": 40.0, "rouge-2": 0.0, "rouge-l": 40.0, "bleu-4": 31.9472}),
]


def test_segmentation_used_by_the_hand_computations():
    assert list(jieba.cut("这件衬衫很修身")) == ["这件", "衬衫", "很", "修身"]
    assert list(jieba.cut("我爱北京天安门")) == ["我", "爱", "北京", "天安门"]
    assert list(jieba.cut("今天很好")) == ["今天", "很", "好"] and list(jieba.cut("今天不错")) == ["今天", "不错"]


@pytest.mark.parametrize("prediction, reference, expected", PAIRS)
def test_scores_of_fixed_pairs_are_the_hand_computed_ones(prediction, reference, expected):
    assert score_pair(prediction, reference) == pytest.approx(expected, abs=1e-4)


def test_corpus_scores_are_the_average_over_samples():
    scores = compute_adgen_metrics([p for p, _, _ in PAIRS], [r for _, r, _ in PAIRS])
    for name in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert scores[name] == pytest.approx(sum(e[name] for _, _, e in PAIRS) / 3, abs=1e-4)


def test_perfect_predictions_score_100():
    summaries = [row["summary"] for row in load_json_rows(adgen_dev_path())[0][:5]]
    assert compute_adgen_metrics(summaries, summaries) == pytest.approx(dict.fromkeys(
        ("rouge-1", "rouge-2", "rouge-l", "bleu-4"), 100.0), abs=1e-4)


def test_empty_predictions_score_zero_and_are_counted():
    metric = AdgenMetric()
    metric.update(["", "  ", PAIRS[0][0]], ["参考", "参考", PAIRS[0][1]])
    assert metric.empty_predictions == 2 and metric.count == 3
    assert metric.eval()["rouge-1"] == pytest.approx(75.0 / 3, abs=1e-4)
    assert score_pair("有内容", "") == dict.fromkeys(("rouge-1", "rouge-2", "rouge-l", "bleu-4"), 0.0)
    metric.clear()
    assert metric.eval()["bleu-4"] == 0.0 and metric.empty_predictions == 0


def test_mismatched_or_non_text_predictions_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        compute_adgen_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="must be strings"):
        compute_adgen_metrics([[1, 2]], ["a"])
