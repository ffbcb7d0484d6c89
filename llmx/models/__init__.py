"""Model code llmx writes itself, one module per family PaddleNLP 3.0.0b4 has no model code for, built on
PaddleNLP's building blocks of the nearest family (its attention, MLP, norms, pretrained-model machinery,
name maps and tensor-parallel split actions). A family's record names its module in `Family.classes`.

These modules import paddle: only the engine and conversion load them (through `Family.load_class`).
"""
