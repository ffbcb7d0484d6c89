"""Scratch: verify conf/model/<family>.yaml tiny sizes on CPU. Usage: python tests/_scratch_families.py FAMILY"""
import math
import sys
import traceback
from pathlib import Path

import numpy as np
import paddle
from omegaconf import OmegaConf

import paddlenlp.transformers as T
from paddlenlp.peft import LoRAConfig, LoRAModel, PrefixConfig, PrefixModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

paddle.set_device("cpu")
paddle.set_default_dtype("float32")

fam = sys.argv[1]
only = sys.argv[2:] or ["base", "gen", "lora", "prefix", "prefix_gen"]
mc = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model" / f"{fam}.yaml"))
kw = {**mc["sizes"]["tiny"], **mc["overrides"], **__import__("json").loads(__import__("os").environ.get("OVR", "{}"))}
results = {}


def build():
    paddle.seed(0)
    config = getattr(T, mc["config_class"])(**kw)
    cls = getattr(T, mc["architecture"])
    try:
        m = cls(config)
        how = "ctor"
    except Exception as e:  # noqa
        print("ctor failed:", repr(e))
        m = cls.from_config(config)
        how = "from_config"
    zero = [n for n, p in m.named_parameters() if p.ndim == 2 and float(p.abs().max()) == 0]
    if zero:
        print("  ALL-ZERO 2-D params after init:", zero[:6], "... total", len(zero))
        if "reinit" in sys.argv[0] or REINIT:
            for n, p in m.named_parameters():
                if p.ndim == 2 and float(p.abs().max()) == 0:
                    p.set_value(paddle.normal(0.0, 0.02, p.shape).astype(p.dtype))
            print("  (scratch re-initialised them with N(0, 0.02))")
    return config, m, how


REINIT = bool(int(__import__("os").environ.get("REINIT", "0")))
if __import__("os").environ.get("PATCH_MIXTRAL"):
    import paddlenlp.transformers.mixtral.modeling as MM

    _orig_getitem = None

    def _fwd(self, hidden_states):
        import paddle.nn.functional as F

        b, s, h = hidden_states.shape
        hs = hidden_states.reshape([-1, h])
        router_logits = self.gate(hs)
        w = F.softmax(router_logits.astype("float32"), axis=1)
        w, sel = paddle.topk(w, self.top_k, axis=-1)
        w /= w.sum(axis=-1, keepdim=True)
        w = w.astype(hs.dtype)
        out = paddle.zeros([b * s, h], dtype=hs.dtype)
        mask = F.one_hot(sel, num_classes=self.num_experts).transpose([2, 1, 0]).astype("bool")
        for e in range(self.num_experts):
            idx, top_x = paddle.where(mask[e])
            idx, top_x = idx.reshape([-1]), top_x.reshape([-1])
            if top_x.shape[0] == 0:
                continue
            cur = self.experts[e](paddle.gather(hs, top_x)) * w[top_x, idx].unsqueeze(-1)
            out.index_add_(top_x, 0, cur.astype(hs.dtype))
        return out.reshape([b, s, h]), router_logits

    MM.MixtralSparseMoeBlock.forward = _fwd
    print("  (scratch patched MixtralSparseMoeBlock.forward for 1-D paddle.where indices)")


def inputs(config):
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 500, size=(2, 16)).astype("int64")
    if fam == "chatglm":
        ids = rng.randint(5, 500, size=(2, 16)).astype("int64")
        ids[:, 6] = config.gmask_token_id
        ids[:, 7] = config.bos_token_id
    ids = paddle.to_tensor(ids)
    return ids


def mask_for(ids, config):
    b, s = ids.shape
    if fam == "chatglm":
        ctx = 7  # index of bos
        m = np.tril(np.ones((b, 1, s, s)))
        m[:, :, :, :ctx] = 1
        return paddle.to_tensor(m.astype("int64"))
    return paddle.ones([b, s], dtype="int64")


