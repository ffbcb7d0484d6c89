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
