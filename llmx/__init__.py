"""llmx: a Hydra-configured experiment framework for LLMs on PaddlePaddle.

Importing this package must stay cheap: config composition, `--help`, `diff` and
validation never import paddle. Heavy modules live under llmx.engine/stages.
"""

__version__ = "0.1.0"