def loss_of(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.loss


def fwd_bwd(model, ids, config, tag, params_to_check=None, use_mask=False):
    kwargs = dict(input_ids=ids, labels=ids)
    if fam == "chatglm" or use_mask:
        kwargs["attention_mask"] = mask_for(ids, config)
    out = model(**kwargs)
    loss = loss_of(out)
    lv = float(loss)
    assert math.isfinite(lv), f"{tag}: loss {lv}"
    loss.backward()
    ps = params_to_check if params_to_check is not None else [p for p in model.parameters() if not p.stop_gradient]
    ng = sum(1 for p in ps if p.grad is not None and float(p.grad.abs().sum()) > 0)
    assert ng > 0, f"{tag}: no nonzero grads among {len(ps)} params"
    print(f"  {tag}: loss={lv:.4f} grads nonzero on {ng}/{len(ps)}")
    return lv


def chatglm_position_ids(ids):
    b, s = ids.shape
    ctx, mpos = 7, 6
    pos = np.arange(s)
    pos[ctx:] = mpos
    block = np.concatenate([np.zeros(ctx), np.arange(1, s - ctx + 1)])
    return paddle.to_tensor(np.stack([np.stack([pos, block])] * b).astype("int64"))


def gen(model, ids, config, tag):
    model.eval()
    extra = {}
    if fam == "chatglm" and __import__("os").environ.get("GLM_POS"):
        extra["position_ids"] = chatglm_position_ids(ids)
    with paddle.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask_for(ids, config),
            max_new_tokens=4,
            decode_strategy="greedy_search",
            **extra,
        )
    toks = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(out, (tuple, list)) and len(out) > 1 and out[1] is not None:
        print(f"  {tag}: scores {np.round(out[1].numpy().reshape(-1), 5).tolist()}")
    print(f"  {tag}: generated shape {toks.shape}: {toks.numpy().tolist()}")
    assert toks.shape[0] == 2 and toks.shape[1] >= 1
    model.train()
    return toks.numpy()


def step(name, fn):
    if name not in only:
        return
    try:
        fn()
        results[name] = "ok"
    except Exception as e:  # noqa
        traceback.print_exc()
        results[name] = f"FAIL {type(e).__name__}: {str(e)[:300]}"


config, model, how = build()
results["build"] = how
ids = inputs(config)
print(f"{fam}: {type(model).__name__} via {how}; params={sum(int(np.prod(p.shape)) for p in model.parameters())}")
print("  linear layers:", sorted({n.split('.')[-1] for n, l in model.named_sublayers() if 'Linear' in type(l).__name__}))

step("base", lambda: fwd_bwd(model, ids, config, "forward/backward"))
BASE_GEN = {}
step("gen", lambda: BASE_GEN.setdefault("t", gen(model, ids, config, "generate")))


def lora():
    config, m, _ = build()
    lc = LoRAConfig(target_modules=mc["lora_target_modules"], r=4, lora_alpha=8)
    lm = LoRAModel(m, lc)
    lm.mark_only_lora_as_trainable()
    trainable = [p for p in lm.parameters() if not p.stop_gradient]
    n = sum(int(np.prod(p.shape)) for p in trainable)
    assert n > 0
    wrapped = sorted({nm.split(".")[-1] for nm, l in lm.named_sublayers() if type(l).__name__.startswith("LoRA") and "Model" not in type(l).__name__})
    print(f"  lora wrapped: {wrapped}")
    print(f"  lora: trainable params {n} in {len(trainable)} tensors")
    fwd_bwd(lm, ids, config, "lora forward/backward", trainable)


step("lora", lora)


def make_prefix():
    from llmx.engine.prefix_hooks import prefix_hooks

    config, m, _ = build()
    from llmx.engine.prefix_hooks import prefix_dims

    pad, post = prefix_hooks(fam)
    pc = PrefixConfig(num_prefix_tokens=4, dtype="float32", **prefix_dims(fam, config))
    pm = PrefixModelForCausalLM(m, pc, postprocess_past_key_value=post, pad_attention_mask=pad)
    return config, pm


def prefix():
    config, pm = make_prefix()
    trainable = [p for p in pm.prefix_encoder.parameters()]
    n_model_trainable = sum(1 for p in pm.model.parameters() if not p.stop_gradient)
    print(f"  prefix: model trainable tensors {n_model_trainable}")
    fwd_bwd(pm, ids, config, "prefix forward/backward", trainable, use_mask=True)


step("prefix", prefix)


def prefix_gen():
    config, pm = make_prefix()
    for p in pm.prefix_encoder.parameters():  # make the prefix matter so a dropped prefix would show
        p.set_value(paddle.normal(0.0, 1.0, p.shape))
    t = gen(pm, ids, config, "prefix generate (prefix ~ N(0,1))")
    if "t" in BASE_GEN:
        print("  prefix changed generated tokens:", bool((t != BASE_GEN["t"]).any()))


step("prefix_gen", prefix_gen)
print("RESULT", fam, results)
