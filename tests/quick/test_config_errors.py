"""Bad configs and bad data fail before any heavy import, with exit code 2 and one stderr line
naming the key, the bad value and what is allowed. Every case is checked through Hydra's compose API
and validation, the same code launch.py runs (in two interpreters side by side: this file run as a
script, `python test_config_errors.py SHARD NSHARDS`, prints the lines of its share of the cases),
and a case of each kind of error as a real `python launch.py` (one stderr line, exit 2, paddle never
imported)."""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import HEAVY_IMPORT_MARK, compose, config_error, input_error, run_python

from llmx.schema import CONF_DIR
from llmx.stages import validate

LLAMA_SIZES = "tiny, 7b, 13b, 70b"


def OPTIONS(group: str) -> str:
    """What the error must list: every file of the group, sorted."""
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
TRAIN_KEYS = "max_steps, epochs, batch_size, grad_accum, lr, lr_scheduler, warmup_steps"

# (overrides, substrings the one line must contain)
BAD_CONFIGS = {
    "unknown_key": (["stage.train.lrr=1"],
                    ["config error: stage.train.lrr: unknown key", f"allowed here: {TRAIN_KEYS}"]),
    "unknown_key_appended": (["+stage.train.lrr=1"],
                             ["config error: stage.train.lrr=1: unknown key", f"allowed here: {TRAIN_KEYS}"]),
    "unknown_top_level_key": (["foo=1"],
                              ["foo: unknown key", "allowed here: model, stage, parallel, quant, seed, device"]),
    "wrong_type_int": (["stage.train.batch_size=abc"],
                       ["stage.train.batch_size", "'abc'", "could not be converted to Integer"]),
    "wrong_type_float": (["stage.train.lr=abc"], ["stage.train.lr", "'abc'", "could not be converted to Float"]),
    "bad_override_syntax": (["stage.train.lr=[1"], ["config error: bad override", "'[1'"]),
    "unknown_model": (["model=nope"],
                      ["Could not find 'model/nope'", f"available: {OPTIONS('model')}"]),
    "unknown_stage": (["stage=nope"], ["Could not find 'stage/nope'", f"available: {OPTIONS('stage')}"]),
    "unknown_parallel": (["parallel=nope"], ["Could not find 'parallel/nope'", f"available: {OPTIONS('parallel')}"]),
    "unknown_quant": (["quant=nope"], ["Could not find 'quant/nope'", f"available: {OPTIONS('quant')}"]),
    "model_size": (["model.size=99b"], ["model.size='99b'", f"allowed for llama: {LLAMA_SIZES}"]),
    "model_size_other_family": (["model=qwen2", "model.size=7b1"],
                                ["model.size='7b1'", "allowed for qwen2: tiny, 0.5b, 1.5b, 7b, 72b"]),
    "model_dtype": (["model.dtype=int8"], ["model.dtype='int8'", "allowed: float32, bfloat16, float16"]),
    "model_fused_ops": (["model.fused_ops=yes"], ["model.fused_ops='yes'", "allowed: auto, on, off"]),
    "runtime_threads": (["runtime.threads=0"], ["runtime.threads=0", "allowed: auto, or a number of threads >= 1"]),
    "runtime_threads_word": (["runtime.threads=all"], ["runtime.threads='all'", "allowed: auto, or a number"]),
    "lr_zero": (["stage.train.lr=0"], ["stage.train.lr=0.0", "must be > 0"]),
    "lr_scheduler": (["stage.train.lr_scheduler=foo"],
                     ["stage.train.lr_scheduler='foo'", "allowed: cosine, linear, constant"]),
    "peft_method": (["stage.peft.method=adapterx"],
                    ["stage.peft.method='adapterx'", "allowed: none, lora, prefix, lokr, vera, reft"]),
    "merge_adapter_without_adapter": (["stage.merge_adapter=true"],
                                      ["stage.merge_adapter=True", "needs an adapter that folds into the weights (lora, "
                                       "lokr, vera); full fine-tuning already writes the full model"]),
    "merge_reft": (["stage=reft", "stage.merge_adapter=true"],
                   ["stage.merge_adapter=True", "ReFT edits hidden states at chosen positions, not weights"]),
    "lora_variant": (["stage=lora", "stage.peft.variant=dora"],
                     ["stage.peft.variant='dora'", "allowed: none, rslora, pissa, mora, moslora"]),
    "variant_without_lora": (["stage=vera", "stage.peft.variant=pissa"],
                             ["stage.peft.variant='pissa'", "needs stage.peft.method=lora"]),
    "lora_plus_ratio": (["stage=lora", "stage.peft.lora_plus_ratio=0"], ["stage.peft.lora_plus_ratio=0", "must be > 0"]),
    "pissa_rank": (["stage=lora", "stage.peft.variant=pissa", "stage.peft.lora_r=65"],
                   ["stage.peft.lora_r=65", "must be <= the hidden size (64)"]),
    "mora_under_tp": (["stage=lora", "stage.peft.variant=mora", "parallel=tp2"],
                      ["stage.peft.variant='mora'", "does not run under tensor or pipeline parallelism"]),
    "pissa_under_pp": (["stage=lora", "stage.peft.variant=pissa", "parallel=pp2"],
                       ["stage.peft.variant='pissa'", "does not run under tensor or pipeline parallelism"]),
    "vera_under_pp": (["stage=vera", "parallel=pp2"],
                      ["stage.peft.method='vera'", "does not run under tensor or pipeline parallelism"]),
    "lokr_factor": (["stage=lokr", "stage.peft.lokr_factor=0"], ["stage.peft.lokr_factor=0", "must be >= 1, or -1"]),
    "reft_family": (["stage=reft", "model=qwen"], ["stage.peft.method='reft'", "model family qwen is not LLaMA"]),
    "reft_positions": (["stage=reft", "stage.peft.reft_positions=first3"],
                       ["stage.peft.reft_positions='first3'", "allowed: f<n> (first n prompt tokens), l<n>"]),
    "reft_layers": (["stage=reft", "stage.peft.reft_layers=[0,2]"],
                    ["stage.peft.reft_layers=[0, 2]", "the model's layers are 0..1"]),
    "reft_packing": (["stage=reft", "stage.zero_padding=true"], ["stage.zero_padding=True", "not with ReFT"]),
    "lora_rank_zero": (["stage=lora", "stage.peft.lora_r=0"], ["stage.peft.lora_r=0", "must be >= 1"]),
    "prefix_unsupported_family": (["stage=prefix", "model=yuan"],
                                  ["stage.peft.method='prefix'", "not supported for model family yuan"]),
    "src_length_not_below_max_length": (["stage.data.src_length=500"],
                                        ["stage.data.src_length=500", "between 1 and stage.data.max_length-1 (127)"]),
    "missing_train_file": (["stage.data.train=/nonexistent.jsonl"],
                           ["stage.data.train='/nonexistent.jsonl'", "no such file", "never downloads"]),
    "missing_model_dir": (["model.name_or_path=/no/such/dir"],
                          ["model.name_or_path='/no/such/dir'", "no such directory"]),
    # Parallel layouts that cannot work are refused before any process starts (tiny llama: 4 heads,
    # 2 KV heads, 2 layers, vocab 512). The world vs an outer launcher: tests/test_parallel.py.
    "tp_not_dividing_heads": (["parallel.tp=3"], ["parallel.tp=3: must divide the model's attention heads (4)"]),
    "tp_not_dividing_kv_heads": (["parallel=tp4pp2"], ["parallel.tp=4: must divide the model's KV heads (2)"]),
    "tp_not_dividing_heads_bloom": (["model=bloom", "parallel.tp=3"],  # BLOOM names them n_head
                                    ["parallel.tp=3: must divide the model's attention heads (4)"]),
    "tp_not_dividing_vocab": (["parallel=tp2", "model.sizes.tiny.vocab_size=513"],
                              ["parallel.tp=2: must divide the model's vocab size (513)"]),
    "pp_not_dividing_layers": (["parallel.pp=4"], ["parallel.pp=4: pp*vpp = 4 must divide the model's layers (2)"]),
    "vpp_not_dividing_layers": (["parallel.pp=4", "parallel.vpp=2"],
                                ["parallel.pp=4: pp*vpp = 8 must divide the model's layers (2)"]),
    "vpp_with_two_stages": (["parallel=pp2", "parallel.vpp=2"],
                            ["parallel.vpp=2: virtual pipeline stages need parallel.pp > 2"]),
    # what this machine's devices rule out (CPU over gloo), before any process starts
    "vpp_on_cpu": (["parallel.pp=4", "parallel.vpp=2", "model.overrides.num_hidden_layers=8"],
                   ["parallel.vpp=2: virtual pipeline stages do not run on CPU"]),
    "sharding_stage3_on_cpu": (["parallel.sharding=2", "parallel.sharding_stage=3"],
                               ["parallel.sharding_stage=3: sharding stage 3 does not run on CPU"]),
    "pp_with_sharding_stage2": (["parallel=pp2", "parallel.sharding=2", "parallel.sharding_stage=2"],
                                ["parallel.sharding_stage=2: pp>1 needs sharding stage1"]),
    "pp_without_pipeline_class": (["parallel=pp2", "model=mistral"],
                                  ["parallel.pp=2: model family mistral has no pipeline class"]),
    "sharding_without_stage": (["parallel.sharding=2"], ["parallel.sharding=2: needs parallel.sharding_stage 1, 2 or 3"]),
    "sharding_stage_without_degree": (["parallel.sharding_stage=1"], ["parallel.sharding_stage=1: needs parallel.sharding >= 2"]),
    "vpp_without_pp": (["parallel.vpp=2"], ["parallel.vpp=2: virtual pipeline stages need parallel.pp > 2"]),
    "sequence_parallel_without_tp": (["parallel.sequence_parallel=true"],
                                     ["parallel.sequence_parallel=True: needs parallel.tp > 1"]),
    "sequence_parallel_in_sft": (["parallel=tp2", "parallel.sequence_parallel=true"],
                                 ["parallel.sequence_parallel=True: needs fixed-length batches"]),
    "prefix_with_pipeline": (["stage=prefix", "parallel=pp2"],
                             ["stage.peft.method='prefix': prefix tuning does not run under pipeline parallelism"]),
    "global_batch_not_splittable": (["parallel=dp2", "stage.train.batch_size=3"],
                                    ["parallel='dp*sharding=2': must divide stage.train.grad_accum (1) or "
                                     "stage.train.batch_size (3)"]),
    "sharding_stage": (["parallel.sharding_stage=5"], ["parallel.sharding_stage=5", "allowed: 0 (off), 1, 2, 3"]),
    "chatglm_v1_dpo": (["model=chatglm", "stage=dpo"], ["model.family='chatglm'", "trains with stage=sft (and its adapters) only"]),
    "negative_seed": (["seed=-1"], ["seed=-1", "must be >= 0"]),
    "device": (["device=tpu"], ["device='tpu'", "allowed: auto, cpu, gpu"]),
    "unknown_hyperparameter": (["model.overrides.hiden_size=128"],
                               ["model.overrides.hiden_size: unknown hyperparameter for model family llama",
                                "(did you mean hidden_size"]),
    "unknown_hyperparameter_in_dict": (["model=bloom", "model.overrides={n_heads: 8}"],
                                       ["model.overrides.n_heads: unknown hyperparameter for model family bloom",
                                        "did you mean ", "n_head?)"]),
    "unknown_stage_runner": (["stage.runner=nosuchstage"],
                             ["stage.runner='nosuchstage': no module llmx.stages.nosuchstage", "built-in: "]),
}
# One case of each kind, also run as a real `python launch.py` (each costs a Hydra start-up).
END_TO_END = ["unknown_key", "wrong_type_int", "bad_override_syntax", "unknown_model", "pp_without_pipeline_class",
              "unknown_hyperparameter"]


