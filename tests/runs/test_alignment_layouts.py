"""Preference stages under pipeline layouts equal one process, step for step, at a learning rate that
moves the weights (1e-2, no warmup, clipping on, 3 steps): dpo and kto under pp2 and tp2pp2, rm under pp2.

trl's pipeline schedule runs with llmx's criterion as the last stage's loss (llmx.align.preference
.into_pipeline): ORPO at beta 0.5 is TRL's definition there too (PaddleNLP's pipeline loss would leave
beta out), KTO's reference point is llmx's, LoRA's reference is the base with its adapters off. stage=rm
puts its score head on the last stage in place of the LM head (llmx.align.reward.score_pipeline); it
refuses LoRA under pp, and tensor parallelism (tests/quick/test_data_preference.py). Each layout's cells
run one after the other in one launch (tests/runs/run_matrix.py).
"""
from __future__ import annotations

import pytest
from helpers import read_json, run_matrix, train_losses

MOVING = ["stage.train.max_steps=3", "stage.train.batch_size=2", "stage.train.grad_accum=2", "stage.train.save_steps=3",
          "stage.train.lr=1e-2", "stage.train.warmup_steps=0", "stage.train.lr_scheduler=constant",
          "stage.train.logging_steps=1", "stage.eval.enabled=false"]
CELLS = {"dpo": ["stage=dpo"], "dpo_orpo": ["stage=dpo", "stage.loss_type=orpo", "stage.beta=0.5"],
         "dpo_lora": ["stage=dpo", "stage.peft.method=lora"], "kto": ["stage=kto"],
         "rm": ["stage=rm"]}
# (four ranks on CPU: the two stages whose losses llmx defines; rm refuses tensor parallelism)
LAYOUT_CELLS = {"pp2": (2, tuple(CELLS)), "tp2pp2": (4, ("dpo", "kto"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return run_matrix({name: [*o, *MOVING] for name, o in CELLS.items()}, tmp_path_factory.mktemp("align_pp") / "one")


@pytest.mark.parametrize("layout", list(LAYOUT_CELLS))
def test_preference_stages_under_pipeline_layouts_match_one_process(one_process, tmp_path, layout):
    ranks, cells = LAYOUT_CELLS[layout]
    out = run_matrix({name: [*CELLS[name], *MOVING, f"parallel={layout}"] for name in cells}, tmp_path / layout,
                     processes=ranks)
    for name in cells:
        want = train_losses(one_process / name)
        assert [s for s, _ in want] == [1, 2, 3] and want[2][1] != pytest.approx(want[0][1], rel=1e-3), name
        assert train_losses(out / name) == [(s, pytest.approx(x, rel=1e-5)) for s, x in want], name
    if "rm" in cells:  # the last stage saved the head beside the exported backbone
        assert (out / "rm" / "model" / "score_head.safetensors").is_file()
    # the pipeline really ran: its stages exchanged activations (counters of the first cell's launch)
    counters = read_json(out / cells[0] / f"cpu_parallel_counters.rank{ranks - 1}.json")
    assert counters["collective.send"] > 0 and counters["collective.recv"] > 0
    if layout == "tp2pp2":
        assert counters["mp.c_softmax_with_cross_entropy"] > 0
