"""llmx.safe_pickle builds data and refuses everything else before any of it runs (no paddle needed)."""
from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess

import numpy as np
import pytest

from llmx import safe_pickle


class _Touch:
    """A pickle that creates a file when loaded, as a hostile checkpoint would."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.path],))


def _write(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def test_refuses_code_in_one_line_naming_the_file_and_the_global(tmp_path):
    marker = tmp_path / "created"
    path = _write(tmp_path / "model_state.pdparams", {"w": np.ones(2), "x": _Touch(marker)})
    with open(path, "rb") as f, pytest.raises(safe_pickle.PickledCodeError) as err:
        safe_pickle.load(f)
    assert str(err.value) == (f"{path}: refusing to unpickle subprocess.call (pickled code, not data); load only files "
                              "you trust, and then with model.trust_pickle=true")
    assert not marker.exists()


@pytest.mark.parametrize("hostile", [(os.system, ("true",)), (eval, ("1+1",)), (__import__, ("os",))])
def test_refuses_the_usual_gadgets(hostile):
    class Gadget:
        def __reduce__(self):
            return hostile

    with pytest.raises(safe_pickle.PickledCodeError, match="refusing to unpickle"):
        safe_pickle.loads(pickle.dumps(Gadget()), source="x.pdopt")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_builds_what_paddle_save_writes(protocol):
    arrays = {"embed": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(3),
              "mask": np.array([True, False]), "half": np.zeros(2, np.float16)}
    state = collections.OrderedDict(
        weights=arrays, tensor=("linear_0.w_0", np.ones((2, 2))), lr={"last_epoch": 4, "last_lr": 1e-3},
        rng=(3, (1, 2, 3), None), names=["a", "b"], raw=b"\x00\xff", ids={1, 2}, ratio=1.5 + 2j)
    back = safe_pickle.loads(pickle.dumps(state, protocol=protocol), encoding="latin1")
    assert type(back) is collections.OrderedDict and list(back) == list(state)
    for key, array in arrays.items():
        assert back["weights"][key].dtype == array.dtype and np.array_equal(back["weights"][key], array)
    assert back["tensor"][0] == "linear_0.w_0" and np.array_equal(back["tensor"][1], np.ones((2, 2)))
    assert back["lr"] == state["lr"] and back["rng"] == state["rng"] and back["raw"] == b"\x00\xff"
    assert back["ids"] == {1, 2} and back["ratio"] == 1.5 + 2j


def test_paddle_dense_tensor_form_is_the_only_eval_allowed():
    # paddle.save writes a DenseTensor as eval('data', {'data': array}); any other eval is code.
    class Dense:
        def __reduce__(self):
            return (eval, ("data", {"data": np.ones(3)}))

    assert np.array_equal(safe_pickle.loads(pickle.dumps(Dense())), np.ones(3))

    class Other:
        def __reduce__(self):
            return (eval, ("__import__('os')", {"data": 1}))

    with pytest.raises(safe_pickle.PickledCodeError, match="not paddle.save's tensor form"):
        safe_pickle.loads(pickle.dumps(Other()))


def test_trusting_loads_anything_and_ends_with_its_block(tmp_path):
    marker = tmp_path / "created"
    payload = pickle.dumps(_Touch(marker))
    with safe_pickle.trusting():
        safe_pickle.load(io.BytesIO(payload))
    assert marker.exists()
    with pytest.raises(safe_pickle.PickledCodeError):
        safe_pickle.loads(payload)
