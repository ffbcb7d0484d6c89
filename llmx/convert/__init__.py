"""Checkpoint conversion: Hugging Face / PyTorch checkpoints in and out (llmx.convert.hf), tensor by
tensor (llmx.convert.tensors), HF tokenizers (llmx.convert.tokenizer), llama.cpp GGUF files
(llmx.convert.gguf), and the cache of converted checkpoints (llmx.convert.cache: what a checkpoint
holds, read without paddle, and its conversion on first use). llmx.sources, beside this package,
says what a `name_or_path` is; the model is converted when the engine builds it."""
