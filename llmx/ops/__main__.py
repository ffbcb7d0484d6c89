"""`python -m llmx.ops build` compiles csrc/ into the cache ahead of time;
`python -m llmx.ops check` says per op whether its kernel is built (and why not) and its self-test result."""
from __future__ import annotations

import argparse
import sys
import time

TOL = 1e-5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx.ops", description=__doc__)
    parser.add_argument("command", choices=("build", "check"))
    parser.add_argument("--force", action="store_true", help="build: rebuild even when the cache has this key")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.simplefilter("ignore")  # paddle's import-time chatter ("No ccache found"): this command prints its own lines
    logging.getLogger("llmx.ops").setLevel(logging.ERROR)  # `check` prints the build error per op itself
    import paddle

    import llmx.ops as ops
    from llmx.ops import build as b

    paddle.set_device("cpu")
    if args.command == "build":
        start = time.time()
        try:
            b.build(force=args.force)
        except b.BuildError as e:
            print(f"llmx.ops: {e}", file=sys.stderr)
            return 2
        print(f"kernels ready in {b.cache_root() / b.cache_key()} ({time.time() - start:.1f} s)")
        return 0

    loaded = ops.configure("auto")
    print(f"cache: {b.cache_root()}  key: {b.cache_key()}  cuda kernels: {b.cuda_status()}")
    if not loaded:
        for name in ops.OPS:
            print(f"  {name:28s} not built: {ops.error()}; runs Paddle's composed ops")
        return 1
    from llmx.ops import selftest

    bad = 0
    for name, diff in selftest.run(ops).items():
        ok = diff <= TOL
        bad += not ok
        print(f"  {name:28s} built   self-test {'ok' if ok else 'FAILED'} (max |kernel - composed| {diff:.1e}, forward and gradients)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
