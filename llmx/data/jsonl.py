"""The one JSONL reader every input format uses (paddle-free): each non-blank line parsed, the first bad
line raising DataError('path:line: reason'), an empty file refused."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from llmx.errors import DataError

T = TypeVar("T")


def read_jsonl_records(path: str | Path, parse: Callable[[object, str, int], T], what: str = "examples") -> list[T]:
    """[parse(obj, "path:line", line) for each line]; `parse` raises DataError naming that place."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            records.append(parse(obj, where, lineno))
    if not records:
        raise DataError(f"{path}: no {what} (the file is empty)")
    return records
