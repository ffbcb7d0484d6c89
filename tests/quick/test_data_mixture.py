"""llmx.data.mixture: counts follow the weights, draws are reproducible per seed, the weights rule."""
from __future__ import annotations

from collections import Counter

import pytest

from llmx.data.mixture import check_weights, counts, mix
from llmx.errors import ConfigError, DataError

A = [("a", i) for i in range(10)]
B = [("b", i) for i in range(30)]


def test_no_weights_concatenates_in_order():
    assert mix([A, B], None, seed=3) == A + B


def test_counts_follow_the_weights():
    mixed = mix([A, B], [0.7, 0.3], seed=0)
    assert Counter(name for name, _ in mixed) == {"a": 28, "b": 12}
    # upsampled: every example of A at least twice, none more than three times (fresh shuffles, cycled)
    assert set(Counter(x for x in mixed if x[0] == "a").values()) <= {2, 3} and len(set(mixed) & set(A)) == 10
    # subsampled: 12 different examples of B
    assert len({x for x in mixed if x[0] == "b"}) == 12


def test_largest_remainder_rounding_adds_up():
    assert counts([10, 30], [0.7, 0.3]) == [28, 12]
    assert counts([1, 1, 1], [1, 1, 1]) == [1, 1, 1]
    assert counts([5, 5], [1, 0]) == [10, 0]
    assert counts([3, 4], [1, 1]) == [4, 3]  # 3.5 each: the tie goes to the first set
    assert sum(counts([7, 11, 13], [0.2, 0.3, 0.5])) == 31


def test_same_seed_same_mixture_other_seed_other_mixture():
    first = mix([A, B], [0.7, 0.3], seed=1)
    assert mix([A, B], [0.7, 0.3], seed=1) == first
    assert mix([A, B], [0.7, 0.3], seed=2) != first
    assert Counter(n for n, _ in mix([A, B], [0.7, 0.3], seed=2)) == Counter(n for n, _ in first)
    # interleaved, not one set after the other
    assert [n for n, _ in first] != sorted(n for n, _ in first)


def test_an_empty_set_with_a_weight_is_refused():
    with pytest.raises(DataError, match=r"^data set 1 is empty but its weight \(1\) asks for 5 examples$"):
        mix([A, []], [1, 1], seed=0)


def test_weights_rule():
    check_weights(None, 3)
    check_weights([0, 2.5], 2)
    with pytest.raises(ConfigError, match=r"^stage.data.weights=\[1, 2\]: needs one weight per path \(3\)$"):
        check_weights([1, 2], 3)
    with pytest.raises(ConfigError, match=r"^stage.data.weights=\[1, -1\]: must be non-negative with a positive sum$"):
        check_weights([1, -1], 2)
    with pytest.raises(ConfigError, match=r"^stage.data.weights=\[0, 0\]: must be non-negative"):
        check_weights([0, 0], 2)


def test_a_stage_mixes_its_train_files_by_weight(tmp_path):
    """stage.data.train=[a, b] stage.data.weights=[...] through the sft stage's own reading (paddle-free prepare):
    each file in its own format, the counts following the weights, the same seed the same mixture."""
    import json

    from helpers import compose

    from llmx.stages import sft

    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    a.write_text("".join(json.dumps({"src": f"a{i}", "tgt": "x"}) + "\n" for i in range(10)))
    b.write_text(json.dumps([{"messages": [{"role": "user", "content": f"b{i}"}, {"role": "assistant", "content": "y"}]}
                             for i in range(30)]))
    cfg = compose("stage=sft", f"stage.data.train=[{a},{b}]", "stage.data.weights=[0.7,0.3]")
    sft.validate(cfg)
    train = sft.prepare(cfg)["train"]
    sources = [d.messages[0]["content"][0] for d in train]
    assert (len(train), sources.count("a"), sources.count("b")) == (40, 28, 12)
    assert sft.prepare(cfg)["train"] == train and sources[:12] != ["a"] * 12  # reproducible, interleaved
