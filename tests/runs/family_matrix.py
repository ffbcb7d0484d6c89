"""A short full SFT of several model families under one parallel layout, through llmx's own sft runner:
`python -m paddle.distributed.launch --nproc_per_node N family_matrix.py --parallel tp2 --families a,b --out DIR`
(or plain `python family_matrix.py --parallel single ...` for the one-process reference).

Every family runs in this one process group, one after the other, each into DIR/<family> with the run
files launch.py writes (metrics.jsonl, summary.json, model/): launching the ranks once per layout instead
of once per (family, layout) cell is what keeps the whole family x layout matrix affordable. A family that
fails writes DIR/<family>/error.txt (rank and exception) and ends every rank at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helpers

# Three logged steps of a small global batch; eval loss only (a pipeline cannot generate).
COMMON = ["stage.train.max_steps=3", "stage.train.logging_steps=1", "stage.train.save_steps=3",
          "stage.train.batch_size=4", "stage.train.grad_accum=2", "stage.train.progress_bar=false",
          "stage.eval.enabled=false", "stage.train.lr=3e-3"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", required=True)
    parser.add_argument("--families", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from helpers import compose
    from llmx.console import quiet_libraries
    from llmx.engine.context import create_context
    from llmx.stages import stage_module, validate

    quiet_libraries(verbose=False)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    for family in args.families.split(","):
        run_dir = args.out / family
        try:
            cfg = compose(f"model={family}", "model.size=tiny", f"parallel={args.parallel}", *COMMON, *args.overrides)
            validate(cfg)
            stage = stage_module(cfg.stage.runner)
            ctx = create_context(cfg, str(run_dir), stage.prepare(cfg))
            ctx.experiment.write_summary(stage.run(cfg, ctx))
        except Exception as error:  # noqa: BLE001 - recorded for the test, then every rank ends
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / f"error.rank{rank}.txt").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
            sys.stdout.flush()
            os._exit(3)
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        import paddle.distributed as dist

        from llmx.engine.cpu_parallel import write_counters

        write_counters()  # into the first family's run dir: the compatibility layer's calls, per rank
        dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as llmx's own ranks end (llmx.run._leave_rank): no interpreter teardown


if __name__ == "__main__":
    main()
