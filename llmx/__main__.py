"""`python -m llmx <command>`: tools around runs (diff, rerun, plan), what llmx supports per model family (families) and its config groups and stages (groups); no paddle import."""
from __future__ import annotations

import sys

from llmx.errors import UserError

COMMANDS = {"diff": "llmx.diff", "rerun": "llmx.rerun", "plan": "llmx.plan", "families": "llmx.family_table",
            "groups": "llmx.groups_table"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m llmx {{{','.join(COMMANDS)}}} ...   (training runs: python launch.py)", file=sys.stderr)
        return 2
    import importlib

    try:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    except UserError as e:
        print(f"llmx: {e.kind}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
