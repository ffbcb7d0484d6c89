"""ChatGLM v1 (the GLM encoding) through the sft stage: trained on a copy task, its greedy answers are the trained
answers, batched as one by one."""
from __future__ import annotations

import json

from helpers import read_jsonl, run_in_process

ROWS = ["red fox", "a big blue whale", "one two three four", "sun", "green hill by the lake"]


def test_chatglm_learns_a_copy_task(tmp_path):
    data = tmp_path / "copy.jsonl"
    data.write_text("".join(json.dumps({"src": f"copy: {r}", "tgt": r}) + "\n" for r in ROWS))
    run = tmp_path / "run"
    summary = run_in_process(run, "model=chatglm", "model.size=tiny", "stage=sft", f"stage.data.train={data}",
                             f"stage.data.eval={data}", "stage.train.max_steps=60", "stage.train.lr=1e-2",
                             "stage.train.warmup_steps=0", f"stage.train.batch_size={len(ROWS)}",
                             "stage.eval.batch_size=5", f"hydra.run.dir={run}")
    samples = read_jsonl(run / "samples.jsonl")
    assert summary["eval_loss"] < 0.05 < summary["eval_loss_before"], summary
    assert sorted(s["generated"] for s in samples) == sorted(ROWS) and summary["exact_match"] == 1.0, samples
