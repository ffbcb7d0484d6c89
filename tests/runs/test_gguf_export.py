"""GGUF export (`stage=convert stage.direction=to_gguf`), checked against the readers users load it with: the
`gguf` package's GGUFReader (every metadata key and every tensor, against the source) and transformers'
GGUF loader (`from_pretrained(dir, gguf_file=...)`: logits against llmx's model), for every exported family
on a tiny random model (hidden 256, so that the k-quants' 256-blocks are used), each file type once; the
real SmolLM2 GGUF through llmx and back; a LoRA run merged; and the Ollama Modelfile's template rendered by a
small Go-template renderer written here against transformers' apply_chat_template."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import run_in_process

torch = pytest.importorskip("torch", reason="torch (CPU build) is a test dependency: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")
pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate: pip install -e '.[test]'")
gguf = pytest.importorskip("gguf")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
         "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
         "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else "
         "message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] "
         "| trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

_C = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# transformers' GGUF loader fills what the file does not say from the config class's defaults: Qwen3's head_dim
# (128) is one, so the tiny Qwen3 has it.
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_C),
    "mistral": lambda: transformers.MistralConfig(**_C),
    "qwen2": lambda: transformers.Qwen2Config(**_C, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**_C, head_dim=128),
}
TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")
EXTRA = [("llama", "f32"), ("llama", "bf16")]
MATRIX = [(f, t) for f in CONFIGS for t in TYPES] + EXTRA
IDS = np.random.RandomState(1).randint(3, 512, size=(2, 12))
# How far a dequantized weight may be from the source: the step of its block (the format's resolution) as the
# block's values set it: Q8_0 absmax/127, Q4_0 absmax/8 (ggml maps -absmax to -8, so +absmax clips to 7 steps),
# Q5_0 absmax/16, Q4_K range/15 of each 32, Q6_K absmax/31 of each 16 (plus their 6-/8-bit scales' rounding).
STEP = {"Q8_0": (32, lambda b: np.abs(b).max(-1) / 127), "Q4_0": (32, lambda b: np.abs(b).max(-1) / 8),
        "Q5_0": (32, lambda b: np.abs(b).max(-1) / 16),
        "Q4_K": (32, lambda b: (b.max(-1) - np.minimum(b.min(-1), 0)) / 15),
        "Q6_K": (16, lambda b: np.abs(b).max(-1) / 31)}


@pytest.fixture(scope="module")
def sources(tiny_model_dir, tmp_path_factory):
    """family -> (HF dir, llmx model dir, the HF tensors): random transformers models with the bundled
    SentencePiece tokenizer and a ChatML template, converted into llmx model directories."""
    from llmx.convert.hf import hf_to_llmx
    from llmx.convert.tokenizer import tokenizer_to_hf

    root = tmp_path_factory.mktemp("gguf_src")
    torch.manual_seed(0)
    out = {}
    for name, make in CONFIGS.items():
        model = transformers.AutoModelForCausalLM.from_config(make()).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        hf_dir = root / f"{name}-hf"
        model.save_pretrained(hf_dir)
        tokenizer_to_hf(tiny_model_dir, hf_dir)
        config = json.loads((hf_dir / "tokenizer_config.json").read_text())
        (hf_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
        hf_to_llmx(hf_dir, root / name)
        out[name] = (hf_dir, root / name, {k: v.float().numpy() for k, v in model.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory):
    """(family, type) -> (the .gguf, the run's summary): each exported once by the stage, in this process."""
    root = tmp_path_factory.mktemp("gguf_out")
    out = {}
    for fam, kind in MATRIX:
        run = root / f"{fam}-{kind}"
        summary = run_in_process(run, "stage=convert", "stage.direction=to_gguf", f"model={fam}",
                                 f"model.name_or_path={sources[fam][1]}", f"stage.gguf_type={kind}")
        out[fam, kind] = (Path(summary["gguf_file"]), summary)
    return out


def _hf_gguf(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model, model(torch.tensor(IDS)).logits.numpy()


def _llmx_logits(fam: str, model_dir: Path, state=None) -> np.ndarray:
    """llmx's model of `model_dir` (float32), its weights replaced by `state` (HF names) where given."""
    from test_convert import _logits, _paddle_model

    from llmx.convert.hf import moves
    from llmx.families import FAMILIES

    model, paddle = _paddle_model(fam, model_dir)
    if state is not None:
        params = model.state_dict()
        for mv in moves(FAMILIES[fam], model.config):
            if mv.paddle in params and mv.hf in state:
                array = np.ascontiguousarray(state[mv.hf].T if mv.transpose else state[mv.hf], dtype=np.float32)
                params[mv.paddle].set_value(paddle.to_tensor(array))
    with paddle.no_grad():
        return _logits(model(paddle.to_tensor(IDS))).numpy()


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _hf_names(arch: str, layers: int, names) -> dict:
    table = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), layers)
    return {table.get_name(n, try_suffixes=(".weight", ".bias")): n for n in names}