SHARDS = 2


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> dict[str, str]:
    """Every case's line, computed by SHARDS interpreters side by side (composing is slow)."""
    root = tmp_path_factory.mktemp("config_errors")

    def shard(i: int) -> dict:
        proc = run_python(__file__, str(i), str(SHARDS), tmp_path=root / str(i))
        assert proc.returncode == 0 and HEAVY_IMPORT_MARK not in proc.stderr, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(SHARDS) as pool:
        return {k: v for part in pool.map(shard, range(SHARDS)) for k, v in part.items()}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_config_is_one_line(name, lines):
    line, expected = lines[name], BAD_CONFIGS[name][1]
    assert line.startswith("llmx: config error: "), line
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


def test_bad_configs_end_to_end(tmp_path, lines):
    """The same lines from real launches: one stderr line, exit 2, no paddle import."""
    def launched(name: str) -> str:
        (tmp_path / name).mkdir()
        return config_error(*BAD_CONFIGS[name][0], tmp_path=tmp_path / name)

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(launched, END_TO_END)) == [lines[name] for name in END_TO_END]


def test_model_overrides_take_any_known_hyperparameter():
    """`model.overrides.X=V` needs no `+`, and a whole dict replaces nothing else."""
    cfg = compose("model.overrides.hidden_size=128", "model.overrides.num_attention_heads=8")
    validate(cfg)
    assert dict(cfg.model.overrides) == {"hidden_size": 128, "num_attention_heads": 8}
    cfg = compose("model=qwen2", "model.overrides={num_attention_heads: 8, intermediate_size: 96}")
    validate(cfg)
    assert dict(cfg.model.overrides) == {"num_attention_heads": 8, "intermediate_size": 96}
    assert cfg.model.sizes.tiny.num_attention_heads == 4  # the size itself is untouched


