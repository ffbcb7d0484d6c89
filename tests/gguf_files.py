"""Small GGUF files written with the `gguf` package's own GGUFWriter, laid out as llama.cpp's converter lays
out a Hugging Face Llama: its tensor names, q/k rows reordered for llama.cpp's rotary, metadata keys, and a
byte-level BPE vocabulary (trained here on a few sentences) with ChatML's control tokens."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The capital of France is Paris.", "Grüße aus München, 2024!", "  leading spaces and tabs\tand 12345",
          "hello world, hello tokens; <|im_start|> is special"] * 20


def byte_level_vocab(size: int = 300):
    """(tokens in id order, merges as 'a b' strings): SPECIAL first, then a byte-level BPE trained on CORPUS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


def _llama_cpp_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of q/k rows: within each head, row j of the first half next to row j of the second."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, state: Dict[str, np.ndarray], config, quant: str = "F32", pad_id: int = 2) -> Path:
    """A llama GGUF of a transformers LlamaForCausalLM's state dict (numpy, float32); `quant`: F32 or Q8_0 for the
    2-D weights (norms stay F32, as llama.cpp keeps them)."""
    import gguf

    tokens, merges = byte_level_vocab(config.vocab_size)
    assert len(tokens) == config.vocab_size, (len(tokens), config.vocab_size)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(pad_id)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, array in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            gname = f"blk.{i}.{parts[module]}.weight"
            if module == "self_attn.q_proj":
                array = _llama_cpp_rows(array, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                array = _llama_cpp_rows(array, config.num_key_value_heads)
        else:
            gname = names[name]
        array = np.ascontiguousarray(array, dtype=np.float32)
        if quant == "Q8_0" and array.ndim == 2:
            q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_other_gguf(path: Path, arch: str = "qwen2") -> Path:
    """A GGUF of another architecture: metadata and one tensor, enough for a reader to tell what it is."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
