"""Each family's upstream fix (llmx/families/<family>.py, marked @before_build / @after_random_init)
still meets the upstream behaviour its docstring names, and repairs it. A failure here means
upstream changed: read the fix's docstring (what it works around, when it can go) and drop or adapt it.

The fixes patch PaddleNLP classes for the whole process, and other tests in this process may have
applied them already: the probes below (one `_probe_<fix>` per fix) therefore run together in one
fresh `python -c` (a pristine PaddleNLP), each looking at upstream first and then applying its fix;
the tests read their answers.
"""
from __future__ import annotations

import json
import subprocess
import sys
import traceback

import pytest

from helpers import REPO

QUICK = REPO / "tests" / "quick"


# ------------------------------------------------------------------------- probes (in the subprocess)
def _outcome(call) -> str:
    """"ok", or the exception a call raises as "Type: first line"."""
    try:
        call()
        return "ok"
    except Exception as ex:  # the probes record what upstream raises, whatever it is
        return f"{type(ex).__name__}: " + (str(ex).strip().splitlines() or [""])[0]


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


def _probe_mixtral_moe_routing() -> dict:
    import numpy as np
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers import MixtralConfig
    from paddlenlp.transformers.mixtral.modeling import MixtralSparseMoeBlock

    from llmx.families.mixtral import mixtral_moe_routing

    paddle.seed(0)
    where_shapes = [list(t.shape) for t in paddle.where(paddle.to_tensor([[True, False], [True, True]]))]
    config = MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(config)
    x = paddle.randn([1, 7, 8])  # 7 tokens, top-2 of 4 experts: fewer than hidden (8) per expert
    upstream = _outcome(lambda: block(x))
    mixtral_moe_routing()
    with paddle.no_grad():
        out, _ = block(x)
        tokens = x.reshape([-1, 8])
        weights, experts = paddle.topk(F.softmax(block.gate(tokens), axis=-1), 2, axis=-1)
        weights = (weights / weights.sum(axis=-1, keepdim=True)).numpy()
        every = np.stack([expert(tokens).numpy() for expert in block.experts])  # [expert, token, hidden]
    rows = np.arange(7)
    dense = sum(weights[:, k:k + 1] * every[experts.numpy()[:, k], rows] for k in range(2))
    return {"where_shapes": where_shapes, "upstream": upstream,
            "fixed_vs_dense": float(np.abs(out.numpy().reshape([7, 8]) - dense).max())}


def _probe_gemma_tanh_gelu() -> dict:
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers import GemmaConfig
    from paddlenlp.transformers.gemma.modeling import GemmaMLP

    from llmx.families.gemma import gemma_tanh_gelu

    paddle.seed(0)
    config = GemmaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=4, hidden_act="gelu_pytorch_tanh",
                         hidden_activation="gelu_pytorch_tanh")
    mlp = GemmaMLP(config)
    x = paddle.randn([4, 8]) * 3.0  # large enough that exact and tanh gelu differ visibly

    def geglu(approximate):
        return mlp.down_proj(F.gelu(mlp.gate_proj(x), approximate=approximate) * mlp.up_proj(x))

    with paddle.no_grad():
        exact, tanh, upstream = geglu(False), geglu(True), mlp(x)
        gemma_tanh_gelu()
        fixed = mlp(x)
    return {"exact_vs_tanh": _max_diff(exact, tanh), "upstream_vs_exact": _max_diff(upstream, exact),
            "upstream_vs_tanh": _max_diff(upstream, tanh), "fixed_vs_tanh": _max_diff(fixed, tanh)}


def _probe_bloom_zeroed_linears() -> dict:
    import paddle
    from paddlenlp.transformers import BloomConfig, BloomForCausalLM

    from llmx.families.bloom import bloom_zeroed_linears

    def weights():
        return [float(layer.weight.abs().max()) for layer in model.sublayers() if isinstance(layer, paddle.nn.Linear)]

    paddle.seed(0)
    model = BloomForCausalLM.from_config(BloomConfig(vocab_size=32, hidden_size=16, n_layer=2, n_head=2))  # as llmx
    upstream = weights()
    bloom_zeroed_linears(model)
    return {"upstream_linear_max_abs": upstream, "fixed_linear_max_abs": weights()}


def _tiny_opt():
    from paddlenlp.transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       word_embed_proj_dim=16, max_position_embeddings=32, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    return OPTForCausalLM(config)