@pytest.mark.parametrize("fam,kind", MATRIX)
def test_gguf_metadata_and_tensors_read_back_by_gguf_equal_the_source(fam, kind, sources, exports):
    import sentencepiece

    from llmx.convert.gguf import _unpermute_rows
    from llmx.convert.gguf_quants import tensor_type

    hf_dir, _, state = sources[fam]
    path, summary = exports[fam, kind]
    config = json.loads((hf_dir / "config.json").read_text())
    arch = "llama" if fam in ("llama", "mistral") else fam
    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    n = sp.get_piece_size()
    expected = {
        "general.architecture": arch, "general.name": "mistral (llama)" if fam == "mistral" else fam,
        "general.file_type": int(gguf.LlamaFileType[{"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16",
                                                     "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
                                                     "q4_k_m": "MOSTLY_Q4_K_M"}[kind]]),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        f"{arch}.context_length": 128, f"{arch}.embedding_length": 256, f"{arch}.block_count": 2,
        f"{arch}.feed_forward_length": 512, f"{arch}.attention.head_count": 4, f"{arch}.attention.head_count_kv": 2,
        f"{arch}.rope.freq_base": config["rope_theta"], f"{arch}.attention.layer_norm_rms_epsilon": config["rms_norm_eps"],
        f"{arch}.vocab_size": 512,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
                                      for i in range(n)],
        "tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.bos_token_id": sp.piece_to_id("<s>"),
        "tokenizer.ggml.eos_token_id": sp.piece_to_id("</s>"), "tokenizer.ggml.unknown_token_id": sp.piece_to_id("<unk>"),
        "tokenizer.ggml.padding_token_id": sp.piece_to_id("<pad>"), "tokenizer.chat_template": CHATML,
    }
    if arch == "llama":
        expected["llama.rope.dimension_count"] = 64
    if fam == "qwen3":
        expected.update({"qwen3.attention.key_length": 128, "qwen3.attention.value_length": 128})
    reader, meta = _fields(path)
    assert sorted(meta) == sorted(expected)
    for key, value in expected.items():
        got = meta[key]
        if isinstance(value, float) or (isinstance(value, list) and isinstance(value[0], float)):
            assert np.allclose(got, value, rtol=1e-6), key
        else:
            assert got == value, key
    # every tensor: its type as llama-quantize would choose, its values the source's within the type's resolution
    names = _hf_names(arch, 2, state)
    want = {k for k in state if not (k == "lm_head.weight" and config.get("tie_word_embeddings"))}
    assert sorted(names[t.name] for t in reader.tensors) == sorted(want)
    for t in reader.tensors:
        source = state[names[t.name]]
        assert t.tensor_type.name == tensor_type(t.name, source.shape, kind, 2), t.name
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(source.shape)
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            got = _unpermute_rows(got, 4 if "attn_q" in t.name else 2)
        kind_name = t.tensor_type.name
        if kind_name == "F32":
            assert np.array_equal(got, source), t.name
        elif kind_name in ("F16", "BF16"):
            dtype = torch.float16 if kind_name == "F16" else torch.bfloat16
            rounded = torch.tensor(source).to(dtype).float().numpy()
            assert np.array_equal(got, rounded), t.name
        else:
            size, step = STEP[kind_name]
            blocks, err = source.reshape(-1, size), np.abs(got - source).reshape(-1, size).max(-1)
            assert (err <= step(blocks) * 1.01 + 1e-7).all(), (t.name, kind_name, float((err / step(blocks)).max()))
    assert summary["gguf_tensor_types"] == {k: sum(t.tensor_type.name == k for t in reader.tensors)
                                            for k in {t.tensor_type.name for t in reader.tensors}}


