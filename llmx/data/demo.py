"""Generate the bundled demo assets: SFT data, a tokenizer corpus and a tiny tokenizer.

    python -m llmx.data.demo [--out DIR]      # default: the package's llmx/assets/

Everything is made here from fixed seeds (stdlib `random` for the data, one-thread
SentencePiece for the tokenizer), so two runs give byte-identical files and nothing
is ever downloaded. Outputs, relative to --out:

    demo/sft_train.jsonl   ~2000 {"src", "tgt"} lines (a few are 2-turn lists)
    demo/sft_eval.jsonl    64 lines; no eval src appears in train
    demo/corpus.txt        plain text the tokenizer is trained on
    tiny_tokenizer/        SentencePiece BPE (vocab 512) saved as a PaddleNLP LlamaTokenizer
    demo/pretrain.jsonl.gz ~4000 {"text"} pretraining documents (gzip, no timestamp)
    demo/pretrain.bin/.idx those documents tokenized by `llmx.data.preprocess` (uint16, eos-terminated)

Special ids: unk=0 `<unk>`, bos=1 `<s>`, eos=2 `</s>`, pad=3 `<pad>`. LlamaTokenizer
reads bos/eos ids from the SentencePiece model itself, so they are fixed in the model
rather than only in tokenizer_config.json.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import string
from pathlib import Path

SEED = 1234
N_TRAIN = 2000
N_EVAL = 64
VOCAB_SIZE = 512
SPECIAL = {"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (3, "<pad>")}

# Short common words (3-5 letters). A fixed list rather than random strings: the
# tokenizer then learns whole-word pieces, and the tiny model sees each word under
# several tasks, so held-out (task, word) pairs are learnable by composition.
WORDS = """
cat dog sun sky red blue green tree bird fish milk cake book door home road rain snow
star moon lamp desk cup hat shoe sock ball kite boat ship car bus train game song
note pen ink map king queen frog duck goat lion bear wolf deer owl bee ant egg apple
lemon grape pear plum peach melon bread rice soup salt sugar honey river lake sea hill
rock sand leaf root seed rose lily wind fire ice gold iron coin ring bell drum horn
chair table bed sofa clock phone radio box bag key lock gate wall roof floor glass
plate fork spoon knife bowl water juice tea wine beer coat shirt dress scarf glove
belt watch cloud storm light dark night day week month year time word line page story
baby girl boy man woman friend house town city farm park shop bank club team group
""".split()


# --- SFT tasks --------------------------------------------------------------------------
# Each returns (src, tgt). Answers are exact strings, so eval can score exact match.


def _add(rng: random.Random) -> tuple[str, str]:
    # Operands up to 49 keep the sum at two digits; split_digits makes each digit a token.
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"add {a} + {b} =", str(a + b)


def _reverse(rng):
    w = rng.choice(WORDS)
    return f"reverse: {w}", w[::-1]


def _copy(rng):
    w = rng.choice(WORDS)
    return f"copy: {w}", w


def _upper(rng):
    w = rng.choice(WORDS)
    return f"upper: {w}", w.upper()


def _first(rng):
    w = rng.choice(WORDS)
    return f"first letter of {w}", w[0]


TASKS = [_add, _reverse, _copy, _upper, _first]


def _two_turn(rng):
    # The second turn refers to the first answer, so history actually matters.
    w = rng.choice(WORDS)
    op, fn = rng.choice([("upper it", str.upper), ("reverse it", lambda s: s[::-1])])
    return [f"copy: {w}", op], [w, fn(w)]


def make_example(rng: random.Random, multi_turn: bool = False) -> dict:
    # About 1 in 40 examples is multi-turn: a handful, enough to exercise that path.
    if multi_turn or rng.random() < 0.025:
        src, tgt = _two_turn(rng)
    else:
        src, tgt = rng.choice(TASKS)(rng)
    return {"src": src, "tgt": tgt}


def _turns(x) -> list[str]:
    return x if isinstance(x, list) else [x]


def _keys(ex: dict) -> set[str]:
    # The whole src (a list as JSON) and its first turn: a held-out "copy: cat" must not
    # reach train as the opening turn of a conversation either, nor the other way round.
    return {json.dumps(ex["src"]), _turns(ex["src"])[0]}


def make_sft(rng: random.Random) -> tuple[list[dict], list[dict]]:
    # Eval first, with unique srcs; train then rejects any src seen in eval. Train may
    # repeat an example (sampling with replacement), like real instruction data does.
    # Eval gets a few guaranteed multi-turn lines so that path is always scored.
    eval_, seen = [], set()
    while len(eval_) < N_EVAL:
        ex = make_example(rng, multi_turn=len(eval_) < 4)
        if not _keys(ex) & seen:
            seen |= _keys(ex)
            eval_.append(ex)
    train = []
    while len(train) < N_TRAIN:
        ex = make_example(rng)
        if not _keys(ex) & seen:
            train.append(ex)
    return train, eval_


# --- tokenizer corpus -------------------------------------------------------------------


def make_corpus(rng: random.Random, train: list[dict]) -> list[str]:
    """Lines for the tokenizer: the train task texts plus filler so every printable
    ASCII character, digit and upper-case word gets a real piece (not byte fallback)."""
    lines = []
    for ex in train:
        lines += [f"{s} {t}" for s, t in zip(_turns(ex["src"]), _turns(ex["tgt"]))]
    subjects = ["the " + w for w in WORDS[:60]]
    verbs = ["sees", "likes", "has", "finds", "makes", "takes", "wants", "gives"]
    for _ in range(1500):
        n = rng.randint(0, 999)
        lines.append(
            f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {n} {rng.choice(WORDS)}s "
            f"and {rng.choice(WORDS)} {rng.choice(WORDS).upper()}."
        )
    lines += [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)]
    lines += [" ".join(w.upper() for w in WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)]
    lines += [string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation]
    return lines


# --- tokenizer --------------------------------------------------------------------------


def train_tokenizer(lines: list[str], model_path: Path) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    # Training from an iterator into a buffer keeps file paths out of the serialized
    # trainer spec, so the model bytes do not depend on --out.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,  # any UTF-8 text encodes; no <unk> in practice
        split_digits=True,  # numbers go digit by digit: learnable arithmetic
        # identity + keeping whitespace makes decode(encode(x)) == x exactly (double
        # spaces, newlines and tabs via byte pieces), unlike the nmt_nfkc default.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,  # Llama convention: "cat" alone encodes like " cat" in a sentence
        unk_id=SPECIAL["unk"][0], unk_piece=SPECIAL["unk"][1],
        bos_id=SPECIAL["bos"][0], bos_piece=SPECIAL["bos"][1],
        eos_id=SPECIAL["eos"][0], eos_piece=SPECIAL["eos"][1],
        pad_id=SPECIAL["pad"][0], pad_piece=SPECIAL["pad"][1],
        num_threads=1,  # multi-threaded training can order ties differently
        shuffle_input_sentence=False,
        input_sentence_size=0,  # use every line, no sampling
        minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(buf.getvalue())


def save_paddlenlp_tokenizer(tok_dir: Path) -> None:
    from paddlenlp.transformers import LlamaTokenizer

    # LlamaTokenizer looks for "sentencepiece.bpe.model"; the model is already there,
    # so save_pretrained only adds tokenizer_config.json / special_tokens_map.json.
    tok = LlamaTokenizer(vocab_file=str(tok_dir / "sentencepiece.bpe.model"), pad_token=SPECIAL["pad"][1])
    tok.save_pretrained(str(tok_dir))


def check_tokenizer(tok_dir: Path, examples: list[dict]) -> None:
    """Fail loudly if the saved directory is not usable the way llmx uses it."""
    from paddlenlp.transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ids = {k: getattr(tok, f"{k}_token_id") for k in SPECIAL}
    assert ids == {k: v[0] for k, v in SPECIAL.items()}, ids
    def enc(t):
        return tok(t, add_special_tokens=False)["input_ids"]

    pairs = [(s, t) for ex in examples for s, t in zip(*(_turns(ex[f]) for f in ("src", "tgt")))]
    texts = [x for pair in pairs for x in pair]
    texts += ["add 7 + 10 = 17", "  two  spaces ", "line one\nline two\ttab", "a , b . it 's", "naïve café 北京"]
    for t in texts:
        ids = enc(t)
        assert tok.unk_token_id not in ids, t
        # decode() cleans up " ." / " ," / " 's" by default; exact needs it switched off.
        back = tok.decode(ids, clean_up_tokenization_spaces=False)
        assert back == t, (t, back)
    # Pieces never cross a space and the dummy prefix gives a lone tgt its leading
    # "▁", so tokenizing src and tgt separately equals tokenizing "src tgt" at once.
    for s, t in pairs:
        assert enc(s) + enc(t) == enc(f"{s} {t}"), (s, t)
    batch = tok(["a", "abc"], padding=True)["input_ids"]
    assert len(batch[0]) == len(batch[1]) and tok.pad_token_id in batch[0], batch


# --- pretraining corpus -----------------------------------------------------------------
# Plain documents with structure a tiny model can pick up within a few hundred steps:
# the SFT task texts written out, counting runs, and sentences about a small fixed
# "world" (every word has one colour and one place, always the same), so held-out
# text is predictable and the loss has somewhere to go below the unigram level.

N_PRETRAIN_DOCS = 4000
COLOURS = ["red", "blue", "green", "gold", "white", "black", "pink", "grey"]
PLACES = ["farm", "park", "city", "lake", "hill", "sea", "town", "house", "shop", "river"]
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _world(rng: random.Random) -> dict[str, tuple[str, str]]:
    return {w: (rng.choice(COLOURS), rng.choice(PLACES)) for w in WORDS}


def _pretrain_doc(rng: random.Random, world: dict[str, tuple[str, str]], held_out: set[str]) -> str:
    kind = rng.choice(["tasks", "count", "world", "story", "letters"])
    n = rng.randint(4, 10)
    if kind == "tasks":  # "add 12 + 30 = 42", "reverse: bird drib", ...; never an SFT eval src
        lines = []
        while len(lines) < n:
            src, tgt = rng.choice(TASKS)(rng)
            if src not in held_out:
                lines.append(f"{src} {tgt}")
    elif kind == "count":
        lines = []
        for _ in range(n // 2):
            start, step = rng.randint(0, 90), rng.choice([1, 1, 2, 5, 10])
            down = rng.random() < 0.25
            run = [start + (-step if down else step) * i for i in range(rng.randint(5, 12))]
            run = [x for x in run if x >= 0]
            lines.append(f"count {'down ' if down else ''}from {start} by {step}: " + " ".join(map(str, run)))
        k = rng.randint(0, len(NUMBER_WORDS) - 5)
        lines.append("counting words: " + " ".join(NUMBER_WORDS[k : k + rng.randint(4, len(NUMBER_WORDS) - k)]))
    elif kind == "world":  # facts that never change between documents
        lines = []
        for w in rng.sample(WORDS, n):
            colour, place = world[w]
            lines.append(rng.choice([f"The {w} is {colour}.", f"The {w} lives in the {place}.",
                                     f"The {colour} {w} lives in the {place}."]))
    elif kind == "story":
        subjects = rng.sample(WORDS, 3)
        lines = []
        for _ in range(n):
            a, b = rng.sample(subjects, 2)
            k = rng.randint(2, 12)
            lines.append(rng.choice([
                f"The {a} sees {k} {b}s.",
                f"The {a} gives the {b} {NUMBER_WORDS[k]} {rng.choice(WORDS)}s.",
                f"The {a} and the {b} go to the {world[a][1]}.",
                f"The {a} has {k} {b}s and {k + 1} {rng.choice(WORDS)}s.",
            ]))
    else:  # letters: the alphabet, spelled words, upper case
        start = rng.randint(0, 20)
        lines = ["letters: " + " ".join(string.ascii_lowercase[start : start + rng.randint(5, 26 - start)])]
        for w in rng.sample(WORDS, n // 2):
            lines.append(f"{w} is spelled {' '.join(w)} and written {w.upper()}.")
    return "\n".join(lines)


def make_pretrain(rng: random.Random, eval_: list[dict]) -> list[dict]:
    """Documents {"text": ...}; no SFT eval prompt (nor a first turn of one) appears in them."""
    held_out = {_turns(ex["src"])[0] for ex in eval_}
    world = _world(rng)
    return [{"text": _pretrain_doc(rng, world, held_out)} for _ in range(N_PRETRAIN_DOCS)]


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """gzip without a file name or timestamp in its header: the bytes depend only on rows."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets")
    args = p.parse_args(argv)
    out: Path = args.out

    rng = random.Random(SEED)
    train, eval_ = make_sft(rng)
    write_jsonl(out / "demo" / "sft_train.jsonl", train)
    write_jsonl(out / "demo" / "sft_eval.jsonl", eval_)

    corpus = make_corpus(rng, train)
    (out / "demo" / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")

    tok_dir = out / "tiny_tokenizer"
    train_tokenizer(corpus, tok_dir / "sentencepiece.bpe.model")
    save_paddlenlp_tokenizer(tok_dir)
    check_tokenizer(tok_dir, train[:200] + eval_)

    # Its own seed, after everything else: adding it left the files above unchanged.
    pretrain = make_pretrain(random.Random(SEED + 1), eval_)
    write_jsonl_gz(out / "demo" / "pretrain.jsonl.gz", pretrain)
    from llmx.data.preprocess import preprocess

    stats = preprocess([out / "demo" / "pretrain.jsonl.gz"], out / "demo" / "pretrain", tok_dir)
    print(f"wrote {len(train)} train / {len(eval_)} eval examples, a tokenizer and "
          f"{stats.documents} pretraining documents ({stats.tokens} tokens) under {out}")


if __name__ == "__main__":
    main()