def _probe_opt_missing_attributes() -> dict:
    from llmx.families.opt import opt_missing_attributes

    model = _tiny_opt()
    upstream = {"has_no_sync": hasattr(model, "no_sync"), "no_sync": repr(getattr(model, "no_sync", "missing"))}
    opt_missing_attributes()
    return {"upstream": upstream, "fixed_has_no_sync": hasattr(model, "no_sync"),
            "fixed_vocab_size": model.vocab_size}  # names the config has are still read from it


def _loss_probe(model, fix) -> dict:
    """`model`'s loss on a batch with ignored (-100) labels, before and after `fix`, beside the mean of its
    per-token cross entropy over the target tokens and over every position."""
    import paddle
    import paddle.nn.functional as F

    paddle.seed(0)
    model.eval()
    ids = paddle.randint(5, 32, [2, 6])
    labels = ids.clone()
    labels[0, :2] = -100  # a prompt of 2 in the first row, of 4 in the second: 6 targets in 12 positions
    labels[1, :4] = -100

    def loss():
        out = model(input_ids=ids, labels=labels)
        return float(out[0])  # a tuple's first item, or a ModelOutput's first set field: the loss

    with paddle.no_grad():
        out = model(input_ids=ids)
        logits = out if isinstance(out, paddle.Tensor) else out[0]
        per_token = F.cross_entropy(logits.reshape([-1, logits.shape[-1]]), labels.reshape([-1, 1]),
                                    ignore_index=-100, reduction="none")
        upstream = loss()
        fix()
        fixed = loss()
    return {"upstream": upstream, "fixed": fixed, "over_targets": float(per_token.sum()) / 6,
            "over_positions": float(per_token.sum()) / 12}


def _probe_opt_loss_over_target_tokens() -> dict:
    from llmx.families.opt import opt_loss_over_target_tokens

    return _loss_probe(_tiny_opt(), opt_loss_over_target_tokens)


def _probe_yuan_loss_over_target_tokens() -> dict:
    from paddlenlp.transformers import YuanConfig, YuanForCausalLM

    from llmx.families.yuan import yuan_loss_over_target_tokens

    config = YuanConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        max_position_embeddings=32, model_max_length=32, pad_token_id=3, eod_token=2, sep_token=4,
                        reset_attention_mask=True, reset_position_ids=True, causal_mask=True, use_loss_mask=False)
    return _loss_probe(YuanForCausalLM(config), yuan_loss_over_target_tokens)


def _probe_qwen_pipeline_attention_mask() -> dict:
    import paddle
    from paddlenlp.transformers import QWenConfig
    from paddlenlp.transformers.qwen.modeling import QWenModel
    from paddlenlp.transformers.qwen.modeling_pp import QWenEmbeddingPipe

    from llmx.families.qwen import qwen_pipeline_attention_mask

    config = QWenConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, kv_channels=8,
                        intermediate_size=32, seq_length=16)
    embedding = QWenEmbeddingPipe(config)
    ids, padding = paddle.to_tensor([[3, 7, 9, 11]]), paddle.to_tensor([[0, 1, 1, 1]])  # one left pad
    inputs = (ids, padding, None)
    had_it = hasattr(QWenModel, "_prepare_decoder_attention_mask")
    upstream = _outcome(lambda: embedding(inputs))
    qwen_pipeline_attention_mask()
    _, mask = embedding(inputs)
    allowed = paddle.tril(paddle.ones([4, 4], dtype="bool")) & padding.astype("bool")  # causal, pad key hidden
    expected = paddle.where(allowed, paddle.zeros([4, 4]), paddle.full([4, 4], paddle.finfo(paddle.float32).min))
    return {"had_prepare": had_it, "upstream": upstream, "fixed_mask_shape": list(mask.shape),
            "fixed_mask_vs_expected": _max_diff(mask.reshape([4, 4]), expected)}


def _probe_chatglm_loss_over_target_tokens() -> dict:
    import numpy as np
    import paddle
    from paddlenlp.transformers import ChatGLMConfig, ChatGLMForCausalLM

    from llmx.families.chatglm import chatglm_loss_over_target_tokens

    config = ChatGLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           inner_hidden_size=32, max_sequence_length=16)
    model = ChatGLMForCausalLM(config)

    class WithItsInputs:  # ChatGLMModel refuses to run without a 4-D mask; causal, plain positions here
        def eval(self):
            model.eval()

        def __call__(self, input_ids, **kwargs):
            b, s = input_ids.shape
            mask = paddle.to_tensor(np.broadcast_to(np.tri(s, dtype=bool), (b, 1, s, s)).copy())
            positions = paddle.to_tensor(np.broadcast_to(np.stack([np.arange(s), np.zeros(s, "int64")]), (b, 2, s)).copy())
            return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)

    return _loss_probe(WithItsInputs(), chatglm_loss_over_target_tokens)


