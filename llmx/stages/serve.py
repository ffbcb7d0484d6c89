"""Serve a model over HTTP: OpenAI's completions and chat completions API (streaming too), /health,
/metrics, and a web chat page at `/`, all on one continuous-batching engine (llmx.serve, llmx.infer).
Ctrl-C or SIGTERM stops it: running streams end with an error chunk and the port is released."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from llmx.schema import existing, one_of, positive, require

API_KEY_ENV = "LLMX_API_KEY"


@dataclass
class Config:
    runner: str = "serve"
    host: str = "127.0.0.1"
    port: int = 8011  # PaddleNLP's Flask server's port
    # The id /v1/models lists and the page shows (requests may also name the alias "paddlenlp"). Default: what
    # the model is known by: `<stage>-<family>-<run dir name>` for an llmx run, else the directory's (or GGUF
    # file's) name, `<family>-<size>` for a random init (_model_name).
    model_name: Optional[str] = None
    api_key: Optional[str] = None  # every endpoint but the page needs `Authorization: Bearer <key>`; or set LLMX_API_KEY
    mode: str = "dynamic"  # dynamic | static (an exported program: static_dir)
    static_dir: Optional[str] = None
    max_batch: int = 16  # rows decoding together
    max_tokens_in_cache: int = 65536  # the padded KV cache bound: rows x longest (prompt + max_tokens)
    max_queue: int = 256  # requests waiting for a slot; beyond it: 503 with Retry-After
    max_tokens: int = 64  # a request's max_tokens when it gives none
    # Per-request limits (llmx.serve.app.Limits): beyond them a request gets a one-line 400 (413 for the body,
    # before it is read).
    max_request_bytes: int = 4 * 2**20
    max_n: int = 16
    max_tokens_per_request: int = 4096
    max_messages: int = 512
    # A host other than loopback serves whoever reaches it: that needs an api_key, unless this says otherwise.
    allow_no_key: bool = False


def validate(cfg: DictConfig) -> None:
    from llmx.infer.support import check_model

    s, p = cfg.stage, cfg.parallel
    one_of("stage.mode", s.mode, ("dynamic", "static"))
    require(s.mode == "dynamic" or s.static_dir is not None, "stage.static_dir", None,
            "static mode serves an exported program: stage.static_dir=<dir> (made by stage=infer stage.mode=static "
            "stage.export_only=true)")
    existing("stage.static_dir", s.static_dir, "directory")
    require(0 <= s.port < 65536, "stage.port", s.port, "must be a TCP port (0-65535; 0 = any free port)")
    for key in ("max_batch", "max_tokens_in_cache", "max_queue", "max_tokens", "max_request_bytes", "max_n",
                "max_tokens_per_request", "max_messages"):
        positive(f"stage.{key}", s[key])
    require(s.max_tokens <= s.max_tokens_per_request, "stage.max_tokens", s.max_tokens,
            f"the default must be within stage.max_tokens_per_request ({s.max_tokens_per_request})")
    require(_is_loopback(s.host) or bool(s.api_key or os.environ.get(API_KEY_ENV)) or s.allow_no_key, "stage.host",
            s.host, "serves other machines: set stage.api_key (or LLMX_API_KEY), or stage.allow_no_key=true to serve "
            "without a key")
    check_model(cfg)
    require(p.dp * p.tp * p.pp * p.sharding == 1, "parallel",
            f"dp={p.dp} tp={p.tp} pp={p.pp}", "the server runs in one process (parallel=single)")
    if s.port:  # last: the other problems do not depend on what else runs here
        problem = _port_problem(s.host, s.port)
        require(problem is None, "stage.port", s.port, f"{problem} (choose another: stage.port=N, or 0 for any free port)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _port_problem(host: str, port: int):
    """Why the server could not listen on host:port (checked before the model loads), or None."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
    except OSError as e:
        return f"cannot listen on {host}:{port}: {e.strerror or e}"
    return None