@pytest.mark.parametrize("fam,kind", MATRIX)
def test_transformers_reads_the_gguf_as_llmx_model(fam, kind, sources, exports):
    """transformers' GGUF loader's logits against llmx's: to 1e-4 against llmx's model with the file's weights
    (f32: the source's; f16/bf16: the source's rounded as the file stores its matrices; quantized: the file's
    dequantized weights); the distance to the unrounded float32 model is measured and bounded per type."""
    hf_dir, llmx_dir, state = sources[fam]
    path, _ = exports[fam, kind]
    model, theirs = _hf_gguf(path)
    if kind == "f32":
        weights = None
    elif kind in ("f16", "bf16"):
        dtype = torch.float16 if kind == "f16" else torch.bfloat16
        weights = {k: torch.tensor(v).to(dtype).float().numpy() if v.ndim == 2 else v for k, v in state.items()}
    else:
        weights = {k: v.float().numpy() for k, v in model.state_dict().items()}
    ours = _llmx_logits(fam, llmx_dir, weights)
    exact = _llmx_logits(fam, llmx_dir) if weights is not None else ours
    diff, to_f32 = float(np.abs(theirs - ours).max()), float(np.abs(theirs - exact).max())
    relative = float(np.sqrt(((theirs - exact) ** 2).mean()) / exact.std())
    print(f"\n{fam} {kind}: max |logits - llmx with the file's weights| {diff:.1e}; vs llmx float32: max {to_f32:.2e}, "
          f"RMS {relative:.2%} of the logits' std; {path.stat().st_size / 1e6:.2f} MB")
    assert diff < 1e-4, (fam, kind, diff)
    # what the type's rounding does to this random model's logits, as an RMS over their spread (measured: f16
    # 0.1%, bf16 0.6%, q8_0 2%, q4_k_m 24-28%, q4_0 29-32%: random weights have no structure to keep): a
    # bound that catches a wrong scale or block layout
    bound = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.5e-2, "q8_0": 0.04, "q4_0": 0.45, "q4_k_m": 0.4}[kind]
    assert relative < bound, (fam, kind, relative)


def test_gguf_tokenizer_encodes_like_the_source(sources, exports):
    """transformers' GGUF tokenizer, rebuilt from the SentencePiece vocabulary the file holds, gives the ids of
    the source tokenizer (transformers' own LlamaTokenizer over tokenizer.model)."""
    hf_dir = sources["llama"][0]
    path, _ = exports["llama", "f16"]
    ours = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir, use_fast=False)
    for text in ("Hello world! The capital of France is Paris.", "  two spaces, tabs\tand 12345",
                 "Grüße aus München", "a b  c"):
        assert ours(text).input_ids == ref(text).input_ids, text


