"""Continuous batching over a model runner (llmx.infer.runners).

Every `step()`: the running rows decode one token together; requests waiting for a slot are
prefilled in the same step and join the batch; each request picks its next token(s) on the host
(llmx.infer.sampling); finished and cancelled requests leave at once, and their slots are free for
the next step. Bounds: at most `max_batch` rows (a beam-search request takes `num_beams` rows), and
a request is admitted only if the padded cache could still hold every admitted request at its
longest (rows x longest prompt + max_new_tokens <= `max_tokens_in_cache`), so a running batch never
outgrows its budget.

Thread use (the server): `submit` and `cancel` may be called from any thread; `step` from one.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from llmx.infer.runners import Batch, join, take
from llmx.infer.sampling import BeamState, SamplingParams, log_softmax, next_token
from llmx.infer.text import TextTracker


class RequestError(ValueError):
    """A request the engine cannot run (too long for the context or the cache); the message says why."""


@dataclass(eq=False)
class Request:
    prompt: list
    params: SamplingParams
    id: int = 0
    on_update: Optional[Callable] = None  # (request, new_text) after each token, and once when done
    tokens: list = field(default_factory=list)  # generated token ids (the best beam's, for beam search)
    text: str = ""
    finish_reason: Optional[str] = None  # "stop" (eos or a stop string), "length", "cancelled"
    max_new: int = 0
    rng: Optional[np.random.RandomState] = None
    beams: Optional[BeamState] = None
    tracker: Optional[TextTracker] = None
    cancelled: bool = False
    submitted: float = 0.0
    first_token_at: Optional[float] = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def width(self) -> int:
        return self.params.num_beams

    @property
    def reserve(self) -> int:
        return len(self.prompt) + self.max_new


class Engine:
    def __init__(self, runner, tokenizer, max_batch: int = 8, max_tokens_in_cache: int = 65536,
                 max_context: int = 2048, seed: int = 0, eos_ids=(), static_batching: bool = False) -> None:
        self.runner, self.tokenizer = runner, tokenizer
        self.max_batch, self.max_tokens_in_cache, self.max_context = max_batch, max_tokens_in_cache, max_context
        # static_batching (for comparisons: bench/serving.py): a batch is admitted only when the previous one is
        # done, and finished rows keep decoding (discarded) until its longest member ends.
        self.static_batching = static_batching
        self.eos = set(int(e) for e in eos_ids if e is not None)
        self.first_eos = min(self.eos) if self.eos else None
        self.rng = np.random.RandomState(seed)  # seeds of requests that bring none: reproducible in order
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: list[Request] = []  # the request of each batch row
        self.batch: Optional[Batch] = None
        self.pending = np.zeros(0, "int64")  # each row's chosen token, not yet in the cache
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.next_id = 0
        self.stats = collections.Counter()
        self.busy_s = 0.0
        self.peak_rows = 0
        self.peak_cells = 0  # the largest padded cache seen (rows x width)

    # ------------------------------------------------------------------ requests

    def check(self, prompt: list, params: SamplingParams) -> int:
        """The new-token budget of a request, or RequestError saying why it cannot run."""
        problem = params.problem()
        if problem:
            raise RequestError(problem)
        if not prompt:
            raise RequestError("the prompt is empty")
        if len(prompt) >= self.max_context:
            raise RequestError(f"the prompt has {len(prompt)} tokens; the model's context is {self.max_context} "
                               f"(room is needed for at least one new token)")
        if params.num_beams > self.max_batch:
            raise RequestError(f"num_beams={params.num_beams} needs more rows than the engine's max_batch "
                               f"({self.max_batch})")
        max_new = min(params.max_new_tokens, self.max_context - len(prompt))
        need = params.num_beams * (len(prompt) + max_new)
        if need > self.max_tokens_in_cache:
            raise RequestError(f"the prompt ({len(prompt)} tokens) with {max_new} new tokens x {params.num_beams} "
                               f"beam(s) needs {need} cache tokens; the cache holds {self.max_tokens_in_cache}")
        return max_new

    def submit(self, prompt: list, params: SamplingParams, on_update: Optional[Callable] = None) -> Request:
        max_new = self.check(prompt, params)
        if self.static_batching and params.num_beams > 1:
            raise RequestError("static batching (a comparison mode) runs one row per request: no beam search")
        with self.lock:
            seed = params.seed if params.seed is not None else int(self.rng.randint(2 ** 31 - 1))
            req = Request(list(prompt), params, self.next_id, on_update, max_new=max_new,
                          rng=np.random.RandomState(seed), submitted=time.perf_counter())
            self.next_id += 1
            if params.num_beams > 1:
                req.beams = BeamState(params.num_beams, params.length_penalty)
            else:
                req.tracker = TextTracker(self.decode, params.stop)
            self.waiting.append(req)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += len(prompt)
            self.wakeup.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        req.cancelled = True
        with self.lock:
            self.wakeup.notify_all()

    def decode(self, tokens: list) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ scheduling

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        if self.static_batching and self.rows:
            return admitted
        rows = len(self.rows)
        longest = max((r.reserve for r in set(self.rows)), default=0)
        with self.lock:
            while self.waiting:
                req = self.waiting[0]
                if req.cancelled:
                    self.waiting.popleft()
                    self._finish(req, "cancelled")
                    continue
                grown = max(longest, req.reserve)
                if rows + req.width > self.max_batch or (rows + req.width) * grown > self.max_tokens_in_cache:
                    break
                self.waiting.popleft()
                admitted.append(req)
                rows, longest = rows + req.width, grown
        return admitted

    def step(self) -> None:
        """Decode the running rows, admit and prefill waiting requests, choose, retire."""
        started = time.perf_counter()
        if any(r.cancelled for r in self.rows):
            keep = [i for i, r in enumerate(self.rows) if not r.cancelled]
            for r in {r for r in self.rows if r.cancelled}:
                self._finish(r, "cancelled")
            self.batch, self.pending = take(self.batch, keep, self.runner.axes), self.pending[keep]
            self.rows = [self.rows[i] for i in keep]
        parts: list[np.ndarray] = []
        if self.batch is not None:
            logits, self.batch = self.runner.decode(self.batch, self.pending)
            parts.append(logits)
        new = self._admit()
        if new:
            logits, fresh = self.runner.prefill([r.prompt for r in new])
            parts.append(logits)
            self.batch = join(self.batch, fresh, self.runner.axes)
            self.rows = self.rows + new
        if not parts:
            return
        self.peak_rows = max(self.peak_rows, len(self.rows))
        self.peak_cells = max(self.peak_cells, self.batch.cells() + len(self.rows))
        self._choose(np.concatenate(parts, axis=0))
        self.busy_s += time.perf_counter() - started

    def _choose(self, logits: np.ndarray) -> None:
        keep: list[int] = []
        pending: list[int] = []
        by_request: dict[Request, list[int]] = {}
        for i, r in enumerate(self.rows):
            by_request.setdefault(r, []).append(i)
        now = time.perf_counter()
        for r, idx in by_request.items():
            if r.done.is_set():  # (static batching: a finished row still in its batch)
                continue
            if r.first_token_at is None:
                r.first_token_at = now
            if r.beams is None:
                seen = np.asarray(r.prompt + r.tokens, "int64") if r.params.repetition_penalty != 1.0 else np.zeros(0, "int64")
                token = next_token(logits[idx[0]], r.params, r.rng, seen)
                self.stats["generated_tokens"] += 1
                if token in self.eos and not r.params.ignore_eos:
                    self._finish(r, "stop")
                    continue
                r.tokens.append(token)
                delta = r.tracker.update(r.tokens)
                if r.tracker.stopped:
                    self._finish(r, "stop", delta)
                    continue
                if len(r.tokens) >= r.max_new:
                    self._finish(r, "length", delta)
                    continue
                if delta and r.on_update:
                    r.on_update(r, delta)
                keep.append(idx[0])
                pending.append(token)
            else:
                scores = log_softmax(logits[idx])
                steps = len(r.beams.running[0][0]) + 1
                parents, tokens = r.beams.step(scores, self.first_eos, last=steps >= r.max_new)
                self.stats["generated_tokens"] += len(idx)
                if steps >= r.max_new or r.beams.done():
                    r.tokens = r.beams.best()
                    tracker = TextTracker(self.decode, r.params.stop)  # the whole text, cut at a stop string
                    tracker.update(r.tokens)
                    self._finish(r, "stop" if tracker.stopped or len(r.tokens) < r.max_new else "length",
                                 tracker.text)
                    continue
                keep += [idx[p] for p in parents]
                pending += tokens
        if self.static_batching and any(not r.done.is_set() for r in self.rows):
            chosen = dict(zip(keep, pending))
            keep = list(range(len(self.rows)))
            pending = [chosen.get(i, self.runner.pad_id) for i in keep]
        self.rows = [self.rows[i] for i in keep]
        self.batch = take(self.batch, keep, self.runner.axes)
        self.pending = np.asarray(pending, "int64")

    def _finish(self, r: Request, reason: str, delta: str = "") -> None:
        if r.done.is_set():
            return
        r.finish_reason = reason
        self.stats[reason] += reason in ("cancelled", "shutdown", "error")
        if r.tracker is not None:
            delta += r.tracker.finish()
            r.text = r.tracker.text
        else:
            r.text = delta
        self.stats["finished"] += 1
        if r.on_update:
            r.on_update(r, delta)
        r.done.set()

    # ------------------------------------------------------------------ whole workloads

    def generate(self, prompts: list, params, progress: Optional[Callable] = None) -> list[Request]:
        """Run these prompts (one SamplingParams, or one per prompt) to the end; requests in input order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        reqs = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        while self.has_work():
            before = self.stats["finished"]
            self.step()
            if progress and self.stats["finished"] > before:
                progress(self.stats["finished"] - before)
        return reqs

    def serve_forever(self, stop: threading.Event) -> None:
        """The server's engine thread: step while there is work, sleep on `wakeup` otherwise."""
        while not stop.is_set():
            with self.lock:
                if not self.has_work():
                    self.wakeup.wait(timeout=0.5)
                    continue
            self.step()

    def abort_all(self, reason: str = "cancelled") -> None:
        """End every request (server shutdown): their streams end."""
        with self.lock:
            waiting, self.waiting = list(self.waiting), collections.deque()
        for r in waiting + list(dict.fromkeys(self.rows)):
            if not r.done.is_set():
                self._finish(r, reason)
        self.rows, self.batch, self.pending = [], None, np.zeros(0, "int64")
