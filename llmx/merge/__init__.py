"""Model merging: mergekit-style recipes (llmx.merge.recipe, paddle-free), per-tensor merge
methods (llmx.merge.methods) and the streaming merge over safetensors files (llmx.merge.stream)."""