def _probe_chatglm2_pipeline_position_ids() -> dict:
    import paddle
    from paddlenlp.transformers import ChatGLMv2Config
    from paddlenlp.transformers.chatglm_v2 import modeling_pp

    from llmx.families.chatglm2 import chatglm2_pipeline_position_ids

    config = ChatGLMv2Config(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, kv_channels=8,
                             multi_query_group_num=1, ffn_hidden_size=32, max_sequence_length=16)
    embedding = modeling_pp.EmbeddingPipe(config)
    inputs = (paddle.to_tensor([[3, 7, 9, 11]]), paddle.to_tensor([[1, 1, 1, 1]]))  # ids and mask, no positions

    def as_next_stage_reads(out):
        _, _, position_ids, rotary, _, _ = modeling_pp.parse_args(out)
        return {"passed": len(out), "position_ids": None if position_ids is None else str(position_ids.dtype),
                "rotary": None if rotary is None else list(rotary.shape),
                "positions": None if position_ids is None or position_ids.dtype != paddle.int64 else
                position_ids.tolist()}

    upstream = as_next_stage_reads(embedding(inputs))
    chatglm2_pipeline_position_ids()
    return {"upstream": upstream, "fixed": as_next_stage_reads(embedding(inputs))}


def _tiny_deepseek_config(**kw):
    from paddlenlp.transformers import DeepseekV3Config

    moe = dict(n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=8, n_group=4,
               topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
               routed_scaling_factor=2.5)
    return DeepseekV3Config(**{**dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, q_lora_rank=8, kv_lora_rank=8,
                                      qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_position_embeddings=16,
                                      seq_length=16, pad_token_id=3), **(moe if kw.pop("moe", False) else {}), **kw})


def _probe_deepseek_rotary_tables() -> dict:
    import numpy as np
    import paddle
    from paddlenlp.transformers import DeepseekV3ForCausalLM
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2RotaryEmbedding

    from llmx.families.deepseek_v3 import deepseek_rotary_tables

    paddle.seed(0)
    model = DeepseekV3ForCausalLM(_tiny_deepseek_config())  # dense: no MoE layer in the way
    ids = paddle.to_tensor([[5, 6, 7, 8, 9]])
    rotary = DeepseekV2RotaryEmbedding(4, max_position_embeddings=16)
    upstream_shape = list(rotary(paddle.zeros([1]), seq_len=5)[0].shape)
    upstream = _outcome(lambda: model(ids))
    deepseek_rotary_tables()
    cos, sin = rotary(paddle.zeros([1]), seq_len=5)
    angles = np.outer(np.arange(5), 1.0 / 10000 ** (np.arange(0, 4, 2) / 4))
    expected = np.concatenate([angles, angles], axis=-1)
    return {"upstream_table_shape": upstream_shape, "upstream": upstream, "fixed": _outcome(lambda: model(ids)),
            "fixed_table_shape": list(cos.shape),
            "fixed_vs_formula": float(max(np.abs(cos.numpy() - np.cos(expected)).max(),
                                          np.abs(sin.numpy() - np.sin(expected)).max()))}


def _probe_deepseek_moe_routing() -> dict:
    import paddle
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2MoE

    from llmx.families.deepseek_v3 import deepseek_moe_routing, route

    paddle.seed(0)
    block = DeepseekV2MoE(_tiny_deepseek_config(moe=True))
    block.gate.weight.set_value(paddle.randn(block.gate.weight.shape))
    block.gate.e_score_correction_bias.set_value(paddle.randn([8]) * 0.3)
    x = paddle.randn([2, 5, 16])
    upstream = _outcome(lambda: block(x))
    deepseek_moe_routing()
    with paddle.no_grad():
        tokens = x.reshape([10, 16])
        experts, weights = route(block.gate, tokens)
        dense = block.shared_experts(tokens)
        for t in range(10):  # each token through its own experts, one at a time
            for k in range(2):
                dense[t] += weights[t, k] * block.experts[int(experts[t, k])](tokens[t:t + 1])[0]
        inferred = block(x)
        block.train()
        trained = block(x)
    rebuilt = DeepseekV2MoE(_tiny_deepseek_config(moe=True))  # (the fix marks the bias as it builds)
    return {"upstream": upstream, "fixed_vs_per_token": _max_diff(inferred.reshape([10, 16]), dense),
            "train_vs_eval": _max_diff(trained, inferred),
            "bias_trained": not rebuilt.gate.e_score_correction_bias.stop_gradient}


