"""Records from any file type people keep datasets in (paddle-free): JSON Lines, a JSON array, parquet, and a
Hugging Face `datasets` directory written by `save_to_disk`. Each record comes with where it is, so every
data error can start with it:

    JSON Lines            path:LINE        (blank lines skipped)
    .json array           path:record N    (1-based; a .json file holding JSON Lines is read as JSON Lines)
    .parquet              path:row N
    datasets directory    path:row N       (a DatasetDict: its `train` split, or its only one;
                                            `path:SPLIT` names another)

Columnar files (parquet, datasets) hold every column in every row, null where a record lacks it, so a null
top-level value is dropped: such a record reads like the JSON line it was made from. pyarrow and datasets
are imported only when such a file is read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from llmx.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonlines", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
TYPES = "JSON Lines (.jsonl), JSON (.json: an array of objects), parquet (.parquet) and Hugging Face datasets " \
        "directories (save_to_disk)"


def read_records(path: str | Path, what: str = "examples") -> list[tuple[str, dict]]:
    """(where, record) for every record of `path`, in order; DataError when the file cannot be read or holds
    none (`path: no examples (the file is empty)`)."""
    return [(where, record) for where, _, record in numbered_records(path, what)]


def numbered_records(path: str | Path, what: str = "examples") -> list[tuple[str, int, dict]]:
    """(where, number, record): `number` is the line (JSON Lines) or the 1-based record/row number."""
    records = list(_records(str(path)))
    if not records:
        raise DataError(f"{path}: no {what} (the file is empty)")
    return records


def _records(path: str) -> Iterator[tuple[str, int, dict]]:
    p = Path(path)
    if p.is_dir():
        return _dataset_rows(p, None, path)
    if not p.exists():
        split_dir, _, split = path.rpartition(":")
        if split_dir and (Path(split_dir) / "dataset_dict.json").is_file():
            return _dataset_rows(Path(split_dir), split, path)
        raise DataError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return jsonl_records(p)
    if suffix == ".json":
        return _json(p)
    if suffix in PARQUET_SUFFIXES:
        return _parquet(p)
    raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; llmx reads {TYPES}")


def jsonl_records(path: str | Path, text: str | None = None) -> Iterator[tuple[str, int, dict]]:
    """(where, line number, parsed JSON) per non-blank line of a JSON Lines file (or of `text`, its content)."""
    # Split on newlines only: str.splitlines would also split inside strings holding U+2028 and kin.
    if text is None:
        with Path(path).open(encoding="utf-8") as f:
            yield from _jsonl_lines(path, f)
    else:
        yield from _jsonl_lines(path, text.split("\n"))


def _jsonl_lines(path, lines) -> Iterator[tuple[str, int, dict]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, lineno, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def _json(path: Path) -> Iterator[tuple[str, int, dict]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Many `.json` datasets are JSON Lines in fact: two objects in a row is their sign.
        if text.lstrip().startswith("{"):
            return jsonl_records(path, text)
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict) and len([line for line in text.split("\n") if line.strip()]) == 1:
        return jsonl_records(path, text)
    if not isinstance(data, list):
        raise DataError(f"{path}: holds a JSON {type(data).__name__}; expected an array of objects "
                        "(or JSON Lines: one object a line)")
    return ((f"{path}:record {i}", i, record) for i, record in enumerate(data, start=1))


def _rows(rows, where: str) -> Iterator[tuple[str, int, dict]]:
    for i, row in enumerate(rows, start=1):
        yield f"{where}:row {i}", i, {k: v for k, v in row.items() if v is not None}


def _parquet(path: Path) -> Iterator[tuple[str, int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors have no common base worth naming; the message is what helps
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    return _rows(table.to_pylist(), str(path))


def _dataset_rows(directory: Path, split: str | None, where: str) -> Iterator[tuple[str, int, dict]]:
    is_dict = (directory / "dataset_dict.json").is_file()
    if not is_dict and not ((directory / "dataset_info.json").is_file() and (directory / "state.json").is_file()):
        raise DataError(f"{directory}: a directory that is not a Hugging Face dataset saved with save_to_disk "
                        f"(no dataset_info.json and state.json, nor dataset_dict.json); llmx reads {TYPES}")
    import datasets

    data = datasets.load_from_disk(str(directory))
    if is_dict:
        splits = list(data.keys())
        if split is None:
            split = "train" if "train" in splits else splits[0] if len(splits) == 1 else None
        if split not in splits:
            named = f"has no split {split!r}" if split is not None else "has no train split"
            raise DataError(f"{directory}: {named}; its splits: {', '.join(splits)} "
                            f"(name one as {directory}:SPLIT)")
        data = data[split]
    return _rows(data.to_list(), where)
