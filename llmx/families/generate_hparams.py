"""Regenerate llmx/families/hparams.json: per family, the hyperparameter names PaddleNLP takes, so
`model.overrides` and sizes can be checked (and close matches suggested) without importing paddle.
`python -m llmx.families.generate_hparams` after a PaddleNLP upgrade; tests/quick/test_families_table.py
fails when the committed file is stale.

A name counts when the config class accepts it (its __init__ parameters, the attributes of a default
instance, PretrainedConfig's common ones included, and its attribute_map spellings) or when the
family's modeling code reads it from the config although the class does not declare it (Yuan's
eod_token, QWen's seq_length).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import sys

from llmx.families import FAMILIES
from llmx.families.record import HPARAMS_FILE

_READS = re.compile(r"\bconfig\.([A-Za-z_]\w*)|getattr\(\s*(?:self\.)?config\s*,\s*[\"'](\w+)[\"']")


def accepted_names(config_class) -> set:
    params = {n for n, p in inspect.signature(config_class.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    instance = {k for k in vars(config_class()) if not k.startswith("_")}
    return params | instance | set(getattr(config_class, "attribute_map", {}))


def read_by_model(model_class) -> set:
    source = inspect.getsource(sys.modules[model_class.__module__])
    return {a or b for a, b in _READS.findall(source)}


def generate() -> dict:
    logging.disable(logging.WARNING)
    return {name: sorted(accepted_names(f.load_class("config_class")) | read_by_model(f.load_class()))
            for name, f in sorted(FAMILIES.items())}


if __name__ == "__main__":
    HPARAMS_FILE.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {HPARAMS_FILE}")
