"""The ADGEN metric of ChatGLM's P-Tuning ``main.py`` and MindFormers' ``ADGENMetric``.

Per (prediction, reference) pair, exactly as upstream ``compute_metrics``:

* ROUGE-1 / ROUGE-2 / ROUGE-L: F1 of :mod:`rouge_chinese` over **jieba words**
  (both texts cut with ``jieba.cut`` and joined with spaces), times 100;
* BLEU-4: ``nltk`` ``sentence_bleu([list(reference)], list(prediction))`` over
  **characters**, smoothing method 3, times 100;

each rounded to 4 decimals, then averaged over the pairs. Upstream crashes on a
prediction (or reference) with no words; here such a pair scores 0 on all
four metrics, is still averaged in, and is counted in ``empty_predictions`` /
``empty_references``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

METRIC_NAMES = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def _backends():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:
        raise ImportError(f"the ADGEN metric needs jieba, rouge_chinese and nltk ({exc.name} is missing): "
                          "pip install 'glm3-mindspore[eval]'") from None
    return jieba, Rouge, sentence_bleu, SmoothingFunction().method3


def score_pair(prediction: str, reference: str) -> Dict[str, float]:
    """The four scores (x100, rounded to 4 places) of one pair; all 0 if either text has no words."""
    jieba, Rouge, sentence_bleu, method3 = _backends()
    hypothesis = " ".join(jieba.cut(prediction))
    target = " ".join(jieba.cut(reference))
    if not hypothesis.split() or not target.split():
        return dict.fromkeys(METRIC_NAMES, 0.0)
    rouge = Rouge().get_scores(hypothesis, target)[0]
    scores = {name: round(rouge[name]["f"] * 100, 4) for name in METRIC_NAMES[:3]}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=method3)
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


class AdgenMetric:
    """Accumulate pairs batch by batch (MindFormers' ``update`` / ``eval`` / ``clear``)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.scores: Dict[str, List[float]] = {name: [] for name in METRIC_NAMES}
        self.empty_predictions = 0
        self.empty_references = 0

    def update(self, predictions: Iterable[str], references: Iterable[str]) -> None:
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
        for prediction, reference in zip(predictions, references):
            if not isinstance(prediction, str) or not isinstance(reference, str):
                raise ValueError("predictions and references must be strings (decode the ids first)")
            self.empty_predictions += not prediction.strip()
            self.empty_references += not reference.strip()
            for name, value in score_pair(prediction, reference).items():
                self.scores[name].append(value)

    @property
    def count(self) -> int:
        return len(self.scores["bleu-4"])

    def eval(self) -> Dict[str, float]:
        """Mean of each metric over the pairs seen (0.0 for none)."""
        return {name: (sum(v) / len(v) if v else 0.0) for name, v in self.scores.items()}

    compute = eval


def compute_adgen_metrics(predictions: Iterable[str], references: Iterable[str]) -> Dict[str, float]:
    """``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}`` averaged over the pairs."""
    metric = AdgenMetric()
    metric.update(predictions, references)
    return metric.eval()
