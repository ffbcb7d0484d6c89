"""The inference engine (llmx.infer) and `stage=infer`, on the tiny model on CPU.

Continuous batching must not change what a prompt generates: 16 prompts of very different lengths,
fewer slots than prompts, give the greedy tokens of one-by-one generation (the engine alone, and
PaddleNLP's own `generate`); so do static mode (Paddle Inference), tensor parallelism and a base +
LoRA adapter given as model.name_or_path. Bloom, OPT and Yuan, each taking its cache its own way
(llmx.infer.runners.RUNNERS), give PaddleNLP's `generate` under stage=infer and stage=serve."""
from __future__ import annotations

import json
import re

import pytest
from helpers import closing_lines, empty_folders, launch, read_json, read_jsonl

from llmx.families import FAMILIES
from llmx.infer.support import static_problem

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches".split()


def _texts(n: int = 16) -> list[str]:
    """Prompts from 1 to ~60 words, in no order of length."""
    lengths = [1, 40, 3, 60, 7, 25, 2, 50, 12, 5, 33, 9, 45, 4, 18, 28][:n]
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(k)) for i, k in enumerate(lengths)]


def _load(model_dir):
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    paddle.set_device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


def _prompt_ids(tokenizer, texts):
    from helpers import dialogue
    from llmx.data.infer import prompt_ids

    return [prompt_ids(tokenizer, dialogue(question=t)) for t in texts]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return _load(tiny_model_dir)


def test_continuous_batching_gives_the_tokens_of_one_by_one_generation(loaded):
    import paddle

    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    model, tokenizer = loaded
    prompts = _prompt_ids(tokenizer, _texts())
    assert max(map(len, prompts)) > 10 * min(map(len, prompts))
    greedy = SamplingParams(max_new_tokens=12)
    engine = dynamic_engine(model, tokenizer, max_batch=4)
    batched = [r.tokens for r in engine.generate(prompts, greedy)]
    assert engine.peak_rows == 4 and engine.active == 0 and engine.batch is None  # slots were shared, then freed
    alone = [dynamic_engine(model, tokenizer, max_batch=1).generate([p], greedy)[0].tokens for p in prompts]
    assert batched == alone
    eos = tokenizer.eos_token_id
    for prompt, tokens in zip(prompts, batched):  # PaddleNLP's generate, one prompt at a time
        out = model.generate(input_ids=paddle.to_tensor([prompt]), attention_mask=paddle.ones([1, len(prompt)], "int64"),
                             max_new_tokens=12, decode_strategy="greedy_search", eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)[0].numpy()[0].tolist()
        assert tokens == (out[:out.index(eos)] if eos in out else out)
    assert sum(map(len, batched)) > 16 * 4  # (not all ending at once)
    # a cache budget smaller than 4 rows of the longest prompt: fewer rows at a time, the same tokens
    budget = 2 * (max(map(len, prompts)) + 12)
    tight = dynamic_engine(model, tokenizer, max_batch=4, max_tokens_in_cache=budget)
    assert [r.tokens for r in tight.generate(prompts, greedy)] == batched
    assert tight.peak_rows < 4 and tight.peak_cells <= budget


