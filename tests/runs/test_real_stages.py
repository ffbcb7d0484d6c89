"""Every stage that renders a chat template, run as a user runs it (`launch.py`) on the real pretrained checkpoint
(SmolLM2-135M-Instruct: 49,152-token vocabulary, ChatML with a default system prompt), on data in the formats
people have (OpenAI messages, TRL's prompt/chosen/rejected). Answers are held to transformers' own generate after
`apply_chat_template`, and to the official openai client against the server."""
from __future__ import annotations

import json
import signal

import pytest
from helpers import launch, read_json, read_jsonl, start_server

pytestmark = pytest.mark.slow

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Chile", "Santiago")]
QUESTIONS = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Name a fruit."}],
             [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1, 2, 3."},
              {"role": "user", "content": "And back?"}]]
NEW_TOKENS = 20


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("real_data")
    sft = [{"messages": [{"role": "system", "content": "Answer with one word."},
                         {"role": "user", "content": f"Capital of {c}?"}, {"role": "assistant", "content": f"{k}."}]}
           for c, k in CAPITALS]
    pairs = [{"prompt": [{"role": "user", "content": f"Capital of {c}?"}],
              "chosen": [{"role": "assistant", "content": f"{k}."}],
              "rejected": [{"role": "assistant", "content": "I do not know."}]} for c, k in CAPITALS]
    return {"sft": _jsonl(d / "sft.jsonl", sft[:8]), "sft_eval": _jsonl(d / "sft_eval.jsonl", sft[8:]),
            "dpo": _jsonl(d / "dpo.jsonl", pairs[:8]), "dpo_eval": _jsonl(d / "dpo_eval.jsonl", pairs[8:]),
            "prompts": _jsonl(d / "prompts.jsonl", [{"messages": q} for q in QUESTIONS])}


@pytest.fixture(scope="module")
def reference_answers(real_reference):
    """transformers: apply_chat_template(add_generation_prompt=True), then greedy generate (stopping at its model
    config's eos, <|im_end|>)."""
    import torch

    model, tokenizer = real_reference
    answers = []
    for messages in QUESTIONS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
        answers.append(tokenizer.decode(out, skip_special_tokens=True))
    return answers


def test_infer_chat_answers_equal_transformers(real_model_dir, data, reference_answers, tmp_path):
    launch("stage=infer", f"model.name_or_path={real_model_dir}", f"stage.input={data['prompts']}",
           f"stage.max_new_tokens={NEW_TOKENS}", f"hydra.run.dir={tmp_path / 'run'}")
    outputs = read_jsonl(tmp_path / "run" / "output.jsonl")
    assert [o["output"] for o in outputs] == reference_answers
    assert "Paris" in outputs[0]["output"] and outputs[0]["finish_reason"] == "stop"


def test_serve_answers_the_openai_client_as_transformers(real_model_dir, reference_answers, tmp_path):
    import openai

    server = start_server(["launch.py", f"model.name_or_path={real_model_dir}"], tmp_path / "run")
    try:
        client = openai.OpenAI(base_url=f"{server['base']}/v1", api_key="test-key")
        (served,) = [m.id for m in client.models.list().data]
        for messages, expected in zip(QUESTIONS, reference_answers):
            reply = client.chat.completions.create(model=served, messages=messages, max_tokens=NEW_TOKENS, temperature=0)
            assert reply.choices[0].message.content == expected
    finally:
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(timeout=60)


def test_lora_sft_on_messages_lowers_the_held_out_loss(real_model_dir, data, tmp_path):
    launch("stage=lora", f"model.name_or_path={real_model_dir}", f"stage.data.train={data['sft']}",
           f"stage.data.eval={data['sft_eval']}", "stage.train.max_steps=6", "stage.train.batch_size=4",
           "stage.train.lr=2e-3", "stage.train.warmup_steps=0", "stage.eval.max_new_tokens=4",
           f"hydra.run.dir={tmp_path / 'run'}")
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["eval_loss"] < 0.8 * summary["eval_loss_before"], summary


def test_dpo_on_trl_pairs_runs_and_prefers_the_chosen(real_model_dir, data, tmp_path):
    launch("stage=dpo", f"model.name_or_path={real_model_dir}", "stage.peft.method=lora",
           f"stage.data.train={data['dpo']}", f"stage.data.eval={data['dpo_eval']}", "stage.train.max_steps=3",
           "stage.train.batch_size=2", "stage.train.lr=2e-3", "stage.train.warmup_steps=0",
           f"hydra.run.dir={tmp_path / 'run'}")
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["eval_logp_margin_after"] > summary["eval_logp_margin_before"] + 5, summary
    assert summary["eval_reward_accuracy_after"] == 1.0 and summary["final_loss"] < 0.6931, summary


@pytest.mark.parametrize("quant", ["wint4", "gptq_w4"])
def test_quantize_reports_perplexity(real_model_dir, data, quant, tmp_path):
    launch("stage=quantize", f"quant={quant}", f"model.name_or_path={real_model_dir}", f"stage.eval={data['sft_eval']}",
           f"quant.calib_path={data['sft']}", "quant.calib_samples=4", f"hydra.run.dir={tmp_path / 'run'}")
    summary = read_json(tmp_path / "run" / "summary.json")
    # a 4-bit copy of a 135M model loses some, and not everything: the answers stay likely
    assert summary["perplexity_before"] < summary["perplexity_after"] < 4 * summary["perplexity_before"], summary
    assert summary["bytes_after"] < 0.6 * summary["bytes_before"]
