"""An OpenAI-compatible HTTP API and a web chat page over llmx's inference engine (llmx.infer)."""