def _model_name(cfg: DictConfig) -> str:
    """The id /v1/models lists and the chat page shows: stage.model_name, else what the user knows the model by.
    An llmx run (also its model/, adapter/ or static/ given directly) is `<stage>-<family>-<run dir name>`, as
    `sft-qwen-my_sft`: its date-named directory alone says little. Any other directory is its name (an HF
    checkpoint's, a model's; `model/` takes its parent's), a file (a GGUF) its name without the suffix, and a
    random init `<family>-<size>`."""
    if cfg.stage.model_name:
        return cfg.stage.model_name
    source = cfg.stage.static_dir or cfg.model.name_or_path
    if not source:
        return f"{cfg.model.family}-{cfg.model.size}"
    path = Path(source).expanduser().resolve()
    run = next((p for p in (path, path.parent) if (p / ".hydra").is_dir()), None)
    if run is not None:
        from llmx.sources import family_of

        return f"{_run_stage(run)}-{family_of(str(run)) or cfg.model.family}-{run.name}"
    if path.is_file():
        return path.stem
    return path.parent.name if path.name in ("model", "static") else path.name


def _run_stage(run: Path) -> str:
    """The stage an llmx run ran: its summary's, else its Hydra record's choice."""
    import json

    from omegaconf import OmegaConf

    for read in (lambda: json.loads((run / "summary.json").read_text()).get("stage"),
                 lambda: OmegaConf.select(OmegaConf.load(run / ".hydra" / "hydra.yaml"), "hydra.runtime.choices.stage")):
        try:
            stage = read()
        except Exception:  # noqa: BLE001 - missing or damaged: the next record, or "run"
            continue
        if isinstance(stage, str) and stage:
            return stage
    return "run"


def run(cfg: DictConfig, ctx) -> dict:
    import contextlib
    import signal

    import uvicorn

    from llmx.console import say
    from llmx.engine import model as models
    from llmx.infer.build import dynamic_engine, static_engine
    from llmx.infer.support import kept_adapter
    from llmx.serve.app import EngineThread, Limits, create_app

    s = cfg.stage
    if s.mode == "static":
        from paddlenlp.transformers import AutoTokenizer

        from llmx.infer.export import program_config

        tokenizer = AutoTokenizer.from_pretrained(s.static_dir)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        engine = static_engine(s.static_dir, tokenizer, program_config(s.static_dir), ctx.runtime.device,
                               s.max_batch, s.max_tokens_in_cache, cfg.seed)
    else:
        tokenizer = models.build_tokenizer(cfg.model)
        model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel, keep_adapter=kept_adapter(cfg.model))
        engine = dynamic_engine(model, tokenizer, s.max_batch, s.max_tokens_in_cache, cfg.seed)
    name = _model_name(cfg)
    limits = Limits(max_request_bytes=s.max_request_bytes, max_n=s.max_n, max_tokens=s.max_tokens_per_request,
                    max_messages=s.max_messages)
    app = create_app(engine, tokenizer, name, s.api_key or os.environ.get(API_KEY_ENV) or None, s.max_queue,
                     s.max_tokens, limits)
    worker = EngineThread(engine).start()
    app.state.engine_thread = worker

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """Ctrl-C and SIGTERM stop the server; the run then ends normally (exit 0, its summary written).
            (uvicorn's own version raises the signal again after shutdown, killing the process.)"""
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):  # end the running streams first, so the server can close at once
            worker.shutdown()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else s.port
                say("serving %s on http://%s:%d  (OpenAI API at /v1, chat page at /; Ctrl-C stops)", name, s.host,
                    port)

    server = Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=5, lifespan="off"))
    server.run()
    worker.shutdown()
    stats = engine.stats
    say("server stopped: %d requests, %d generated tokens", stats["requests"], stats["generated_tokens"])
    return {"stage": "serve", "requests": stats["requests"], "generated_tokens": stats["generated_tokens"],
            "prompt_tokens": stats["prompt_tokens"]}
