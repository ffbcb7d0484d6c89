"""The JSON Lines reader PaddleNLP's formats use (paddle-free): each non-blank line parsed, the first bad
line raising DataError('path:line: reason'), an empty file refused. The line reading itself is
llmx.data.files' (shared with the JSON, parquet and datasets readers)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from llmx.data.files import jsonl_records
from llmx.errors import DataError

T = TypeVar("T")


def read_jsonl_records(path: str | Path, parse: Callable[[object, str, int], T], what: str = "examples") -> list[T]:
    """[parse(obj, "path:line", line) for each line]; `parse` raises DataError naming that place."""
    records = [parse(obj, where, lineno) for where, lineno, obj in jsonl_records(path)]
    if not records:
        raise DataError(f"{path}: no {what} (the file is empty)")
    return records