def _probe_deepseek_tensor_parallel_rope_key() -> dict:
    """Upstream's attention source (a tp run needs several processes: tests/runs/test_family_layouts.py shows the
    fix at work), and that one process is left as it was."""
    import inspect

    import paddle
    from paddlenlp.transformers.deepseek_v2.modeling import DeepseekV2Attention

    from llmx.families.deepseek_v3 import deepseek_tensor_parallel_rope_key

    source = inspect.getsource(DeepseekV2Attention)
    deepseek_tensor_parallel_rope_key()
    paddle.seed(0)
    attention = DeepseekV2Attention(_tiny_deepseek_config())
    return {"upstream_identities": source.count("_c_identity") + source.count("c_identity("),
            "upstream_rope_key_expanded": "k_pe.reshape([-1, q_len, 1, self.qk_rope_head_dim]).expand(" in source,
            "fixed_hooks_in_one_process": len(attention.kv_a_proj_with_mqa._forward_post_hooks)}


def _probe_deepseek_generation_inputs() -> dict:
    import paddle
    from paddlenlp.transformers import DeepseekV3ForCausalLM

    from llmx.families.deepseek_v3 import deepseek_generation_inputs

    def inputs():  # (it reads nothing of the model)
        got = DeepseekV3ForCausalLM.prepare_inputs_for_generation(
            None, paddle.to_tensor([[0, 5, 6]]), attention_mask=paddle.to_tensor([[0, 1, 1]]),
            position_ids=paddle.to_tensor([[0, 0, 1]]), use_cache=True)
        return sorted(k for k, v in got.items() if v is not None)

    upstream = inputs()
    deepseek_generation_inputs()
    return {"upstream": upstream, "fixed": inputs()}


def _probe_deepseek_pad_embedding() -> dict:
    import paddle
    from paddlenlp.transformers import DeepseekV3ForCausalLM

    from llmx.families.deepseek_v3 import deepseek_pad_embedding

    def pad_row_read():
        paddle.seed(0)
        embed = DeepseekV3ForCausalLM(_tiny_deepseek_config()).get_input_embeddings()
        embed.weight.set_value(paddle.randn(embed.weight.shape))  # (paddle also zeroes the pad row at init)
        return float(embed(paddle.to_tensor([[3]])).abs().max()), float(embed.weight[3].abs().max())

    upstream = pad_row_read()
    deepseek_pad_embedding()
    return {"upstream": upstream, "fixed": pad_row_read()}


def _probe_deepseek_router_init() -> dict:
    import paddle
    from paddlenlp.transformers import DeepseekV3ForCausalLM

    from llmx.families.deepseek_v3 import deepseek_router_init

    paddle.seed(0)
    model = DeepseekV3ForCausalLM.from_config(_tiny_deepseek_config(moe=True))  # as llmx's random init
    weight = model.get_decoder().layers[0].mlp.gate.weight
    upstream = sorted({float(v) for v in weight.numpy().ravel()})
    deepseek_router_init(model)
    return {"upstream_values": upstream, "fixed_std": float(weight.std()), "initializer_range": 0.02}


def _probe_all() -> None:
    """Run every probe of this module, in this (fresh) process; print their answers as one JSON line."""
    answers = {}
    for name, probe in sorted(globals().items()):
        if name.startswith("_probe_") and name != "_probe_all":
            try:
                answers[name[len("_probe_"):]] = probe()
            except Exception:  # one probe's failure fails its own test, not the others'
                answers[name[len("_probe_"):]] = {"probe_failed": traceback.format_exc()[-3000:]}
    print(json.dumps(answers))


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def probes():
    code = f"import sys; sys.path[:0] = [{str(QUICK)!r}, {str(REPO / 'tests')!r}]; import test_family_fixes as t; t._probe_all()"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probed(probes, fix: str) -> dict:
    answer = probes[fix]
    assert "probe_failed" not in answer, answer.get("probe_failed")
    return answer


