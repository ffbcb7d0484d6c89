"""`stage=serve`: one real server process on 127.0.0.1 (a free port) for the whole module, driven by the
official `openai` client, raw HTTP (httpx) and a headless Chromium; stopped by SIGTERM at the end."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import closing_lines, empty_folders, start_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["the quick brown fox", "seven wizards quietly judge boxing matches over the lazy dog", "hi"]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    started = start_server(["launch.py", f"model.name_or_path={tiny_model_dir}", "stage.max_batch=8",
                      "stage.model_name=tiny-chat"], run)
    yield started
    proc = started["proc"]
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """What the model generates for PROMPTS greedily, computed in this process (text, tokens)."""
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import dialogue
    from llmx.data.infer import prompt_ids
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    paddle.set_device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    engine = dynamic_engine(model, tokenizer, max_batch=1)
    chat = [prompt_ids(tokenizer, dialogue(question=p)) for p in PROMPTS]
    plain = [tokenizer(p)["input_ids"] for p in PROMPTS]
    done = engine.generate(chat + plain, SamplingParams(max_new_tokens=12))
    return {"chat": [(r.text, len(r.prompt), len(r.tokens)) for r in done[:3]],
            "plain": [(r.text, len(r.prompt), len(r.tokens)) for r in done[3:]]}


def test_openai_client_completes_chats_and_streams(server, reference):
    import openai

    # PaddleNLP's documented client example, unchanged but for the port and key
    client = openai.OpenAI(base_url=f"http://localhost:{server['port']}/v1/", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    for prompt, (text, n_prompt, n_new) in zip(PROMPTS, reference["chat"]):
        messages = [{"role": "user", "content": prompt}]
        reply = client.chat.completions.create(model="paddlenlp", messages=messages, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content == text and reply.choices[0].message.role == "assistant"
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (n_prompt, n_new)
        assert reply.usage.total_tokens == n_prompt + n_new
        assert reply.choices[0].finish_reason == ("length" if n_new == 12 else "stop")
        stream = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].usage.completion_tokens == n_new and chunks[-1].usage.prompt_tokens == n_prompt
    for prompt, (text, n_prompt, n_new) in zip(PROMPTS, reference["plain"]):
        done = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=12, temperature=0)
        assert done.choices[0].text == text and done.usage.completion_tokens == n_new
        streamed = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == text
    # n samples with a seed: reproducible, and distinct seeds per choice
    sampled = [client.completions.create(model="tiny-chat", prompt=PROMPTS[0], max_tokens=8, temperature=1.0, n=3, seed=5)
               for _ in range(2)]
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices]
    assert len(sampled[0].choices) == 3 and len({c.text for c in sampled[0].choices}) > 1

    wrong = openai.OpenAI(base_url=server["base"] + "/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(server["base"] + "/metrics").status_code == 401


def _stream(base, body, timeout=120):
    """(status, the SSE data lines) of one streamed request."""
    with httpx.Client(timeout=timeout) as c, c.stream("POST", base + "/v1/chat/completions", headers=AUTH, json=body) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.text]
        return 200, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


MALFORMED = [
    (b'{"model": "tiny-chat", "messages": [', 400, "not valid JSON"),
    (b'[1, 2]', 400, "must be a JSON object"),
    (json.dumps({"model": "tiny-chat", "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "temperature": -1}).encode(),
     400, "temperature"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "does not exist"),
    (json.dumps({"model": "tiny-chat", "messages": [{"role": "assistant", "content": "x"}]}).encode(), 400, "the last message must be from the user"),
    (json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "word " * 600}]}).encode(), 400,
     "the model's context is 512"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
    (json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "n": 0}).encode(), 400, "n"),
]


def test_load_malformed_requests_and_disconnects(server):
    base = server["base"]
    bodies = [{"model": "tiny-chat", "messages": [{"role": "user", "content": PROMPTS[i % 3] * (1 + i % 5)}],
               "max_tokens": 6 + i % 10, "temperature": 0.7, "seed": i, "stream": True} for i in range(64)]

    def bad(i):
        raw, status, words = MALFORMED[i % len(MALFORMED)]
        r = httpx.post(base + "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"},
                       timeout=60)
        return r.status_code, status, words, r.json()

    with ThreadPoolExecutor(84) as pool:
        streams = [pool.submit(_stream, base, b) for b in bodies]
        errors = [pool.submit(bad, i) for i in range(20)]
        for f in streams:
            status, data = f.result()
            assert status == 200 and data[-1] == "[DONE]", data
            chunks = [json.loads(d) for d in data[:-1]]
            assert not any("error" in c for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        for f in errors:
            got, status, words, body = f.result()
            assert got == status and words in body["error"]["message"] and body["error"]["type"] == "invalid_request_error", body
    assert httpx.get(base + "/health", headers=AUTH).json() == {"status": "ok"}

    # 10 clients that go away after their first token: their requests leave the batch
    before = httpx.get(base + "/metrics", headers=AUTH).json()
    long = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400,
            "temperature": 1.0, "stream": True}

    def leave(i):
        with httpx.Client(timeout=60) as c, c.stream("POST", base + "/v1/chat/completions", headers=AUTH,
                                                     json={**long, "seed": i}) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    return True  # closing the connection mid-stream
        return False

    with ThreadPoolExecutor(10) as pool:
        assert all(pool.map(leave, range(10)))
    for _ in range(100):
        m = httpx.get(base + "/metrics", headers=AUTH).json()
        if m["active_rows"] == 0 and m["running_requests"] == 0 and m["finished"] == m["requests"]:
            break
        time.sleep(0.1)
    assert m["active_rows"] == 0 and m["running_requests"] == 0 and m["queue_length"] == 0, m
    assert m["cancelled"] - before["cancelled"] == 10, m
    assert m["requests"] - before["requests"] == 10 and m["peak_rows"] == 8 and m["tokens_per_s"] > 0


def _raw_post(port: int, head: str, first_bytes: bytes) -> tuple[int, dict]:
    """POST with only the first bytes of the body sent: what the server answers before reading the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + first_bytes)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_a_20_mb_body_is_refused_413_before_it_is_read(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 2**20}\r\n\r\n")
    status, body = _raw_post(server["port"], head, b'{"model": "tiny-chat", "messages": [')  # the other 20 MB never sent
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert body["error"]["message"] == "the request body is larger than this server's limit of 4194304 bytes"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"x" * 2**20
        yield b'"}]}'

    r = httpx.post(server["base"] + "/v1/chat/completions", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server["base"] + "/health", headers=AUTH).json() == {"status": "ok"}


