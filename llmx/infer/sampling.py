"""Choosing the next token from a row of logits: greedy, temperature / top-k / top-p sampling with a
per-request seed, repetition penalty, and one step of beam search. Numpy on the host, paddle-free:
the same code runs behind the dynamic and the static (Paddle Inference) model, and a request's
random stream is its own, so its samples do not depend on which requests share its batch.

(Written here rather than taken from PaddleNLP: its logits processors and samplers work on a whole
padded batch inside `generate`, which a continuous batch never calls.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = all tokens
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None  # None: drawn from the engine's own seeded stream
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: a hypothesis scores sum(logprob) / length**length_penalty
    stop: list = field(default_factory=list)  # strings that end the generation (not included in the text)
    ignore_eos: bool = False

    def problem(self) -> Optional[str]:
        """Why these values cannot be used (one phrase), or None."""
        if self.max_new_tokens < 1:
            return f"max_new_tokens={self.max_new_tokens}: must be >= 1"
        if not 0 <= self.temperature <= 100:
            return f"temperature={self.temperature}: must be between 0 and 100"
        if self.top_k < 0:
            return f"top_k={self.top_k}: must be >= 0 (0 = off)"
        if not 0 < self.top_p <= 1:
            return f"top_p={self.top_p}: must be in (0, 1]"
        if self.repetition_penalty <= 0:
            return f"repetition_penalty={self.repetition_penalty}: must be > 0"
        if self.num_beams < 1:
            return f"num_beams={self.num_beams}: must be >= 1"
        if self.num_beams > 1 and self.temperature > 0:
            return "num_beams > 1 is beam search: it needs temperature=0 (no sampling)"
        if any(not isinstance(s, str) or not s for s in self.stop):
            return f"stop={self.stop!r}: must be non-empty strings"
        return None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize_repetition(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's repetition penalty (Keskar et al. 2019) as HF/PaddleNLP apply it: a seen token's logit is
    divided by the penalty when positive, multiplied when negative."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    tokens = np.unique(seen)
    values = logits[tokens]
    logits[tokens] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def next_token(logits: np.ndarray, params: SamplingParams, rng: np.random.RandomState, seen: np.ndarray) -> int:
    """One token for one sequence from its float logits [vocab]."""
    logits = penalize_repetition(logits.astype(np.float64), seen, params.repetition_penalty)
    if params.greedy:
        return int(np.argmax(logits))
    logits = logits / params.temperature
    order = np.argsort(-logits, kind="stable")
    if params.top_k > 0:
        order = order[: params.top_k]
    probs = np.exp(logits[order] - logits[order[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:  # the smallest head of the sorted distribution whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    u = rng.random_sample()
    return int(order[min(int(np.searchsorted(np.cumsum(probs), u, side="right")), len(order) - 1)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class BeamState:
    """The beams of one request: running hypotheses (tokens, summed log-probability) and finished ones."""

    width: int
    length_penalty: float
    running: list = field(default_factory=lambda: [([], 0.0)])
    finished: list = field(default_factory=list)  # (normalised score, tokens)

    def step(self, logprobs: np.ndarray, eos: Optional[int], last: bool) -> tuple[list[int], list[int]]:
        """Extend the running beams with their log-probabilities [beams, vocab]; returns (parent beam,
        token) per surviving beam. A hypothesis ending in eos is finished (without the eos), as in the
        usual formulation (Wu et al. 2016 length normalisation; HF's `BeamHypotheses`)."""
        k, vocab = self.width, logprobs.shape[-1]
        scores = np.array([s for _, s in self.running])[:, None] + logprobs
        flat = scores.reshape(-1)
        best = np.argsort(-flat, kind="stable")[: 2 * k]
        parents, tokens, running = [], [], []
        for rank, i in enumerate(best):
            beam, token, score = int(i // vocab), int(i % vocab), float(flat[i])
            seq = self.running[beam][0]
            if eos is not None and token == eos:
                if rank < k:
                    self._finish(seq, score)
                continue
            parents.append(beam)
            tokens.append(token)
            running.append((seq + [token], score))
            if len(running) == k:
                break
        self.running = running
        if last:
            for seq, score in running:
                self._finish(seq, score)
        return parents, tokens

    def _finish(self, seq: list[int], score: float) -> None:
        self.finished.append((score / max(len(seq), 1) ** self.length_penalty, seq))
        self.finished.sort(key=lambda t: -t[0])
        del self.finished[self.width:]

    def done(self) -> bool:
        """k finished hypotheses, none of which the best running beam can still beat."""
        if not self.running:
            return True
        if len(self.finished) < self.width:
            return False
        seq, score = self.running[0]
        return score / max(len(seq), 1) ** self.length_penalty <= self.finished[-1][0]

    def best(self) -> list[int]:
        pool = self.finished or [(s / max(len(q), 1) ** self.length_penalty, q) for q, s in self.running]
        return max(pool, key=lambda t: t[0])[1]