def test_lora_run_is_merged_into_its_base_before_export(tmp_path):
    """A LoRA run exports its adapter merged: transformers' logits of the file equal llmx's model of the run."""
    from helpers import compose

    from llmx.engine.model import build_model, build_tokenizer

    lora = tmp_path / "lora"
    run_in_process(lora, "stage=lora", "stage.train.max_steps=2", "stage.train.lr=5e-2", "stage.eval.enabled=false")
    summary = run_in_process(tmp_path / "export", "stage=convert", "stage.direction=to_gguf",
                             f"model.name_or_path={lora}", "stage.gguf_type=f32")
    _, theirs = _hf_gguf(Path(summary["gguf_file"]))
    import paddle

    from llmx.sources import resolve

    cfg = compose(f"model.name_or_path={lora}")
    model = build_model(cfg.model, build_tokenizer(cfg.model), cfg.seed).eval()
    base_cfg = compose(f"model.name_or_path={resolve(str(lora)).local_dir}")  # the base the adapter was trained on
    base = build_model(base_cfg.model, build_tokenizer(base_cfg.model), cfg.seed).eval()
    with paddle.no_grad():
        ours = model(paddle.to_tensor(IDS % 512))[0].numpy()
        before = base(paddle.to_tensor(IDS % 512))[0].numpy()
    assert np.abs(theirs - ours).max() < 1e-4
    assert np.abs(ours - before).max() > 1e-3  # (the adapter changed the model)


# ----------------------------------------------------------------------------- the real checkpoint
@pytest.fixture(scope="module")
def real_export(real_model_dir, tmp_path_factory):
    """SmolLM2's GGUF -> llmx (the session's conversion of it) -> GGUF f16."""
    summary = run_in_process(tmp_path_factory.mktemp("real_gguf") / "run", "stage=convert", "stage.direction=to_gguf",
                             f"model.name_or_path={real_model_dir}", "stage.gguf_type=f16")
    return Path(summary["gguf_file"]), summary


def test_real_gguf_round_trip_keeps_metadata_tensors_tokenizer_and_logits(real_gguf, real_export, real_reference):
    """The file holds the source's vocabulary, merges, token types, special ids, template and hyperparameters,
    and its tensors (matrices rounded to f16); transformers reads it as the source model with those matrices
    rounded (logits to 1e-4) and rebuilds the same tokenizer."""
    import copy

    path, _ = real_export
    src_reader, src = _fields(real_gguf)
    reader, meta = _fields(path)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template", "llama.context_length", "llama.embedding_length", "llama.block_count",
                "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
                "general.architecture"):
        assert meta.get(key) == src.get(key), key
    source = {t.name: t for t in src_reader.tensors}
    assert sorted(source) == sorted(t.name for t in reader.tensors)
    for t in reader.tensors:
        s = source[t.name]
        want = gguf.quants.dequantize(s.data, s.tensor_type).reshape(-1)
        assert t.tensor_type.name == ("F16" if len(t.shape) == 2 else "F32"), t.name
        assert np.array_equal(t.data.reshape(-1), want.astype(t.data.dtype)), t.name
    ref_model, ref_tok = real_reference
    rounded = copy.deepcopy(ref_model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "<|im_start|>user\nWhat is the capital of France? Grüße, 12345.<|im_end|>\n"
    assert tok(text).input_ids == ref_tok(text).input_ids
    ids = torch.tensor([ref_tok(text).input_ids])
    with torch.no_grad():
        diff = (model(ids).logits - rounded(ids).logits).abs().max().item()
    assert diff < 1e-4, diff


# ----------------------------------------------------------------------------- the Ollama Modelfile
def go_render(template: str, messages: list) -> str:
    """Go text/template, exactly the subset llmx writes: `range $i, $m := .Messages`, a `$last` set by
    `eq (len (slice $.Messages $i)) 1`, if / else if / else / end on `eq $m.Role "x"`, `$last` and `not $last`,
    and `$m.Content`; text between actions verbatim (no trim markers)."""
    tokens = re.split(r"({{.*?}})", template, flags=re.S)

    def parse(i):
        nodes = []
        while i < len(tokens):
            t = tokens[i]
            i += 1
            if not t.startswith("{{"):
                nodes.append(("text", t))
                continue
            action = t[2:-2].strip()
            if action == "end" or action.startswith("else"):
                return nodes, i, action
            if action == "range $i, $m := .Messages":
                body, i, end = parse(i)
                assert end == "end"
                nodes.append(("range", body))
            elif action.startswith("if "):
                branches, cond = [], action[3:]
                while True:
                    body, i, end = parse(i)
                    branches.append((cond, body))
                    if end == "end":
                        break
                    cond = end[len("else if "):] if end.startswith("else if ") else "true"
                nodes.append(("if", branches))
            elif action == "$last := eq (len (slice $.Messages $i)) 1":
                nodes.append(("last",))
            elif action == "$m.Content":
                nodes.append(("content",))
            else:
                raise AssertionError(f"not in the subset: {action}")
        return nodes, i, None

    def holds(cond, env):
        role = re.fullmatch(r'eq \$m\.Role "(\w+)"', cond)
        if role:
            return env["m"]["role"] == role.group(1)
        return {"true": True, "$last": env.get("last"), "not $last": not env.get("last")}[cond]

    def run(nodes, env):
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "content":
                out.append(env["m"]["content"])
            elif node[0] == "last":
                env["last"] = len(messages[env["i"]:]) == 1
            elif node[0] == "range":
                out += [run(node[1], {"i": i, "m": m}) for i, m in enumerate(messages)]
            else:
                out.append(next((run(body, env) for cond, body in node[1] if holds(cond, env)), ""))
        return "".join(out)

    nodes, _, end = parse(0)
    assert end is None
    return run(nodes, {})


def _modelfile_parts(text: str) -> dict:
    template = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S)
    system = re.search(r'SYSTEM """(.*?)"""', text, flags=re.S)
    return {"template": template and template.group(1), "system": system and system.group(1),
            "stops": [json.loads(s) for s in re.findall(r"^PARAMETER stop (.+)$", text, flags=re.M)]}


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Name a colour.\nJust one."}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Thanks"}],
]


