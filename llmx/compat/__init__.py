"""Upstream patches, in one place: what llmx changes in the libraries it builds on, and why.

Rules:
- One module per upstream library, named after it (`llmx.compat.paddle`, `.paddlenlp`, `.trl`,
  `.hydra`); it imports nothing of llmx above the ground layer (llmx.errors), so any layer may
  call it. This package's `__init__` imports nothing: `compat.hydra` stays paddle-free.
- Importing a module changes nothing; a function (`install()`, or the patched step itself) applies
  a patch where it is needed.
- Each patch says, in its module's docstring or its own: the problem it fixes, the upstream version
  it was found in, and when it can go.
- Each patch has a test (tests/quick/test_compat.py) that fails when the upstream behaviour it relies
  on changes: the bug is still there, and the names and signatures it replaces still exist.
- A family's fixes live in its family module (llmx.families), in the same form. llmx's own logic that
  works around an upstream limit stays where it belongs, with a comment in the same form (e.g.
  engine.checkpoint's tensor-parallel LoRA merge, engine.reft's resume, engine.peft's early PiSSA SVD).
  llmx.ops.patch is no upstream patch: it swaps in llmx's own fused kernels.

The patches:
- paddle (paddlepaddle 3.3.1), `install(run_dir, rank)` for multi-process runs on CPU: gloo's missing
  collectives, per-group gloo stores, CPU model-parallel ops, fleet's GPU-only wrappers (sharding
  stage 2, tensor-parallel input broadcast, pipeline device id); counters per rank. On every device,
  `count_shared_weights_once(model)`: a pipeline-shared (tied) weight counts once in the gradient norm.
- paddlenlp (paddlenlp 3.0.0b4): LoKr and MoRA adapter merges (`merge_adapter_layer`); bool
  attention masks for Llama's pipeline stages (`bool_pipeline_attention_masks`).
- paddlenlp's import (`llmx.compat.paddlenlp_import`, paddle-free): `defer_unused_imports()`, called by llmx.cli,
  imports taskflow, dataaug, server and scikit-learn only when something uses them (0.9 s per process).
- trl (PaddleNLP's trl, paddlenlp 3.0.0b4): see llmx.compat.trl.
- hydra (hydra-core 1.3.8): config errors as one line and exit code 2 (`run_and_report`,
  `JobReturn.return_value`), the silenced schema-match warning; `install()`, called by llmx.cli.
"""
