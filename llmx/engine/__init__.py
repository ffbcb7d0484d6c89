"""The engine: only what several stages share. No stage algorithm lives here (DPO/KTO and reward models
are llmx.align's, PPO/GRPO llmx.rl's), and the engine imports no stage, algorithm package or data format.

    runtime, context, distributed   device, seed and world; the context a stage's run() receives
    model, peft, reft, prefix_hooks building the model and tokenizer; adapters over it
    trainer, fit, batching          PaddleNLP's Trainer with llmx's mixin; the training loop every training
                                    stage calls; padded and packed batches of encoded examples
    evaluation                      the Trainer's eval loss as the token mean over the whole eval set
    checkpoint                      checkpoints, resumes and the exported model or adapter
    logits, generate, score         per-token log-probs and KL; generation; the score model (rm, ppo, scoring)
    allocator                       CPU training steps reuse the host memory the last step freed (glibc)

Importing llmx.engine.* pulls in paddle; llmx.schema and llmx.experiment do not."""