def _ollama_render(parts: dict, messages: list) -> str:
    if parts["system"] is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": parts["system"]}] + messages  # what Ollama does with SYSTEM
    return go_render(parts["template"], messages)


def _check_modelfile(text: str, tok, template=None, add_bos=False):
    parts = _modelfile_parts(text)
    assert parts["template"] is not None, text
    for messages in CONVERSATIONS:
        want = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        got = _ollama_render(parts, messages)
        assert (tok.bos_token + got if add_bos else got) == want, (messages, got, want)
    return parts


def test_modelfile_of_the_real_model_renders_like_its_chat_template(real_export, real_reference):
    """(The exported file's template is the source's: the round trip test above.)"""
    path, summary = real_export
    text = Path(summary["modelfile"]).read_text()
    assert text.startswith(f"FROM ./{path.name}\n")
    parts = _check_modelfile(text, real_reference[1])
    assert parts["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert parts["stops"] == ["<|im_end|>"]


@pytest.mark.parametrize("template,stops", [(CHATML, ["<|im_end|>", "</s>"]), (LLAMA3, ["<|eot_id|>", "</s>"])])
def test_modelfile_of_other_templates_renders_like_them(template, stops, real_reference):
    """ChatML without a default system prompt, and Llama 3's (a BOS the template writes and llama.cpp adds)."""
    from llmx.data.ollama import modelfile_text

    tok = real_reference[1]
    special = {"bos_token": tok.bos_token, "eos_token": "</s>"}
    made = modelfile_text("x.gguf", template, special, add_bos=True)
    parts = _check_modelfile(made["text"], tok, template, add_bos=template == LLAMA3)
    assert parts["system"] is None and parts["stops"] == stops


def test_modelfile_without_template_where_the_template_does_not_decompose():
    from llmx.data.ollama import modelfile_text

    made = modelfile_text("x.gguf", GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>"}, add_bos=True)
    assert not made["template"] and "TEMPLATE" not in made["text"]
    assert made["why"] == "the system prompt is not a turn of its own"
    assert made["text"] == 'FROM ./x.gguf\n\nPARAMETER stop "<eos>"\n'