def test_seeded_sampling_repeats_in_any_batch_and_beam_search_matches_paddlenlp(loaded):
    import paddle

    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    model, tokenizer = loaded
    prompts = _prompt_ids(tokenizer, _texts(6))
    sample = [SamplingParams(max_new_tokens=10, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.3, seed=s)
              for s in range(6)]
    a = [r.tokens for r in dynamic_engine(model, tokenizer, max_batch=2).generate(prompts, sample)]
    b = [r.tokens for r in dynamic_engine(model, tokenizer, max_batch=6).generate(prompts[::-1], sample[::-1])]
    assert a == b[::-1]
    other = [SamplingParams(**{**p.__dict__, "seed": p.seed + 100}) for p in sample]
    assert [r.tokens for r in dynamic_engine(model, tokenizer, max_batch=6).generate(prompts, other)] != a

    beams = dynamic_engine(model, tokenizer, max_batch=8).generate(prompts[:3], SamplingParams(max_new_tokens=8, num_beams=3))
    for prompt, req in zip(prompts, beams):
        out = model.generate(input_ids=paddle.to_tensor([prompt]), attention_mask=paddle.ones([1, len(prompt)], "int64"),
                             max_new_tokens=8, decode_strategy="beam_search", num_beams=3,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[0].numpy()[0].tolist()
        eos = tokenizer.eos_token_id
        assert req.tokens == (out[:out.index(eos)] if eos in out else out)
        assert req.text == tokenizer.decode(req.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert req.text.strip()


def _lora_adapter(base_dir, out_dir):
    """A LoRA adapter over the tiny model with non-zero B (so it changes the outputs); and its merged model."""
    import numpy as np
    import paddle
    from paddlenlp.peft import LoRAConfig, LoRAModel

    model, _ = _load(base_dir)
    lora = LoRAModel(model, LoRAConfig(target_modules=[".*q_proj.*", ".*v_proj.*", ".*down_proj.*"], r=4, lora_alpha=8,
                                       base_model_name_or_path=str(base_dir)))
    rng = np.random.RandomState(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.set_value(paddle.to_tensor(rng.normal(0, 0.5, p.shape).astype("float32")))
    lora.save_pretrained(str(out_dir))
    lora.merge()
    lora.model.eval()
    return lora.model


def test_stage_infer_under_tp2_and_static_with_a_lora_adapter_match_one_process(tiny_model_dir, loaded, tmp_path):
    from helpers import dialogue
    from llmx.data.infer import prompt_ids
    from llmx.infer.build import dynamic_engine
    from llmx.infer.sampling import SamplingParams

    model, tokenizer = loaded
    texts = _texts()
    lines = [{"messages": [{"role": "user", "content": t}], "id": i} for i, t in enumerate(texts)]  # one format a file
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    common = [f"stage.input={prompts_file}", "stage=infer", "stage.max_new_tokens=10", "stage.max_batch=4",
              "stage.progress_bar=false"]

    def outputs(run):
        rows = read_jsonl(run / "output.jsonl")
        assert [r["id"] for r in rows] == list(range(16))  # input order
        return [(r["output"], r["generated_tokens"], r["finish_reason"]) for r in rows]

    def expected(m):
        engine = dynamic_engine(m, tokenizer, max_batch=1)
        reqs = engine.generate([prompt_ids(tokenizer, dialogue(question=t)) for t in texts], SamplingParams(max_new_tokens=10))
        return [(r.text, len(r.tokens), r.finish_reason) for r in reqs]

    # tensor parallelism (2 ranks): the tokens of one process
    want = expected(model)
    tp2 = tmp_path / "tp2"
    launch(*common, f"model.name_or_path={tiny_model_dir}", "parallel=tp2", f"hydra.run.dir={tp2}")
    assert outputs(tp2) == want
    summary = read_json(tp2 / "summary.json")
    assert summary["requests"] == 16 and summary["generated_tokens"] == sum(n for _, n, _ in want)
    prompt_tokens = sum(len(prompt_ids(tokenizer, dialogue(question=t))) for t in texts)
    assert summary["prompt_tokens"] == prompt_tokens

    # base + LoRA adapter, in static mode: exported (merged) by one run, run through Paddle Inference by another
    adapter = tmp_path / "adapter"
    merged = _lora_adapter(tiny_model_dir, adapter)
    export = tmp_path / "export"
    launch("stage=infer", f"model.name_or_path={adapter}", "stage.mode=static", "stage.export_only=true",
           f"hydra.run.dir={export}")
    program = export / "static"
    assert read_json(export / "summary.json")["static_dir"] == str(program)
    assert sorted(p.name for p in program.glob("inference.*")) == ["inference.json", "inference.pdiparams"]
    static = tmp_path / "static"
    proc = launch(*common, "stage.mode=static", f"stage.static_dir={program}", f"hydra.run.dir={static}")
    with_adapter = expected(merged)
    assert outputs(static) == with_adapter and with_adapter != want
    generated = sum(n for _, n, _ in with_adapter)
    assert re.search(rf"^16 requests: {prompt_tokens} prompt tokens, {generated} generated tokens "
                     r"in [\d.]+ s, [\d.]+ tokens/s \(static, max_batch 4\) -> ", proc.stdout, re.M), proc.stdout
    # its closing lines name the predictions file; no curves, checkpoints or losses to reproduce; no empty folder
    assert f"  output            {static / 'output.jsonl'}" in proc.stdout.splitlines()
    assert closing_lines(proc.stdout) == [f"run dir: {static}  (summary.json, llmx.log)",
                                          f"compare: python -m llmx diff {static} <another run>"]
    assert empty_folders(static) == empty_folders(export) == empty_folders(tp2) == []


def test_stage_infer_takes_the_family_from_a_run_without_model(tmp_path):
    """A model=qwen run given without model=qwen: the same answers as with it (the model group follows the
    checkpoint), recorded as a qwen run."""
    qwen_run = tmp_path / "qwen_run"
    launch("model=qwen", "stage.train.max_steps=2", "stage.eval.enabled=false", "stage.train.progress_bar=false",
           f"hydra.run.dir={qwen_run}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"src": t}) + "\n" for t in _texts(4)))
    common = ["stage=infer", f"model.name_or_path={qwen_run}", f"stage.input={prompts}", "stage.max_new_tokens=8",
              "stage.progress_bar=false"]
    launch(*common, "model=qwen", f"hydra.run.dir={tmp_path / 'with'}")
    launch(*common, f"hydra.run.dir={tmp_path / 'without'}")
    answers = [read_jsonl(tmp_path / run / "output.jsonl") for run in ("with", "without")]
    assert answers[0] == answers[1] and len(answers[0]) == 4
    assert "family: qwen" in (tmp_path / "without" / ".hydra" / "config.yaml").read_text()


def _saved_tiny(family: str, tmp_path):
    """The family's tiny model (peaked weights: no ties between greedy candidates) saved with its tokenizer, and
    what one-prompt-at-a-time PaddleNLP `generate` answers (text, tokens) to prompt ids; 6 texts and their
    prompts file."""
    import paddle
    from helpers import compose

    from llmx.engine.model import build_model, build_tokenizer

    paddle.set_device("cpu")
    cfg = compose(f"model={family}", "model.size=tiny", "+model.overrides.initializer_range=0.5")
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, seed=0)
    model.eval()
    model_dir = tmp_path / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    eos = tokenizer.eos_token_id

    def generate(prompt):
        out = model.generate(input_ids=paddle.to_tensor([prompt]), attention_mask=paddle.ones([1, len(prompt)], "int64"),
                             max_new_tokens=16, decode_strategy="greedy_search", eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)[0].numpy()[0].tolist()
        tokens = out[:out.index(eos)] if eos in out else out
        return tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False), len(tokens)

    texts = _texts(6)
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"src": t}) + "\n" for t in texts))
    return model_dir, tokenizer, generate, texts, prompts_file


