"""Every model family under every model-parallel layout: full SFT under tp2, pp2 (where PaddleNLP has a
pipeline class) and tp2pp2 matches one process step by step, or the layout is refused before launch
with one line naming the family and why.

Each layout launches its ranks once and trains every family in turn (tests/runs/run_matrix.py runs
llmx's own sft runner per family): the matrix costs one launch per layout, not one per cell. Every cell
also exports the model (tensor-parallel shards and pipeline stages merged): it loads into one process
and computes the single run's loss on a fixed batch.
"""
from __future__ import annotations

import pytest

from helpers import input_error, read_json, run_matrix, saved_model_loss, train_losses
from llmx.families import FAMILIES

# Three logged steps of a small global batch; eval loss only (a pipeline cannot generate).
COMMON = ["stage.train.max_steps=3", "stage.train.logging_steps=1", "stage.train.save_steps=3",
          "stage.train.batch_size=4", "stage.train.grad_accum=2", "stage.train.progress_bar=false",
          "stage.eval.enabled=false", "stage.train.lr=3e-3"]
TRAINABLE = sorted(name for name, f in FAMILIES.items() if not f.not_trainable)
LAYOUTS = {  # layout -> (processes, the families that support it)
    "tp2": (2, [f for f in TRAINABLE if not FAMILIES[f].no_tensor_parallel]),
    "pp2": (2, [f for f in TRAINABLE if FAMILIES[f].pipeline_class]),
    "tp2pp2": (4, [f for f in TRAINABLE if FAMILIES[f].pipeline_class and not FAMILIES[f].no_tensor_parallel]),
}


def _matrix(layout: str, families: list[str], out, processes: int = 1):
    return run_matrix({f: [f"model={f}", "model.size=tiny", f"parallel={layout}", *COMMON] for f in families}, out,
                      processes)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _matrix("single", TRAINABLE, tmp_path_factory.mktemp("matrix") / "single")


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_family_matches_one_process(layout, single, tmp_path):
    processes, families = LAYOUTS[layout]
    out = _matrix(layout, families, tmp_path / layout, processes)
    problems = []
    for family in families:
        want, got = train_losses(single / family), train_losses(out / family)
        if [s for s, _ in got] != [1, 2, 3] or [x for _, x in got] != pytest.approx([x for _, x in want], rel=1e-5):
            problems.append(f"{family}: losses {got} vs one process {want}")
        # each rank held a part of the model, and the parts merge back into the whole
        part, whole = read_json(out / family / "summary.json")["total_params"], read_json(single / family / "summary.json")["total_params"]
        if not part < whole:
            problems.append(f"{family}: rank 0 holds {part} of {whole} parameters")
        merged = saved_model_loss(out / family / "model", family=family, examples=8)
        reference = saved_model_loss(single / family / "model", family=family, examples=8)
        if merged != pytest.approx(reference, rel=1e-5):
            problems.append(f"{family}: exported model's loss {merged} vs one process's {reference}")
    assert not problems, "\n".join(problems)
    counters = read_json(out / families[0] / f"cpu_parallel_counters.rank{processes - 1}.json")
    if "tp" in layout:  # the compatibility layer's model-parallel ops really ran
        assert counters["mp.c_identity"] > 0 and counters["mp.c_softmax_with_cross_entropy"] > 0, counters
    if "pp" in layout:
        assert counters["collective.send"] + counters.get("collective.send_partial_as_send", 0) > 0, counters


REFUSED = [(f, layout) for layout, (_, supported) in LAYOUTS.items() for f in TRAINABLE if f not in supported]


@pytest.mark.parametrize("family,layout", REFUSED)
def test_unsupported_cells_are_refused_before_launch(family, layout):
    line = input_error(f"model={family}", f"parallel={layout}")
    fam = FAMILIES[family]
    if "tp" in layout and fam.no_tensor_parallel:
        assert line == (f"llmx: config error: parallel.tp=2: model family {family} cannot be split over "
                        f"tensor-parallel ranks: {fam.no_tensor_parallel}")
    else:
        assert line == f"llmx: config error: parallel.pp=2: model family {family} has no pipeline class in PaddleNLP"
