"""Checkpoint conversion: Hugging Face / PyTorch checkpoints in and out (llmx.convert.hf), tensor by
tensor (llmx.convert.tensors), and HF tokenizers (llmx.convert.tokenizer)."""
