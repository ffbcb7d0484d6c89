"""Batch inference: generate for every prompt of a file, in input order, on llmx's engine
(llmx.infer: KV cache, continuous batching), in dynamic mode or through an exported static program.

Input lines: `{"src": ...}` or chat `{"messages": [...]}` (llmx.data.infer); a line may carry its own
`"seed"`. Output: each input line with `output`, `finish_reason`, `prompt_tokens`, `generated_tokens`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig

from llmx.schema import existing, one_of, positive, require
from llmx.data.formats import check_format
from llmx.errors import ConfigError, DataError

MODES = ("dynamic", "static")
TASKS = ("generate", "score")


@dataclass
class Config:
    runner: str = "infer"
    task: str = "generate"  # generate | score (a reward model's score of each line's "response")
    input: Optional[str] = None  # prompts: a JSONL/JSON/parquet file or datasets dir (needed unless export_only)
    input_format: str = "auto"  # auto, or a prompt format of llmx.data.formats (src_tgt, messages, sharegpt, ...)
    output: Optional[str] = None  # JSONL written (atomically); default <run dir>/output.jsonl
    mode: str = "dynamic"  # dynamic (paddle, KV cache) | static (exported program, Paddle Inference)
    export_only: bool = False  # static mode: write the program to <run dir>/static and stop
    static_dir: Optional[str] = None  # static mode: an exported program dir (default: export into <run dir>/static)
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1  # > 1: beam search (temperature must be 0)
    length_penalty: float = 1.0
    stop: List[str] = field(default_factory=list)  # strings that end a generation
    max_batch: int = 8  # rows decoding together (a beam-search request takes num_beams rows)
    max_tokens_in_cache: int = 65536  # the padded KV cache bound: rows x longest (prompt + max_new_tokens)
    progress_bar: bool = True


def sampling_params(s, seed: Optional[int] = None):
    from llmx.infer.sampling import SamplingParams

    return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                          repetition_penalty=s.repetition_penalty, seed=seed, num_beams=s.num_beams,
                          length_penalty=s.length_penalty, stop=list(s.stop))


def validate(cfg: DictConfig) -> None:
    from llmx.infer.support import check_model

    s, p = cfg.stage, cfg.parallel
    one_of("stage.task", s.task, TASKS)
    if s.task == "score":
        from llmx.sources import score_head_file

        require(s.input is not None, "stage.input", None, "stage.task=score needs a JSONL file of "
                '{"src", "response"} lines (stage.input=...)')
        existing("stage.input", s.input, "file")
        require(bool(cfg.model.name_or_path), "model.name_or_path", None, "stage.task=score needs a reward model "
                "(a stage=rm run)")
        score_head_file(cfg.model.name_or_path)
        require(p.dp == 1 and p.tp == 1 and p.pp == 1 and p.sharding == 1, "parallel", p.dp * p.tp * p.pp,
                "scoring runs in one process (parallel=single)")
        positive("stage.max_batch", s.max_batch)
        return
    one_of("stage.mode", s.mode, MODES)
    require(s.export_only or s.input is not None, "stage.input", None, "needs a JSONL file of prompts "
            "(stage.input=prompts.jsonl), unless stage.export_only=true")
    existing("stage.input", s.input, "file or dataset directory")
    check_format("stage.input_format", s.input_format, "prompts")
    require(not s.export_only or s.mode == "static", "stage.export_only", True, "exports a static program: "
            "needs stage.mode=static")
    existing("stage.static_dir", s.static_dir, "directory")
    check_model(cfg)
    require(p.pp == 1 and p.dp == 1 and p.sharding == 1, "parallel", f"dp={p.dp} pp={p.pp} sharding={p.sharding}",
            "generation runs in one process or under tensor parallelism only (parallel=single or tp2)")
    require(p.tp == 1 or s.mode == "dynamic", "stage.mode", s.mode, "static mode runs in one process "
            "(export a tensor-parallel model from parallel=single)")
    for key in ("max_new_tokens", "max_batch", "max_tokens_in_cache"):
        positive(f"stage.{key}", s[key])
    problem = sampling_params(s).problem()
    if problem:
        raise ConfigError(f"stage.{problem}")


def prepare(cfg: DictConfig):
    """The prompts, checked line by line (paddle-free)."""
    from llmx.data.formats import read

    s = cfg.stage
    lines = read("infer", s.input, s.input_format) if s.input else []
    if s.task == "score":
        for line in lines:
            if not isinstance(line.record.get("response"), str) or not line.record["response"].strip():
                raise DataError(f"{s.input}:{line.lineno}: stage.task=score needs a non-empty string \"response\" "
                                "(the answer to score) on every line")
    for i, line in enumerate(lines):
        seed = line.record.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise DataError(f"{s.input}:{line.lineno}: seed={seed!r}: must be an integer >= 0")
    return lines


def _engine(cfg: DictConfig, ctx):
    from llmx.engine import model as models
    from llmx.infer.build import dynamic_engine, static_engine
    from llmx.infer.support import kept_adapter
    from llmx.infer.export import export_program, is_program_dir

    s, exp = cfg.stage, ctx.experiment
    if s.mode == "dynamic":
        tokenizer = models.build_tokenizer(cfg.model)
        model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel,
                                   keep_adapter=kept_adapter(cfg.model))
        return dynamic_engine(model, tokenizer, s.max_batch, s.max_tokens_in_cache, cfg.seed), tokenizer, None
    program = Path(s.static_dir) if s.static_dir else exp.dir / "static"
    if not is_program_dir(program):
        tokenizer = models.build_tokenizer(cfg.model)
        model = models.build_model(cfg.model, tokenizer, cfg.seed, cfg.parallel)
        ctx.log.info("exporting the model to a static program: %s", program)
        export_program(model, tokenizer, program)
        del model
    if s.export_only:
        return None, None, program
    from paddlenlp.transformers import AutoTokenizer

    from llmx.infer.export import program_config

    tokenizer = AutoTokenizer.from_pretrained(str(program))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    engine = static_engine(program, tokenizer, program_config(program), ctx.runtime.device,
                           s.max_batch, s.max_tokens_in_cache, cfg.seed)
    return engine, tokenizer, program


def score(cfg: DictConfig, ctx) -> dict:
    """Each line's "response" to its prompt, scored by the reward model `model.name_or_path`."""
    import paddle

    from llmx.console import say
    from llmx.data.chat import ChatFormat
    from llmx.data.dialogue import assistant
    from llmx.engine import model as models
    from llmx.engine.score import frozen, load_score_model
    from llmx.experiment import atomic_write_text
    from llmx.tokens import pad_batch

    s, exp = cfg.stage, ctx.experiment
    tokenizer = models.build_tokenizer(cfg.model)
    model = frozen(load_score_model(cfg.model, cfg.model.name_or_path, tokenizer, cfg.seed))
    chat = ChatFormat(tokenizer)  # as stage=rm encoded its pairs: the conversation with the response and its end of turn
    rows = [{"input_ids": [i for p, a in chat.turns(line.dialogue.then(assistant(line.record["response"])))
                           for i in p + a]} for line in ctx.inputs]
    scores = []
    with paddle.no_grad():
        for i in range(0, len(rows), s.max_batch):
            b = pad_batch(rows[i:i + s.max_batch], tokenizer.pad_token_id)
            scores += model.score(paddle.to_tensor(b["input_ids"]), paddle.to_tensor(b["attention_mask"])).numpy().tolist()
    out_path = Path(s.output) if s.output else exp.dir / "output.jsonl"
    if ctx.runtime.is_main:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, "".join(json.dumps({**line.record, "score": round(v, 6)}, ensure_ascii=False) + "\n"
                                            for line, v in zip(ctx.inputs, scores)))
    say("%d responses scored (mean %.4f) -> %s", len(scores), sum(scores) / max(len(scores), 1), out_path)
    return {"stage": "score", "requests": len(scores), "mean_score": round(sum(scores) / max(len(scores), 1), 6),
            "output": str(out_path)}


