"""How llmx's fused linear cross-entropy cuts its rows into chunks: one rule for the op (llmx.ops) and for the memory
plan (llmx.plan), kept apart from llmx.ops because `plan` imports no paddle.

Logits per chunk: at most 16M float32 (64 MiB; 512 rows at a 32k vocabulary) and at most a quarter of the rows, at
least 16. MKL's GEMMs slow down on few rows (the weight gradient's at 256 rows runs at ~60% of its speed at 512), so
smaller chunks cost time; larger ones memory. At 2048 tokens x 32k, 512-row chunks peak at 0.40 of the composed
loss's memory; at 1024 tokens the quarter (256 rows) keeps it at 0.64 in all, 0.34 beyond the weight gradient both
hold (bench/ops.py's method).
"""
from __future__ import annotations

CE_CHUNK_ELEMENTS = 16 << 20
CE_CHUNKS_AT_LEAST = 4
CE_CHUNK_ROWS_AT_LEAST = 16


def ce_chunk_rows(rows: int, vocab: int) -> int:
    """Rows per chunk of the fused loss over `rows` counted positions and a `vocab`-wide head."""
    return max(CE_CHUNK_ROWS_AT_LEAST, min(CE_CHUNK_ELEMENTS // max(vocab, 1), -(-rows // CE_CHUNKS_AT_LEAST)))