@pytest.mark.parametrize("extra, param, message", [
    ({"n": 17}, "n", "n: at most 16 choices per request on this server"),
    ({"max_tokens": 4097}, "max_tokens", "max_tokens: at most 4096 on this server"),
    ({"messages": [{"role": "user", "content": "x"}] * 513}, "messages",
     "messages: at most 512 messages per request on this server"),
])
def test_per_request_limits_are_one_line_400s(server, extra, param, message):
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], **extra}
    r = httpx.post(server["base"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400 and r.json()["error"] == {"message": message, "type": "invalid_request_error",
                                                          "param": param, "code": None}


def test_full_queue_answers_503_with_retry_after(tiny_model_dir):
    """In-process app over an engine nobody steps: two waiting requests fill a queue of 2."""
    from fastapi.testclient import TestClient
    from paddlenlp.transformers import AutoTokenizer

    from llmx.infer.engine import Engine
    from llmx.infer.sampling import SamplingParams
    from llmx.serve.app import create_app

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    engine = Engine(runner=None, tokenizer=tokenizer, max_batch=1, max_context=512)
    client = TestClient(create_app(engine, tokenizer, "m", max_queue=2))
    body = {"model": "m", "prompt": "hi", "max_tokens": 4}
    engine.submit([1, 5, 6], SamplingParams())
    assert client.get("/metrics").json()["queue_length"] == 1
    engine.submit([1, 5, 6], SamplingParams())
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
    assert engine.queue_length == 2  # the refused request was never queued


def test_chat_page_in_headless_chromium(server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian's `chromium` package; .ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip's playwright is missing").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server["base"] + "/")
        assert "tiny-chat" in page.title()
        page.fill("#key", KEY)
        page.fill("#system", "You are terse.")
        page.fill("#max_tokens", "24")
        # count the reply bubble's text updates: a streamed reply grows in several steps
        page.evaluate("""() => { window.updates = 0;
            new MutationObserver(ms => { for (const m of ms) {
                const el = m.target.nodeType === 3 ? m.target.parentElement : m.target;
                if (el && el.classList && el.classList.contains('assistant')) window.updates++; } })
              .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill("#input", "the quick brown fox")
        page.click("#send")
        page.wait_for_selector(".assistant[data-done='1']", timeout=60000)
        reply = page.inner_text(".assistant")
        assert reply.strip() and page.evaluate("window.updates") >= 2
        page.screenshot(path=str(tmp_path / "chat.png"))
        page.click("#clear")
        assert page.locator(".msg").count() == 0
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000


def test_sigterm_ends_running_streams_and_releases_the_port(server):
    base, proc = server["base"], server["proc"]
    result = {}
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 480,
            "temperature": 1.0, "seed": 1, "stream": True}

    def client():
        result["out"] = _stream(base, body)

    t = threading.Thread(target=client)
    t.start()
    for _ in range(200):  # until it generates
        if httpx.get(base + "/metrics", headers=AUTH).json()["running_requests"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert proc.wait(60) == 0, proc.stdout.read()
    status, data = result["out"]
    assert status == 200 and data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "shutdown", data[-3:]
    with socket.socket() as s:  # the port is free again: a new server can listen there (as servers bind: SO_REUSEADDR,
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # which Linux refuses while a socket still listens)
        s.bind(("127.0.0.1", server["port"]))
        s.listen()
    # its closing lines: the traffic it served, and the run dir with what it holds (no curves, losses or checkpoints)
    out, run = proc.stdout.read(), server["run"]
    assert "server stopped:" in out
    assert closing_lines(out) == [f"run dir: {run}  (summary.json, llmx.log)"]
    assert empty_folders(run) == []


# launch.py, with the prompt renderer failing for real on one message: an unforeseen error while answering
FAILING_LAUNCH = """import runpy, sys
import llmx.serve.app as app
render = app.prompt_ids
def failing(tokenizer, chat):
    if "fail please" in repr(chat):
        raise RuntimeError("rendering failed on purpose")
    return render(tokenizer, chat)
app.prompt_ids = failing
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


def test_a_failing_request_is_an_openai_500_logged_and_the_next_one_is_served(tiny_model_dir, tmp_path):
    import openai

    # an llmx run (its record and summary, as a finished SFT run leaves them) served by its default name
    run = tmp_path / "my_sft"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  family: llama\n")
    (run / "summary.json").write_text(json.dumps({"stage": "sft", "model_dir": str(tiny_model_dir)}))
    serve_run = tmp_path / "serve"
    server = start_server(["-c", FAILING_LAUNCH, f"model.name_or_path={run}"], serve_run)
    try:
        client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["sft-llama-my_sft"]
        page = httpx.get(server["base"] + "/").text
        assert "<title>llmx chat: sft-llama-my_sft</title>" in page and 'model: "sft-llama-my_sft"' in page
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as failed:
                client.chat.completions.create(model="sft-llama-my_sft", stream=stream, max_tokens=4,
                                               messages=[{"role": "user", "content": "fail please"}])
            assert failed.value.status_code == 500
            assert failed.value.body["type"] == "server_error"
            assert "RuntimeError: rendering failed on purpose" in failed.value.body["message"]
        raw = httpx.post(server["base"] + "/v1/chat/completions", headers=AUTH, json={
            "model": "paddlenlp", "messages": [{"role": "user", "content": "fail please"}]})
        assert raw.status_code == 500 and raw.json()["error"]["type"] == "server_error"
        # the server goes on: the next requests (the served name, and the alias) are answered
        for name in ("sft-llama-my_sft", "paddlenlp"):
            reply = client.chat.completions.create(model=name, max_tokens=4, temperature=0,
                                                   messages=[{"role": "user", "content": "the quick brown fox"}])
            assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        assert httpx.get(server["base"] + "/health", headers=AUTH).json() == {"status": "ok"}
    finally:
        server["proc"].send_signal(signal.SIGTERM)
        assert server["proc"].wait(60) == 0, server["proc"].stdout.read()
    log = (serve_run / "llmx.log").read_text()
    assert log.count("POST /v1/chat/completions failed") == 3, log[-3000:]
    assert "Traceback (most recent call last)" in log and "RuntimeError: rendering failed on purpose" in log
