"""Reward functions the RL tests name as `stage.reward=rl_rewards:<name>` (tests/runs is on sys.path)."""


def uppercase(prompts, responses, references):
    """The fraction of a response's letters that are capitals: a rule the tiny model can learn in a few steps."""
    return [sum(c.isupper() for c in r) / max(sum(c.isalpha() for c in r), 1) for r in responses]


def wrong_length(prompts, responses, references):
    return [0.0]


def not_numbers(prompts, responses, references):
    return ["high" for _ in responses]
