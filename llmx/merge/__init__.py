"""Model merging: mergekit-style recipes (llmx.merge.recipe, paddle-free), per-tensor merge
methods (llmx.merge.methods) and the streaming merge over safetensors files (llmx.merge.stream).
It reads and writes tensors only: an input that must be built first (an adapter onto its base) is
built by stage=merge through the engine."""