def test_every_family_fix_has_its_upstream_test():
    """A fix added to a family module without a test here (and a probe above) fails the suite."""
    import importlib

    from llmx.families import BUILTIN, FAMILIES

    listed = {fix.__name__ for fam in FAMILIES.values() for fix in fam.fixes}
    marked = set()
    for name in BUILTIN:
        module = importlib.import_module(f"llmx.families.{name}")
        marked |= {f.__name__ for f in vars(module).values() if callable(f) and hasattr(f, "phase")
                   and f.__module__ == module.__name__}
    assert marked <= listed, f"marked as fixes but in no family's `fixes`: {sorted(marked - listed)}"
    assert listed, "no family lists a fix: the collection above is broken"
    here = globals()
    missing = sorted(n for n in listed if f"test_{n}" not in here or f"_probe_{n}" not in here)
    assert not missing, f"family fixes without an upstream test in {__name__}: {missing}"


def test_mixtral_moe_routing(probes):
    """Upstream still indexes routing weights with a 1-D paddle.where(cond), so MixtralSparseMoeBlock's
    forward fails; when this fails, llmx.families.mixtral.mixtral_moe_routing can go."""
    answer = _probed(probes, "mixtral_moe_routing")
    assert answer["where_shapes"] == [[3], [3]]  # [n] each: paddle 2.x gave [n, 1]
    assert answer["upstream"].startswith("ValueError: (InvalidArgument) Broadcast dimension mismatch"), answer
    assert answer["fixed_vs_dense"] < 1e-5  # the fix: top-k routing, equal to running every expert densely


def test_gemma_tanh_gelu(probes):
    """Upstream GemmaMLP still applies exact gelu whatever the config says; when this fails,
    llmx.families.gemma.gemma_tanh_gelu can go."""
    answer = _probed(probes, "gemma_tanh_gelu")
    assert answer["exact_vs_tanh"] > 1e-3  # the probe tells the two apart
    assert answer["upstream_vs_exact"] < 1e-6 and answer["upstream_vs_tanh"] > 1e-3, answer
    assert answer["fixed_vs_tanh"] < 1e-6


def test_bloom_zeroed_linears(probes):
    """Upstream BLOOM's _init_weights still zeroes every Linear weight of a random init; when this fails,
    llmx.families.bloom.bloom_zeroed_linears can go."""
    answer = _probed(probes, "bloom_zeroed_linears")
    assert len(answer["upstream_linear_max_abs"]) == 2 * 4  # qkv, dense, h_to_4h, 4h_to_h per layer
    assert answer["upstream_linear_max_abs"] == [0.0] * 8, answer
    assert all(m > 0.0 for m in answer["fixed_linear_max_abs"])


def test_opt_missing_attributes(probes):
    """Upstream OPTForCausalLM still answers None for a name its config lacks (hasattr(model, "no_sync")
    holds); when this fails, llmx.families.opt.opt_missing_attributes can go."""
    answer = _probed(probes, "opt_missing_attributes")
    assert answer["upstream"] == {"has_no_sync": True, "no_sync": "None"}
    assert answer["fixed_has_no_sync"] is False and answer["fixed_vocab_size"] == 32


def _assert_loss_over_every_position(answer):
    assert answer["over_targets"] != pytest.approx(answer["over_positions"], rel=1e-3)  # the batch tells them apart
    assert answer["upstream"] == pytest.approx(answer["over_positions"], rel=1e-5), answer
    assert answer["fixed"] == pytest.approx(answer["over_targets"], rel=1e-5)


def test_opt_loss_over_target_tokens(probes):
    """Upstream OPTForCausalLM's loss still divides by every position, ignored labels included; when this
    fails, llmx.families.opt.opt_loss_over_target_tokens can go."""
    _assert_loss_over_every_position(_probed(probes, "opt_loss_over_target_tokens"))


def test_chatglm_loss_over_target_tokens(probes):
    """Upstream ChatGLMForCausalLM's loss still divides by every position, ignored labels included; when this
    fails, llmx.families.chatglm.chatglm_loss_over_target_tokens can go."""
    _assert_loss_over_every_position(_probed(probes, "chatglm_loss_over_target_tokens"))


def test_yuan_loss_over_target_tokens(probes):
    """Upstream YuanForCausalLM's loss (use_loss_mask off) still divides by every position, ignored labels
    included; when this fails, llmx.families.yuan.yuan_loss_over_target_tokens can go."""
    _assert_loss_over_every_position(_probed(probes, "yuan_loss_over_target_tokens"))


def test_qwen_pipeline_attention_mask(probes):
    """Upstream QWenEmbeddingPipe still calls QWenModel._prepare_decoder_attention_mask, which QWenModel
    lacks; when this fails, llmx.families.qwen.qwen_pipeline_attention_mask can go."""
    answer = _probed(probes, "qwen_pipeline_attention_mask")
    assert answer["had_prepare"] is False
    assert answer["upstream"].startswith("AttributeError:") and "_prepare_decoder_attention_mask" in answer["upstream"]
    assert answer["fixed_mask_shape"] == [1, 1, 4, 4] and answer["fixed_mask_vs_expected"] == 0.0