def test_multirun_config_error_names_the_job(tmp_path):
    line = config_error("seed=-1,-2", tmp_path=tmp_path, multirun=True)  # every job bad: none trains
    sweep = tmp_path / "sweep"
    assert line == (f"llmx: error: 2 of 2 sweep jobs failed (see {sweep / 'sweep.md'}); "
                    "first: job 0 (seed=-1): ConfigError: seed=-1: must be >= 0"), line


GOOD = '{"src": "1+1=", "tgt": "2"}\n'
BAD_DATA = {
    "missing_tgt": ('{"src": "2+2="}\n', "does not fit the src_tgt format (detected from"),
    "invalid_json": ('{"src": "2+2=", "tgt": \n', "invalid JSON"),
    "turn_count_mismatch": ('{"src": ["a", "b"], "tgt": ["c"]}\n', "src has 2 turns but tgt has 1"),
}


@pytest.mark.parametrize("bad_line,reason", BAD_DATA.values(), ids=BAD_DATA.keys())
@pytest.mark.parametrize("split", ["train", "eval"])
def test_bad_data_line_is_one_line_with_path_and_line_number(split, bad_line, reason, tmp_path):
    data = tmp_path / f"{split}.jsonl"
    data.write_text(GOOD + bad_line + GOOD)
    line = input_error(f"stage.data.{split}={data}")
    assert line.startswith(f"llmx: data error: {data}:2: "), line
    assert reason in line, line
    if (split, bad_line) == ("train", BAD_DATA["missing_tgt"][0]):  # and from a real launch, before paddle
        assert config_error(f"stage.data.{split}={data}", tmp_path=tmp_path) == line


def test_import_watch_sees_paddle(tmp_path):
    """The watch behind every case above is not vacuous: it reports a (faked) paddle import."""
    proc = run_python("-c", "import sys; sys.modules['paddle'] = sys; sys.exit(2)", tmp_path=tmp_path)
    assert proc.returncode == 2 and HEAVY_IMPORT_MARK + " paddle" in proc.stderr, proc.stderr


if __name__ == "__main__":
    shard_index, shard_count = (int(a) for a in sys.argv[1:3])
    print(json.dumps({name: input_error(*BAD_CONFIGS[name][0]) for name in list(BAD_CONFIGS)[shard_index::shard_count]}))