def run(cfg: DictConfig, ctx) -> dict:
    if cfg.stage.task == "score":
        return score(cfg, ctx)
    from llmx.console import say
    from llmx.data.infer import prompt_ids
    from llmx.experiment import atomic_write_text
    from llmx.infer.engine import RequestError

    s, exp = cfg.stage, ctx.experiment
    engine, tokenizer, program = _engine(cfg, ctx)
    if engine is None:
        say("static program written: %s (generate with stage.mode=static stage.static_dir=%s)", program, program)
        return {"stage": "export", "static_dir": str(program)}
    lines = ctx.inputs
    prompts = [prompt_ids(tokenizer, line.dialogue) for line in lines]
    params = [sampling_params(s, line.record.get("seed")) for line in lines]
    for line, prompt, sp in zip(lines, prompts, params):
        try:
            engine.check(prompt, sp)
        except RequestError as e:
            raise DataError(f"{s.input}:{line.lineno}: {e}") from None
    bar = None
    if s.progress_bar and ctx.runtime.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc="generating", unit="req", dynamic_ncols=True)
    started = time.perf_counter()
    requests = engine.generate(prompts, params, progress=bar.update if bar else None)
    seconds = time.perf_counter() - started
    if bar:
        bar.close()
    out_path = Path(s.output) if s.output else exp.dir / "output.jsonl"
    generated = sum(len(r.tokens) for r in requests)
    prompt_tokens = sum(len(p) for p in prompts)
    if ctx.runtime.is_main:
        rows = [{**line.record, "output": r.text, "finish_reason": r.finish_reason, "prompt_tokens": len(r.prompt),
                 "generated_tokens": len(r.tokens)} for line, r in zip(lines, requests)]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    rate = generated / seconds if seconds > 0 else 0.0
    say("%d requests: %d prompt tokens, %d generated tokens in %.1f s, %.1f tokens/s (%s, max_batch %d) -> %s",
        len(requests), prompt_tokens, generated, seconds, rate, s.mode, s.max_batch, out_path)
    summary = {"stage": "infer", "requests": len(requests), "prompt_tokens": prompt_tokens,
               "generated_tokens": generated, "tokens_per_s": round(rate, 2), "output": str(out_path)}
    if program is not None:
        summary["static_dir"] = str(program)
    return summary
