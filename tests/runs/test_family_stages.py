"""Every model family through every stage a user chains after SFT: dpo, kto, rm, ppo, grpo (from the SFT run),
merge (the SFT and GRPO runs), quantize (weight-only int8, perplexity on held-out data) and infer (greedy answers
of the merged model with the inference engine's KV cache). The stages a family's record refuses are left out of
its chain and checked to stop in one line before launch.

One family per launch of tests/runs/run_matrix.py (one interpreter, one paddle import for its whole chain); each
run is as short as proves it runs: one or two steps. What each stage computes is tested elsewhere on the tiny
default (test_alignment, test_rl, test_merge, test_quant, test_infer); here the question is whether a family's
model code survives each stage's path (reference copies, score heads, rollouts with a cache, merged and quantized
checkpoints that reload)."""
from __future__ import annotations

import math

import pytest
from helpers import input_error, read_json, read_jsonl, run_matrix, train_losses

from llmx.families import FAMILIES

TRAINABLE = sorted(name for name, f in FAMILIES.items() if not f.not_trainable)
SHORT = ["stage.train.max_steps=2", "stage.train.logging_steps=1", "stage.train.progress_bar=false"]
PAIRS = SHORT + ["stage.train.batch_size=2", "stage.eval.enabled=false"]
RL = ["stage.train.max_steps=1", "stage.train.batch_size=4", "stage.train.progress_bar=false", "stage.data.eval=null",
      "stage.reward=rl_rewards:uppercase", "stage.rollout.prompts_per_step=4", "stage.rollout.max_new_tokens=4"]


def refused(family: str) -> set:
    """The stages after SFT that the family's record says it cannot run (each refused in one line before launch)."""
    fam = FAMILIES[family]
    out = {"dpo", "kto"} if fam.no_4d_mask else set()
    if fam.encoding != "causal":  # (ChatGLM v1's GLM encoding is written for SFT examples)
        out |= {"dpo", "kto", "rm", "ppo", "grpo", "quantize"}
    if fam.no_engine:
        out.add("infer")
    return out


def _chain(family: str, out) -> dict:
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in ("What is two plus two?", "Name a colour.", "Hi")))
    base = [f"model={family}", "model.size=tiny"]
    sft = f"model.name_or_path={out / 'sft'}"
    second = "grpo" if "grpo" not in refused(family) else "sft_seed1"  # the merge's second model
    chain = {
        "sft": [*base, "stage=sft", *SHORT, "stage.train.batch_size=4", "stage.eval.enabled=false"],
        "sft_seed1": [*base, "stage=sft", *SHORT, "stage.train.batch_size=4", "stage.eval.enabled=false", "seed=1"],
        "dpo": [*base, sft, "stage=dpo", *PAIRS],
        "kto": [*base, sft, "stage=kto", *PAIRS],
        "rm": [*base, sft, "stage=rm", *PAIRS],
        "ppo": [*base, sft, "stage=ppo", *RL],
        "grpo": [*base, sft, "stage=grpo", *RL],
        "merge": [*base, "stage=merge", "stage.method=linear", f"stage.models=[{out / 'sft'},{out / second}]",
                  "stage.weights=[0.5,0.5]"],
        "quantize": [*base, sft, "stage=quantize", "quant=wint8", "stage.max_length=64"],
        "infer": [*base, f"model.name_or_path={out / 'merge'}", "stage=infer", f"stage.input={prompts}",
                  "stage.max_new_tokens=6", "stage.progress_bar=false"],
    }
    skip = refused(family) | ({"sft_seed1"} if second == "grpo" else set())
    return {name: overrides for name, overrides in chain.items() if name not in skip}


@pytest.mark.parametrize("family", TRAINABLE)
def test_every_stage_runs_for_the_family(family, tmp_path):
    chain = _chain(family, tmp_path)
    out = run_matrix(chain, tmp_path)
    for stage in {"sft", "dpo", "kto", "rm"} & set(chain):
        losses = [loss for _, loss in train_losses(out / stage)]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (stage, losses)
    for stage in {"ppo", "grpo"} & set(chain):
        rows = read_jsonl(out / stage / "metrics.jsonl")
        assert rows and all(math.isfinite(r["loss"]) for r in rows if "loss" in r), (stage, rows)
    assert (out / "merge" / "model" / "config.json").is_file()
    if "quantize" in chain:
        quant = read_json(out / "quantize" / "summary.json")
        assert abs(quant["perplexity_after"] / quant["perplexity_before"] - 1) < 0.02, quant  # int8: within 2%
    if "infer" in chain:
        answers = read_jsonl(read_json(out / "infer" / "summary.json")["output"])
        assert len(answers) == 3 and all(a["generated_tokens"] > 0 for a in answers), answers


@pytest.mark.parametrize("family", [name for name in TRAINABLE if refused(name)])
def test_the_stages_a_family_cannot_run_are_refused_in_one_line(family, tmp_path):
    """What the chain above leaves out is refused before launch, in one line naming the family."""
    for stage in sorted(refused(family)):
        prompts = tmp_path / "prompts.jsonl"  # (infer reads its prompts file's name first)
        prompts.write_text('{"prompt": "Hi"}\n')
        extra = [f"stage.input={prompts}"] if stage == "infer" else []
        line = input_error(f"model={family}", "model.size=tiny", f"stage={stage}", *extra)
        assert line.startswith(f"llmx: config error: model.family='{family}'"), (stage, line)
