"""The shared engine under every stage runner: runtime (device, seed, world),
model + tokenizer building, PEFT wrapping, the Trainer and its checkpoints.
Importing llmx.engine.* pulls in paddle; llmx.schema and llmx.experiment do not."""
