"""Several llmx runs, one after the other, in one process (group), through llmx's own stage runners:
`python run_matrix.py --out DIR --run NAME 'override;override;...' --run ...` (under
`python -m paddle.distributed.launch --nproc_per_node N` for a parallel layout; every run's overrides
must then name that layout).

Each run writes DIR/<NAME> with the run files launch.py writes (metrics.jsonl, summary.json, model/ or
adapter/): paying Python's and Paddle's start-up and the ranks' launch once for a whole matrix (families
x layout, adapter methods) instead of once per cell is what keeps such matrices affordable. A run that
fails writes DIR/<NAME>/error.rank<R>.txt (exception and traceback) and ends every rank at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helpers


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--run", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True,
                        help="a run's directory name and its overrides, separated by ';'")
    args = parser.parse_args()

    from helpers import compose
    from llmx.console import quiet_libraries
    from llmx.engine.context import create_context
    from llmx.run import run_stage
    from llmx.stages import stage_module, validate

    quiet_libraries(verbose=False)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    for name, overrides in args.run:
        run_dir = args.out / name
        try:
            cfg = compose(*[o for o in overrides.split(";") if o])
            validate(cfg)
            stage = stage_module(cfg.stage.runner)
            ctx = create_context(cfg, str(run_dir), stage.prepare(cfg))
            run_stage(stage, cfg, ctx)
        except Exception as error:  # noqa: BLE001 - recorded for the test, then every rank ends
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / f"error.rank{rank}.txt").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
            sys.stdout.flush()
            os._exit(3)
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        from llmx.compat.paddle import write_counters
        from llmx.engine.distributed import barrier

        write_counters()  # into the first run's dir: the compatibility layer's calls, per rank
        barrier()
    sys.stdout.flush()
    os._exit(0)  # as llmx's own ranks end (llmx.run._leave_rank): no interpreter teardown


if __name__ == "__main__":
    main()
