"""Beam search (and beam sampling) over the decoding engine, with Hugging Face's scoring and stopping.

The search runs on the host in NumPy on ``[batch, beams, vocab]`` log-probabilities;
the model runs ``batch * num_beams`` rows in the same compiled graphs as greedy
decoding, and the KV cache rows follow their beams (``decoder.reorder``).

Semantics are those of transformers' (5.x) ``_beam_search``: each step keeps
the best ``max(2, 1 + #eos) * num_beams`` continuations of all beams; one that
ends (an eos id, or the length limit) among the first ``num_beams`` becomes a
finished hypothesis scored ``sum of log-probs / generated_length ** length_penalty``
(the eos counted); the best ``num_beams`` that do not end run on. A prompt is done
when no running beam can beat its worst finished one (``early_stopping=False``,
judged at the current length; ``"never"`` with a positive penalty judges at the
maximum length), or as soon as ``num_beams`` hypotheses finished
(``early_stopping=True``). Returned sequences are the finished hypotheses, best
first, padded with the pad id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .config import GenerationConfig
from .logits import apply_processors, apply_warpers, log_softmax

NEG_INF = np.float32(-1.0e9)  # Hugging Face's "impossible" score offset


@dataclass
class _Finished:
    """The best ``num_beams`` finished hypotheses of each prompt: ids, scores, generated lengths."""

    sequences: np.ndarray  # [B, K, T]
    scores: np.ndarray  # [B, K], -1e9 where empty
    lengths: np.ndarray  # [B, K] generated tokens, eos included
    filled: np.ndarray  # [B, K] bool


class BeamSearch:
    """One search over ``batch`` prompts already repeated ``num_beams`` times (rows ``b * K + k``)."""

    def __init__(self, prompt: np.ndarray, config: GenerationConfig, eos_ids: np.ndarray, pad_id: int,
                 max_new: int, rng: Optional[np.random.Generator] = None) -> None:
        self.K = config.num_beams
        self.B = prompt.shape[0] // self.K
        self.P = prompt.shape[1]
        self.T = self.P + max_new
        self.config = config
        self.eos_ids = eos_ids
        self.rng = rng
        self.keep = max(2, 1 + len(eos_ids)) * self.K
        running = np.full((self.B, self.K, self.T), pad_id, dtype=np.int64)
        running[:, :, : self.P] = prompt.reshape(self.B, self.K, self.P)
        self.running = running
        self.running_scores = np.zeros((self.B, self.K), np.float32)
        self.running_scores[:, 1:] = NEG_INF  # the K copies of a prompt are one beam at first
        self.finished = _Finished(running.copy(), np.full((self.B, self.K), NEG_INF, np.float32),
                                  np.zeros((self.B, self.K), np.int64), np.zeros((self.B, self.K), bool))
        self.running_parent = np.zeros((self.B, self.K), np.int64)  # beam each running row continues
        self.improvable = np.ones(self.B, bool)
        self.length = self.P  # tokens per running row so far

    # ------------------------------------------------------------------ step
    def step(self, logits: np.ndarray, processors: Sequence[Callable]) -> Optional[np.ndarray]:
        """Advance with the next-token ``logits`` ``[B*K, V]`` of the running rows.

        Returns the parent row of each new running row (the KV cache must be
        reordered so), or ``None`` when the search is over.
        """
        B, K, cur = self.B, self.K, self.length
        rows = self.running.reshape(B * K, self.T)[:, :cur]
        log_probs = apply_processors(log_softmax(logits.astype(np.float32)), rows, self.config)
        for processor in processors:
            log_probs = processor(rows, log_probs)
        if self.config.do_sample:
            # as transformers 5.x: each beam keeps at least #eos + 1 tokens, so one that can go on is among them
            log_probs = apply_warpers(log_probs, self.config, min_keep=max(2, len(self.eos_ids) + 1))
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(B, K, vocab) + self.running_scores[:, :, None]).reshape(B, K * vocab)
        top_scores, top_index = self._candidates(totals)
        parent, token = top_index // vocab, top_index % vocab
        candidates = np.take_along_axis(self.running, parent[:, :, None], axis=1)
        candidates[:, :, cur] = token
        ends = np.isin(token, self.eos_ids) | (cur + 1 >= self.T)

        self._keep_running(top_scores, candidates, parent, ends)
        self._keep_finished(top_scores, candidates, ends, cur)
        self.length = cur + 1
        self._update_improvable()
        if not self._unfinished(ends):
            return None
        return (np.arange(B)[:, None] * K + self.running_parent).reshape(-1)

    def _candidates(self, totals: np.ndarray):
        """The ``keep`` best continuations per prompt, best first (drawn without replacement when sampling)."""
        if self.config.do_sample:
            # Gumbel top-k: ``keep`` draws without replacement from softmax(totals)
            keys = totals.astype(np.float64) + self.rng.gumbel(size=totals.shape)
            index = np.argsort(-keys, axis=-1, kind="stable")[:, : self.keep]
            scores = np.take_along_axis(totals, index, axis=-1)
            order = np.argsort(-scores, axis=-1, kind="stable")
            return np.take_along_axis(scores, order, axis=-1), np.take_along_axis(index, order, axis=-1)
        index = np.argsort(-totals, axis=-1, kind="stable")[:, : self.keep]
        return np.take_along_axis(totals, index, axis=-1), index

    def _keep_running(self, top_scores, candidates, parent, ends) -> None:
        scores = top_scores + ends.astype(np.float32) * NEG_INF
        best = np.argsort(-scores, axis=-1, kind="stable")[:, : self.K]
        self.running = np.take_along_axis(candidates, best[:, :, None], axis=1)
        self.running_scores = np.take_along_axis(scores, best, axis=-1)
        self.running_parent = np.take_along_axis(parent, best, axis=-1)

    def _keep_finished(self, top_scores, candidates, ends, cur: int) -> None:
        K, f = self.K, self.finished
        generated = cur + 1 - self.P
        new = ends & (np.arange(self.keep) < K)[None, :]
        scores = top_scores / np.float32(generated ** self.config.length_penalty)
        full = f.filled.all(axis=1) & (self.config.early_stopping is True)
        scores = scores + NEG_INF * (full | ~self.improvable)[:, None].astype(np.float32)
        scores = scores + NEG_INF * (~new).astype(np.float32)
        merged_scores = np.concatenate([f.scores, scores], axis=1)
        best = np.argsort(-merged_scores, axis=-1, kind="stable")[:, :K]
        f.sequences = _best_of(f.sequences, candidates, best)
        f.lengths = _best_of(f.lengths, np.full(new.shape, generated, np.int64), best)
        f.filled = _best_of(f.filled, new, best)
        f.scores = np.take_along_axis(merged_scores, best, axis=-1)

    def _update_improvable(self) -> None:
        """Hugging Face's early-stop heuristic: can the best running beam still beat the worst finished one?"""
        penalty = self.config.length_penalty
        if self.config.early_stopping == "never" and penalty > 0.0:
            length = self.T - self.P
        else:
            length = self.length - self.P
        best_possible = self.running_scores[:, 0] / np.float32(length ** penalty)
        worst = np.where(self.finished.filled, self.finished.scores.min(axis=1, keepdims=True), NEG_INF)
        self.improvable &= (best_possible[:, None] > worst).any(axis=1)

    def _unfinished(self, ends: np.ndarray) -> bool:
        open_beams = not (self.finished.filled.all() and self.config.early_stopping is True)
        return bool(self.improvable.any()) and open_beams and not bool(ends.all())

    # ---------------------------------------------------------------- result
    def running_tokens(self) -> np.ndarray:
        """The token each running row was just given: the next decode step's input."""
        return self.running[:, :, self.length - 1].reshape(-1)

    def result(self, count: int) -> np.ndarray:
        """The ``count`` best finished hypotheses per prompt, ``[B * count, P + longest]``."""
        f = self.finished
        longest = int(f.lengths[:, :count].max())
        return f.sequences[:, :count, : self.P + longest].reshape(self.B * count, self.P + longest)


def _best_of(kept: np.ndarray, added: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Entries ``best`` (per prompt) of ``kept`` followed by ``added`` along the beam axis."""
    index = best if kept.ndim == 2 else best[:, :, None]
    return np.take_along_axis(np.concatenate([kept, added], axis=1), index, axis=1)


def beam_search(decoder, prompt: np.ndarray, config: GenerationConfig, eos_ids: np.ndarray, pad_id: int,
                max_new: int, processors: Sequence[Callable] = ()) -> np.ndarray:
    """Run the search over ``prompt`` (each prompt's ``num_beams`` copies in consecutive rows; ``max_new`` >= 1);
    ``decoder`` has ``first_logits()``, ``next_logits(tokens)`` and ``reorder(rows)``."""
    rng = np.random.default_rng(config.seed) if config.do_sample else None
    search = BeamSearch(prompt, config, eos_ids, pad_id, max_new, rng)
    logits = decoder.first_logits()
    while True:
        parents = search.step(logits, processors)
        if parents is None:
            return search.result(config.num_return_sequences)
        decoder.reorder(parents)
        logits = decoder.next_logits(search.running_tokens())
