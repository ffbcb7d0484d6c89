"""Alignment on preferences: DPO (and its variants) and KTO on PaddleNLP's trl, and reward-model training.

- options.py    DPO's loss types, which need a reference, the reference-free and SFT-weight defaults,
                whose definitions of the losses (paddle-free: the dpo stage's validation reads them too);
- losses.py     the DPO losses as TRL (or the paper) defines them, where PaddleNLP's trl differs (ORPO, DPOP);
- preference.py the DPO/KTO run: trl's config objects, trainer and criterion choice, held-out
                measurements before and after, the run itself (`run_alignment`);
- reward.py     reward-model training: the pairwise loss, its metrics, the stage=rm run.

Reading DPO end to end: conf/stage/dpo.yaml and llmx/stages/dpo.py (config, validation, reading the
files), align/options.py, align/losses.py, align/preference.py's `run_alignment`, llmx/data/preference.py
(encoding in trl's layout, packing, the collator) and llmx/compat/trl.py (what is fixed in trl). Beyond these, the
run uses the engine's shared pieces: model building, PEFT, engine.fit and its Trainer mixin,
checkpoints and logits. The score model that reward models, PPO/GRPO and scoring share is
llmx.engine.score. Dependencies: stages -> align -> engine, data, compat.
"""