def test_chatglm2_pipeline_position_ids(probes):
    """Upstream ChatGLMv2 EmbeddingPipe still drops position_ids=None from what it passes on, so the next
    stage reads the rotary table as position_ids and gets no rotary; when this fails,
    llmx.families.chatglm2.chatglm2_pipeline_position_ids can go."""
    answer = _probed(probes, "chatglm2_pipeline_position_ids")
    assert answer["upstream"] == {"passed": 3, "position_ids": "paddle.float32", "rotary": None, "positions": None}
    assert answer["fixed"]["passed"] == 4 and answer["fixed"]["positions"] == [[0, 1, 2, 3]]
    assert answer["fixed"]["rotary"] is not None


def test_deepseek_rotary_tables(probes):
    """Upstream DeepseekV2RotaryEmbedding still hands the attention [1, seq, 1, dim] tables that it indexes as
    [seq, dim], so a DeepSeek forward without YaRN scaling fails; when this fails,
    llmx.families.deepseek_v3.deepseek_rotary_tables can go."""
    answer = _probed(probes, "deepseek_rotary_tables")
    assert answer["upstream_table_shape"] == [1, 5, 1, 4]
    assert answer["upstream"].startswith("ValueError: (InvalidArgument) The shape of input[0] and input[1]"), answer
    assert answer["fixed"] == "ok" and answer["fixed_table_shape"] == [5, 4] and answer["fixed_vs_formula"] < 1e-6


def test_deepseek_moe_routing(probes):
    """Upstream DeepseekV2MoE still fails in MoELayer's capacity priorities (int64 times int32); when this
    fails, llmx.families.deepseek_v3.deepseek_moe_routing can go (if upstream also trains on the weights it
    infers with: tests/runs/test_deepseek_v3_routing.py compares them with transformers)."""
    answer = _probed(probes, "deepseek_moe_routing")
    assert answer["upstream"].startswith("TypeError: (InvalidType) Type promotion"), answer
    assert answer["fixed_vs_per_token"] < 1e-5 and answer["train_vs_eval"] == 0.0
    assert answer["bias_trained"] is False


def test_deepseek_generation_inputs(probes):
    """Upstream DeepseekV3ForCausalLM still has no prepare_inputs_for_generation (generate passes the ids
    alone); when this fails, llmx.families.deepseek_v3.deepseek_generation_inputs can go."""
    answer = _probed(probes, "deepseek_generation_inputs")
    assert answer["upstream"] == ["input_ids"]
    assert answer["fixed"] == ["attention_mask", "input_ids", "position_ids", "use_cache"]


def test_deepseek_pad_embedding(probes):
    """Upstream DeepseekV2Model still embeds pad_token_id as zeros (paddle's padding_idx); when this fails,
    llmx.families.deepseek_v3.deepseek_pad_embedding can go."""
    answer = _probed(probes, "deepseek_pad_embedding")
    (upstream_read, upstream_row), (fixed_read, fixed_row) = answer["upstream"], answer["fixed"]
    assert upstream_read == 0.0 and upstream_row > 0.0
    assert fixed_read == fixed_row > 0.0


def test_deepseek_router_init(probes):
    """Upstream DeepseekV2PretrainedModel._init_weights still returns at once, leaving every router weight
    1.0; when this fails, llmx.families.deepseek_v3.deepseek_router_init can go."""
    answer = _probed(probes, "deepseek_router_init")
    assert answer["upstream_values"] == [1.0]
    assert abs(answer["fixed_std"] - answer["initializer_range"]) < 0.005


def test_deepseek_tensor_parallel_rope_key(probes):
    """Upstream DeepseekV2Attention still expands k_pe over its rank's heads with no model-parallel identity
    (so its gradient is not summed over the ranks); when this fails, llmx.families.deepseek_v3.
    deepseek_tensor_parallel_rope_key may go: drop it, and the deepseek_v3 tp2 cell of
    tests/runs/test_family_layouts.py tells."""
    answer = _probed(probes, "deepseek_tensor_parallel_rope_key")
    assert answer["upstream_identities"] == 0 and answer["upstream_rope_key_expanded"] is True
    assert answer["fixed_hooks_in_one_process"] == 0
