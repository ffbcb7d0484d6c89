"""llmx's hyperparameter search as a Hydra sweeper: `hydra/sweeper=llmx_search` (see llmx/search.py)."""
