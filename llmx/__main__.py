"""`python -m llmx ...` sub-commands (none yet besides the launcher)."""
import sys


def main() -> int:
    print("usage: python launch.py [group=option ...] [key=value ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
