"""`python -m llmx families`: what llmx runs for each model family, read from the family records (paddle-free).

One row per family: where its model code comes from, its published sizes, which parallel layouts, adapters,
packing, RoPE scaling, inference engine and stages it takes, and how its Hugging Face checkpoints convert. Every
"no" has its reason in the record (`--why` prints them); README's family table is this command's output
(tests/quick/test_families_table.py keeps the two equal). An entry-layer module: it reads the records and
the model conf files.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

from llmx.families import FAMILIES, Family

COLUMNS = ("family", "code", "sizes", "hf", "tp", "pp", "packing", "prefix", "rope scaling", "engine", "stages")


def _sizes(name: str) -> str:
    from omegaconf import OmegaConf

    from llmx.schema import CONF_DIR

    path = CONF_DIR / "model" / f"{name}.yaml"
    sizes = OmegaConf.load(path).get("sizes", {}) if path.is_file() else {}
    return ", ".join(s for s in sizes if s != "tiny") or "-"


def _stages(fam: Family) -> str:
    if fam.not_trainable:
        return "infer only"
    if fam.encoding != "causal":
        return "sft + adapters"
    return "all but dpo, kto" if fam.no_4d_mask else "all"


def row(fam: Family) -> Dict[str, str]:
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    return {
        "family": fam.name,
        "code": "PaddleNLP" if fam.classes == "paddlenlp.transformers" else "llmx",
        "sizes": _sizes(fam.name),
        "hf": fam.hf_model_type or "-",
        "tp": yes(not fam.no_tensor_parallel),
        "pp": yes(fam.pipeline_class),
        "packing": yes(fam.packing),
        "prefix": yes(fam.prefix_cache),
        "rope scaling": yes(fam.rope_layout),
        "engine": yes(not fam.no_engine),
        "stages": _stages(fam),
    }


def reasons(fam: Family) -> List[str]:
    """The record's reasons for each "no" of its row."""
    found = [("tp", fam.no_tensor_parallel), ("sequence parallel", fam.no_sequence_parallel), ("prefix", fam.no_prefix), ("rope scaling", fam.no_rope_scaling),
             ("engine", fam.no_engine), ("training", fam.not_trainable), ("dpo, kto", fam.no_4d_mask),
             ("static mode", fam.no_static)]
    return [f"{what}: {why}" for what, why in found if why]


def markdown(rows: List[Dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmx families", description=__doc__.splitlines()[0])
    parser.add_argument("--why", action="store_true", help="also print the record's reason for every 'no'")
    args = parser.parse_args(argv)
    print(markdown([row(f) for f in FAMILIES.values()]))
    if args.why:
        for fam in FAMILIES.values():
            for line in reasons(fam):
                print(f"{fam.name}: {line}")
    return 0