def _served_completion(overrides: list, prompt: str, tmp_path) -> tuple:
    """(text, tokens) of one greedy /v1/completions answer of `stage=serve` started with `overrides`."""
    import httpx
    from helpers import start_server

    server = start_server(["launch.py", *overrides], tmp_path / "serve")
    try:
        reply = httpx.post(server["base"] + "/v1/completions", headers={"Authorization": "Bearer test-key"},
                           json={"model": "paddlenlp", "prompt": prompt, "max_tokens": 16, "temperature": 0}, timeout=60).json()
    finally:
        server["proc"].kill()
        server["proc"].wait()
    return reply["choices"][0]["text"], reply["usage"]["completion_tokens"]


@pytest.mark.parametrize("family", ["bloom", "opt", "yuan"])
def test_families_with_their_own_cache_generate_what_paddlenlp_generates(family, tmp_path):
    """stage=infer over prompts of different lengths, batched in fewer rows than prompts, and one stage=serve
    completion: the greedy tokens of PaddleNLP's `generate`, one prompt at a time."""
    model_dir, tokenizer, generate, texts, prompts_file = _saved_tiny(family, tmp_path)
    common = [f"model={family}", f"model.name_or_path={model_dir}"]
    launch("stage=infer", *common, f"stage.input={prompts_file}", "stage.max_new_tokens=16", "stage.max_batch=4",
           "stage.progress_bar=false", f"hydra.run.dir={tmp_path / 'infer'}")
    rows = read_jsonl(tmp_path / "infer" / "output.jsonl")
    assert [(r["output"], r["generated_tokens"]) for r in rows] == [generate(p) for p in _prompt_ids(tokenizer, texts)]
    assert sum(r["generated_tokens"] for r in rows) > 6 * 8  # (not all ending at once)

    assert _served_completion(common, texts[1], tmp_path) == generate(tokenizer(texts[1])["input_ids"])


