"""The inference engine every generating part of llmx shares (SFT evaluation, stage=infer,
stage=serve): KV-cache decoding with continuous batching (engine.py, over a model runner in
runners.py), sampling and beam search (sampling.py), stop strings and streamed text (text.py),
static export through paddle.jit + Paddle Inference (export.py).

`sampling` and `text` are paddle-free; `engine`, `runners` and `export` import paddle."""
