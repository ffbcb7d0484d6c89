"""The HTTP API (FastAPI; served by uvicorn): OpenAI's `/v1/models`, `/v1/completions` and
`/v1/chat/completions` (with `stream=true` as server-sent events in OpenAI's chunk format), plus
`/health`, `/metrics` and the chat page at `/`.

All requests share one engine, stepped by one thread (`EngineThread`); a request's tokens reach its
handler through an asyncio queue. A client that goes away (mid-stream, or before a plain answer)
cancels its request (its rows leave the batch at the next step); a full waiting queue answers 503 with
Retry-After; every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`: a
4xx for a bad request, a 500 (`type: server_error`, traceback in the run's log) for anything that fails
while answering, after which the server goes on serving.
"""
from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmx.data.infer import chat_from_messages, prompt_ids
from llmx.errors import DataError
from llmx.infer.engine import Engine, RequestError
from llmx.infer.sampling import SamplingParams

log = logging.getLogger("llmx.serve")
PAGE = Path(__file__).with_name("page.html")
ALIASES = ("paddlenlp",)  # PaddleNLP's documented client example names its model so


class EngineThread:
    """Steps the engine while it has work; a failing step ends every request instead of hanging them."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.stop = engine, threading.Event()
        self.thread = threading.Thread(target=self._loop, name="llmx-engine", daemon=True)
        self.started = time.time()

    def _loop(self) -> None:
        try:
            self.engine.serve_forever(self.stop)
        except Exception:  # noqa: BLE001 - logged; the clients get an error chunk / 500
            log.exception("the engine failed; ending every request")
            self.engine.abort_all("error")

    def start(self) -> "EngineThread":
        self.thread.start()
        return self

    def shutdown(self) -> None:
        """Stop stepping (the step under way completes), then end every request still open."""
        self.stop.set()
        with self.engine.lock:
            self.engine.wakeup.notify_all()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
        self.engine.abort_all("shutdown")


class RequireKey:
    """ASGI middleware: every endpoint but the page (which holds no model access; it sends the key) needs
    `Authorization: Bearer <key>`. (A plain ASGI class, not Starlette's BaseHTTPMiddleware, whose task group
    would wrap BodyLimit's exception in an ExceptionGroup.)"""

    def __init__(self, app, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            # compare_digest: the time taken does not tell how much of a guessed key was right
            if not hmac.compare_digest(given, self.expected):
                await error(401, "Incorrect or missing API key (send Authorization: Bearer <key>)",
                            code="invalid_api_key")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    """A request body grew past BodyLimit's limit while it was read."""


class _WatchedSend:
    """An ASGI `send` that remembers whether the response has started: after that no status can be sent."""

    def __init__(self, send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class ServerErrors:
    """ASGI middleware: an exception raised while answering becomes an OpenAI-style 500 and a logged traceback.
    Starlette's own answer is a plain-text "Internal Server Error", which OpenAI clients cannot read, and its
    ServerErrorMiddleware re-raises to uvicorn, whose log is not the run's. Once a response has started (a
    stream), no status can be sent any more: the stream itself ends with an error chunk (`respond`)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = _WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except _TooLarge:  # BodyLimit's, outside: a 413, not a failure
            raise
        except Exception as ex:  # noqa: BLE001 - any failure: answered, logged, and the server goes on
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not watched.started:
                await error(500, f"internal error while answering: {type(ex).__name__}: {ex}",
                            kind="server_error", code="internal_error")(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is read or parsed. A declared
    Content-Length is refused at once; a chunked body is counted as it arrives and refused at the first chunk
    over the limit (uvicorn and Starlette read any size into memory)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    def _refusal(self) -> JSONResponse:
        return error(413, f"the request body is larger than this server's limit of {self.limit} bytes",
                     code="request_too_large")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refusal()(scope, receive, send)
            return
        seen, watched = 0, _WatchedSend(send)

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted_receive, watched)
        except _TooLarge:
            if not watched.started:
                await self._refusal()(scope, receive, send)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (stage=serve's config; each a one-line 400 beyond it)."""

    max_request_bytes: int = 4 * 2**20
    max_n: int = 16
    max_tokens: int = 4096  # the largest max_tokens a request may give
    max_messages: int = 512


async def client_gone(receive) -> None:
    """Returns once the client has closed its connection. Called after the body is read, so the next ASGI message is
    the disconnect (uvicorn sends it also once the response is complete; the caller stops listening before that).
    Starlette watches a stream's connection itself; a plain response's handler it runs to the end, so without this a
    client that gave up (a timeout) would keep its rows decoding until its answer's last token."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # (not OpenAI's; PaddleNLP's)
    repetition_penalty: float = Field(1.0, gt=0)  # (not OpenAI's; PaddleNLP's)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = Field(None, ge=0)
    stream_options: Optional[dict] = None


class CompletionBody(_Body):
    prompt: Union[str, List[int]]


class ChatBody(_Body):
    messages: list
    tools: Optional[list] = None  # function schemas, rendered by the chat template where it supports them


def error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
          code: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def create_app(engine: Engine, tokenizer, model_name: str, api_key: Optional[str] = None, max_queue: int = 256,
               default_max_tokens: int = 64, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="llmx", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine_thread = None
    started = time.time()
    names = (model_name, *ALIASES)


    @app.exception_handler(ApiError)
    async def api_error(_request, ex: ApiError):
        return error(ex.status, ex.message, param=ex.param, code=ex.code, headers=ex.headers)

    async def parse(request: Request, schema):
        """The JSON body (whatever its declared content type, as OpenAI's server takes it) as `schema`."""
        raw = await request.body()
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            raise ApiError(400, f"the body is not valid JSON ({ex})") from None
        if not isinstance(obj, dict):
            raise ApiError(400, f"the body must be a JSON object, not {type(obj).__name__}")
        try:
            return schema.model_validate(obj)
        except ValidationError as ex:
            first = ex.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise ApiError(400, f"{where}: {first.get('msg', 'invalid value')}" if where else str(ex),
                           param=where or None) from None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, ex: StarletteHTTPException):
        return error(ex.status_code, str(ex.detail), kind="invalid_request_error" if ex.status_code < 500 else "server_error")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        # the name escaped for where it stands: a JSON string in the script (where entities are not decoded, and
        # "</script>" must not appear), text in the title and heading
        literal = json.dumps(model_name).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        text = PAGE.read_text().replace('"{{MODEL}}"', literal)
        return HTMLResponse(text.replace("{{MODEL}}", html.escape(model_name)))

    @app.get("/health")
    async def health():
        thread = app.state.engine_thread
        ok = thread is None or thread.thread.is_alive()
        return JSONResponse({"status": "ok" if ok else "engine stopped"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        s = engine.stats
        running = len(set(engine.rows))
        return {"requests": s["requests"], "finished": s["finished"], "running_requests": running,
                "queue_length": engine.queue_length, "active_rows": engine.active, "max_batch": engine.max_batch,
                "batch_occupancy": engine.active / engine.max_batch, "peak_rows": engine.peak_rows,
                "prompt_tokens": s["prompt_tokens"], "generated_tokens": s["generated_tokens"],
                "tokens_per_s": s["generated_tokens"] / engine.busy_s if engine.busy_s else 0.0,
                "cancelled": s["cancelled"], "busy_s": round(engine.busy_s, 3), "uptime_s": round(time.time() - started, 3)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(started),
                                            "owned_by": "llmx"}]}

    def check_model(body: _Body) -> None:
        if body.model not in names:
            raise ApiError(404, f"The model {body.model!r} does not exist (served: {model_name})", "model",
                           "model_not_found")
        if body.n > limits.max_n:
            raise ApiError(400, f"n: at most {limits.max_n} choices per request on this server", "n")
        if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens: at most {limits.max_tokens} on this server", "max_tokens")

    def params_of(body: _Body) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(max_new_tokens=body.max_tokens or default_max_tokens, temperature=body.temperature,
                              top_k=body.top_k, top_p=body.top_p, repetition_penalty=body.repetition_penalty,
                              seed=body.seed, stop=stop)

    def submit(prompt: list, body: _Body, loop, queue):
        if engine.queue_length + body.n > max_queue:
            raise ApiError(503, "the server is busy: the request queue is full; retry later", code="queue_full",
                           headers={"Retry-After": "1"})
        params = params_of(body)
        try:
            engine.check(prompt, params)
        except RequestError as ex:
            code = "context_length_exceeded" if "context" in str(ex) or "cache" in str(ex) else None
            raise ApiError(400, str(ex), code=code) from None
        reqs = []
        for i in range(body.n):
            p = params if params.seed is None else SamplingParams(**{**params.__dict__, "seed": params.seed + i})

            def on_update(req, delta, index=i):
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (index, delta, req.finish_reason))
                except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                    pass

            reqs.append(engine.submit(prompt, p, on_update))
        return reqs

    async def respond(prompt: list, body: _Body, chat: bool, receive):
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        reqs = submit(prompt, body, loop, queue)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def usage():
            generated = sum(len(r.tokens) for r in reqs)
            return {"prompt_tokens": len(prompt), "completion_tokens": generated,
                    "total_tokens": len(prompt) + generated}

        def choice(index, text, finish, delta: bool):
            if not chat:
                return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
            if delta:
                return {"index": index, "delta": {"content": text} if text else {}, "finish_reason": finish}
            return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish}

        if not body.stream:
            async def collect() -> None:
                open_ = len(reqs)
                while open_:
                    _, _, finish = await queue.get()
                    open_ -= finish is not None

            answered, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(client_gone(receive))
            try:
                await asyncio.wait({answered, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # (the last update can reach this loop before the engine thread marks its request done: the
                # task that ended says who came first)
                complete = answered.done() and not answered.cancelled()
                for task in (answered, gone):
                    task.cancel()
                if not complete:  # a client gone before its answer (a timeout): its rows leave the batch now
                    for r in reqs:
                        engine.cancel(r)
            if not complete:
                raise ApiError(499, "the client closed the connection before the answer", code="client_closed")
            if any(r.finish_reason in ("shutdown", "error") for r in reqs):
                raise ApiError(503, "the server is shutting down" if reqs[0].finish_reason == "shutdown"
                               else "the engine failed", code=reqs[0].finish_reason)
            return {"id": rid, "object": kind, "created": created, "model": body.model,
                    "choices": [choice(i, r.text, r.finish_reason, False) for i, r in enumerate(reqs)],
                    "usage": usage()}

        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def events():
            try:
                if chat:
                    for i in range(len(reqs)):
                        yield sse({"id": rid, "object": chunk_kind, "created": created, "model": body.model,
                                   "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})
                open_ = len(reqs)
                while open_:
                    index, delta, finish = await queue.get()
                    if finish in ("shutdown", "error", "cancelled"):
                        yield sse({"error": {"message": f"generation ended: {finish}", "type": "server_error",
                                             "param": None, "code": finish}})
                        open_ -= 1
                        continue
                    if delta:
                        yield sse({"id": rid, "object": chunk_kind, "created": created, "model": body.model,
                                   "choices": [choice(index, delta, None, True)]})
                    if finish is not None:
                        open_ -= 1
                        yield sse({"id": rid, "object": chunk_kind, "created": created, "model": body.model,
                                   "choices": [choice(index, "", finish, True)]})
                if include_usage:
                    yield sse({"id": rid, "object": chunk_kind, "created": created, "model": body.model,
                               "choices": [], "usage": usage()})
                yield "data: [DONE]\n\n"
            except Exception as ex:  # noqa: BLE001 - the 200 is sent: the stream ends with the error (ServerErrors)
                log.exception("a %s stream failed", "chat" if chat else "completion")
                yield sse({"error": {"message": f"internal error while answering: {type(ex).__name__}: {ex}",
                                     "type": "server_error", "param": None, "code": "internal_error"}})
            finally:  # a client gone mid-stream: its requests leave the batch
                for r in reqs:
                    if not r.done.is_set():
                        engine.cancel(r)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionBody)
        check_model(body)
        if isinstance(body.prompt, str):
            prompt = tokenizer(body.prompt)["input_ids"]
        else:
            prompt = list(body.prompt)
            vocab = len(tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", "prompt")
        return await respond(prompt, body, chat=False, receive=request.receive)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatBody)
        check_model(body)
        if len(body.messages) > limits.max_messages:
            raise ApiError(400, f"messages: at most {limits.max_messages} messages per request on this server",
                           "messages")
        try:
            prompt = prompt_ids(tokenizer, chat_from_messages(body.messages, "messages", body.tools))
        except DataError as ex:  # a malformed conversation, or one the chat template refuses
            raise ApiError(400, str(ex), "messages") from None
        return await respond(prompt, body, chat=True, receive=request.receive)

    if api_key:
        app.add_middleware(RequireKey, key=api_key)
    app.add_middleware(ServerErrors)
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)  # added last: the outermost, before anything reads
    return app
