"""Reinforcement learning from feedback (stage=ppo, stage=grpo): the loss algebra, rewards, rollouts on
llmx's inference engine, and the training loop the two stages share. PaddleNLP's pip package has no
PPO or GRPO, so this loop is llmx's own; it builds models, checkpoints and metrics through llmx.engine.
Dependencies: stages -> rl -> infer -> engine."""