@pytest.mark.parametrize("family", [n for n, f in FAMILIES.items() if f.classes != "paddlenlp.transformers"])
def test_families_llmx_writes_reload_and_generate_what_paddlenlp_generates(family, tmp_path):
    """A family whose model code is llmx's (llmx.models): its saved directory is told apart by its architecture
    (no model=), and stage=infer, batched and padded, and in static mode where it runs so, and stage=serve give
    the greedy tokens of PaddleNLP's `generate` one prompt at a time."""
    from llmx.infer.support import static_problem

    model_dir, tokenizer, generate, texts, prompts_file = _saved_tiny(family, tmp_path)
    want = [generate(p) for p in _prompt_ids(tokenizer, texts)]
    assert sum(n for _, n in want) > 6 * 8  # (not all ending at once)
    modes = ["dynamic"] + ([] if static_problem(family) else ["static"])
    for mode in modes:
        run = tmp_path / mode
        launch("stage=infer", f"model.name_or_path={model_dir}", f"stage.mode={mode}", f"stage.input={prompts_file}",
               "stage.max_new_tokens=16", "stage.max_batch=4", "stage.progress_bar=false", f"hydra.run.dir={run}")
        assert f"family: {family}" in (run / ".hydra" / "config.yaml").read_text()
        assert [(r["output"], r["generated_tokens"]) for r in read_jsonl(run / "output.jsonl")] == want, mode
    assert _served_completion([f"model.name_or_path={model_dir}"], texts[1], tmp_path) == \
        generate(tokenizer(texts[1])["input_ids"])


@pytest.mark.parametrize("family", [n for n, f in FAMILIES.items() if not static_problem(n) and not f.no_engine])
def test_every_family_whose_record_allows_static_mode_exports_a_program(family, tmp_path):
    """Static mode is refused in one line where the family's record says it fails (Family.no_static); everywhere
    else the export runs and the program answers the eager model's next-token logits."""
    import numpy as np
    import paddle
    from helpers import compose

    from llmx.engine.model import build_model, build_tokenizer
    from llmx.infer.export import export_program, load_predictor
    from llmx.infer.runners import StaticRunner

    paddle.set_device("cpu")
    cfg = compose(f"model={family}", "model.size=tiny")
    tokenizer = build_tokenizer(cfg.model)
    model = build_model(cfg.model, tokenizer, seed=0)
    ids = np.array([[5, 6, 7, 8, 9, 10]], dtype="int64")
    with paddle.no_grad():
        out = model(input_ids=paddle.to_tensor(ids))
    eager = (out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)).numpy()[:, -1]
    program = export_program(model, tokenizer, tmp_path / "program")  # (tracing leaves Qwen2's rotary cache unusable)
    static = StaticRunner(load_predictor(program), tokenizer.pad_token_id)._run(ids, np.ones_like(ids))
    assert np.abs(static - eager).max() < 1e-4, family
