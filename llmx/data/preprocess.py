"""Tokenize text into the indexed pretraining layout (`<output>.bin` + `<output>.idx`).

    python -m llmx.data.preprocess --input corpus.jsonl [more ...] --tokenizer DIR|tiny \\
        --output data/corpus [--text-key text] [--workers N] [--no-append-eos] [--max-docs N]

Inputs, read in the order given, each optionally gzipped (`.gz`):
  - `*.jsonl` / `*.json` / `*.ndjson`: one JSON object per line, the document under --text-key;
  - anything else: plain text, documents separated by blank lines.

Each document becomes one sequence: its ids from the tokenizer without special
tokens, then the eos id (Megatron's "append eod" convention; --no-append-eos
drops it). Ids are stored as uint16 when the vocabulary is below 65536, else int32.
With --workers N, chunks of documents are tokenized in N processes and written
in input order, so the output is byte-identical for any N. Progress goes to
stderr; the last stdout line is `documents: D, tokens: T, tokens/s: R`.

A bad argument or input line exits with status 2 and one line
`llmx: data error: <file>:<line>: <what is wrong>`; nothing is written then.
Reading and checking the arguments imports no paddle.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import multiprocessing
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np

from llmx.schema import asset_path
from llmx.errors import DataError, UserError
from llmx.data.indexed import IndexedWriter, _paths, dtype_for_vocab

CHUNK_DOCS = 128  # documents per task sent to a worker
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


# ----------------------------------------------------------------------------- reading


def _open_text(path: Path) -> TextIO:
    # utf-8-sig: a leading byte-order mark is not part of the first document.
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def is_jsonl(path: str | Path) -> bool:
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(JSONL_SUFFIXES)


def _jsonl_documents(path: Path, f: TextIO, text_key: str, pos: list) -> Iterator[str]:
    for lineno, line in enumerate(f, start=1):
        pos[0] = lineno
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line.rstrip("\r\n"))  # so a column is not reported on "the next line"
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with key {text_key!r}, got {type(obj).__name__}")
        if text_key not in obj:
            raise DataError(f"{where}: no key {text_key!r}")
        text = obj[text_key]
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_key!r} is {type(text).__name__}, expected a string")
        yield text


def _text_documents(f: TextIO, pos: list) -> Iterator[str]:
    lines: list[str] = []
    for lineno, line in enumerate(f, start=1):
        pos[0] = lineno
        line = line.rstrip("\r\n")
        if line.strip():
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def read_documents(paths: Sequence[str | Path], text_key: str = "text") -> Iterator[str]:
    """Every document of every input, in order; a bad file or line raises DataError."""
    for path in map(Path, paths):
        pos = [0]  # last line read, for messages about undecodable input
        try:
            with _open_text(path) as f:
                docs = _jsonl_documents(path, f, text_key, pos) if is_jsonl(path) else _text_documents(f, pos)
                yield from docs
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory, expected a file") from None
        except UnicodeDecodeError as e:
            bad = e.object[e.start:e.start + 1]
            raise DataError(f"{path}: not valid UTF-8 (byte {bad!r}) after line {pos[0]}") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a readable gzip file ({e or type(e).__name__}) after line {pos[0]}") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- tokenizing


def load_tokenizer(name_or_path: str):
    """'tiny' is the bundled tokenizer; otherwise a directory (or name) for AutoTokenizer."""
    import warnings

    with warnings.catch_warnings():  # two harmless warnings paddle prints on import, not ours to show
        warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
        warnings.filterwarnings("ignore", message="Setuptools is replacing distutils", category=UserWarning)
        from paddlenlp.transformers import AutoTokenizer

    path = asset_path("tiny_tokenizer") if name_or_path == "tiny" else name_or_path
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure here is "this is not a usable tokenizer"
        msg = " ".join(str(e).split())[:300]
        raise DataError(f"{name_or_path}: cannot load a tokenizer ({type(e).__name__}: {msg})") from None


_WORKER: dict = {}  # per-process tokenizer + eos id (inherited on fork, or set by _init_worker)


def _init_worker(tokenizer, eos_id: int | None) -> None:
    _WORKER["tokenizer"] = tokenizer
    _WORKER["eos"] = eos_id


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a chunk of documents, as (all ids concatenated, ids per document)."""
    tok, eos = _WORKER["tokenizer"], _WORKER["eos"]
    encoded = tok(texts, add_special_tokens=False, return_attention_mask=False, return_position_ids=False,
                  return_token_type_ids=False)["input_ids"]
    if eos is not None:
        encoded = [ids + [eos] for ids in encoded]
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter((i for ids in encoded for i in ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _chunks(docs: Iterable[str], size: int, limit: int | None) -> Iterator[list[str]]:
    chunk: list[str] = []
    taken = 0
    if limit is not None and limit <= 0:
        return
    for text in docs:
        chunk.append(text)
        taken += 1
        if len(chunk) == size:
            yield chunk
            chunk = []
        if taken == limit:  # stop before reading (and checking) a document past the limit
            break
    if chunk:
        yield chunk


def _encoded_chunks(chunks: Iterator[list[str]], workers: int, tokenizer, eos_id):
    """Encoded chunks in input order. With workers > 1 at most 4*workers chunks are in
    flight, so memory stays bounded and input errors surface in this process."""
    if workers == 1:
        _init_worker(tokenizer, eos_id)
        for chunk in chunks:
            yield len(chunk), _encode_chunk(chunk)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer, eos_id)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((len(chunk), pool.apply_async(_encode_chunk, (chunk,))))
            if len(pending) >= 4 * workers:
                n, result = pending.popleft()
                yield n, result.get()
        while pending:
            n, result = pending.popleft()
            yield n, result.get()


@dataclass
class Stats:
    documents: int
    tokens: int
    seconds: float
    dtype: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def line(self) -> str:
        return f"documents: {self.documents}, tokens: {self.tokens}, tokens/s: {self.tokens_per_s:.0f}"


def preprocess(inputs: Sequence[str | Path], output: str | Path, tokenizer, text_key: str = "text",
               workers: int = 1, append_eos: bool = True, max_docs: int | None = None,
               progress: bool = False) -> Stats:
    """Tokenize `inputs` into `<output>.bin/.idx`. `tokenizer` is a loaded tokenizer, a
    directory, or 'tiny'. Returns counts and the time spent reading, tokenizing and writing."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(os.fspath(tokenizer))
    eos_id = tokenizer.eos_token_id if append_eos else None
    if append_eos and eos_id is None:
        raise DataError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: the tokenizer has no eos token "
                        "(pass --no-append-eos)")
    vocab = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    dtype = dtype_for_vocab(vocab)

    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(unit="doc", file=sys.stderr, disable=not progress, desc="tokenizing", dynamic_ncols=True,
               delay=0.5)  # no bar at all for runs (or errors) under half a second
    with bar, IndexedWriter(output, dtype) as writer:
        chunks = _chunks(read_documents(inputs, text_key), CHUNK_DOCS, max_docs)
        for n, (flat, lengths) in _encoded_chunks(chunks, workers, tokenizer, eos_id):
            for ids in np.split(flat, np.cumsum(lengths[:-1])):
                writer.add_document(ids)
            bar.update(n)
            bar.set_postfix(tokens=writer.num_tokens, refresh=False)
        if writer.num_documents == 0:
            raise DataError(f"{', '.join(map(str, inputs))}: no documents")
    return Stats(writer.num_documents, writer.num_tokens, time.perf_counter() - start, dtype.name)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llmx.data.preprocess",
        description="Tokenize JSONL or plain-text documents into <output>.bin + <output>.idx "
                    "(the Megatron/PaddleNLP MMIDIDX layout) for llmx's pretrain stage.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="JSONL (.jsonl/.json/.ndjson) or plain text (documents separated by blank lines); "
                        "each may be gzipped (.gz)")
    p.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a PaddleNLP tokenizer directory, or 'tiny' for llmx's bundled one")
    p.add_argument("--text-key", default="text", help="JSONL key holding the document text (default: text)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--append-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="end every document with the eos token (default: on)")
    p.add_argument("--max-docs", type=int, default=None, metavar="N", help="stop after N documents")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for path in args.input:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
        if not os.path.isfile(path):
            raise DataError(f"{path}: not a file")
    if args.workers < 1:
        raise DataError(f"--workers {args.workers}: must be at least 1")
    if args.max_docs is not None and args.max_docs < 1:
        raise DataError(f"--max-docs {args.max_docs}: must be at least 1")
    if args.tokenizer != "tiny" and not os.path.isdir(args.tokenizer):
        raise DataError(f"{args.tokenizer}: no such tokenizer directory (or pass 'tiny' for the bundled one)")
    parent = Path(args.output).parent
    if parent.exists() and not parent.is_dir():
        raise DataError(f"{args.output}: {parent} is not a directory")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        stats = preprocess(args.input, args.output, args.tokenizer, text_key=args.text_key, workers=args.workers,
                           append_eos=args.append_eos, max_docs=args.max_docs, progress=True)
    except UserError as e:
        sys.stderr.write(f"llmx: {e.kind}: {e}\n")
        return 2
    idx_path, bin_path = _paths(args.output)
    print(f"wrote {bin_path} and {idx_path} ({stats.dtype})")
    print(stats.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
