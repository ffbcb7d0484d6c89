"""Data: reading files in every format (files, formats, mixture), the dialogue model (dialogue) and its
rendering through a chat template (chat), and each kind of data encoded for its stages: sft, preference
(DPO, KTO, RM: encoding, packing, collators), pretrain (indexed corpora, preprocess), infer prompts, plus
the bundled demo data. Sits below the engine: it imports llmx.schema, llmx.tokens and llmx.errors only, and
no paddle at import time (functions that build tensors import it inside)."""
