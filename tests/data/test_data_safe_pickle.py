"""The restricted unpickler: numpy arrays and containers load, anything that could run code is refused."""

from __future__ import annotations

import collections
import functools
import os
import pickle
import subprocess

import numpy as np
import pytest

from decalign.data import DataError, load_dataset
from decalign.data.safe_pickle import safe_loads


class _Payload:
    """Unpickling this with pickle.load would run os.system('touch <marker>')."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, mmsa_payload, dump):
    marker = tmp_path / "pwned"
    mmsa_payload["train"]["id"] = _Payload(marker)
    path = dump(mmsa_payload, "mosi_aligned_50.pkl")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # posix.system
    assert "not allowed" in message


@pytest.mark.parametrize(
    "func, args, refused",
    [
        (eval, ("1+1",), "builtins.eval"),
        (getattr, (1, "real"), "builtins.getattr"),
        (subprocess.call, (["true"],), "subprocess.call"),
        (functools.partial, (print, 1), "functools.partial"),
        (__import__, ("os",), "builtins.__import__"),
    ],
)
def test_code_running_globals_are_refused(func, args, refused):
    data = pickle.dumps({"train": _Reduce(func, args)})
    with pytest.raises(DataError, match=f"upload.pkl: .*{refused}"):
        safe_loads(data, "upload.pkl")


def test_numpy_functions_outside_the_allow_list_are_refused():
    data = pickle.dumps(_Reduce(np.load, ("x.npy",)))
    with pytest.raises(DataError, match="numpy.*load"):
        safe_loads(data, "x.pkl")


def test_codecs_encode_is_limited_to_latin1():
    import _codecs

    with pytest.raises(DataError, match="latin-1"):
        safe_loads(pickle.dumps(_Reduce(_codecs.encode, ("abc", "rot13"))), "x.pkl")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_payloads_round_trip_under_every_protocol(protocol):
    obj = {
        "f32": np.arange(12, dtype=np.float32).reshape(2, 3, 2),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f4"),
        "strided": np.arange(16.0).reshape(4, 4)[::2],
        "ids": np.array(["a$_$1", "b$_$2"], dtype=object),
        "unicode": np.array(["x", "yz"]),
        "scalar": np.float32(2.5),
        "lengths": [3, 4],
        "ordered": collections.OrderedDict(a=1),
        "tuple_set": (frozenset({1}), {2}, b"raw", bytearray(b"ba"), 1 + 2j),
    }
    data = pickle.dumps(obj, protocol=protocol)
    back = safe_loads(data, "x.pkl")
    reference = pickle.loads(data)  # our own trusted bytes: what numpy itself rebuilds
    for key in ("f32", "fortran", "big_endian", "strided", "unicode"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == reference[key].dtype
    assert back["ids"].tolist() == ["a$_$1", "b$_$2"]
    assert back["scalar"] == np.float32(2.5) and back["scalar"].dtype == np.float32
    assert back["lengths"] == [3, 4] and back["ordered"] == {"a": 1}
    assert back["tuple_set"] == obj["tuple_set"]


def test_truncated_pickle_is_reported():
    data = pickle.dumps({"train": np.zeros((50, 4))})
    with pytest.raises(DataError, match="x.pkl: .*(truncated|ends early)"):
        safe_loads(data[: len(data) // 2], "x.pkl")


def test_pickle_from_numpy_1_module_names_loads():
    # numpy 1.x pickles name numpy.core.multiarray; rewrite a numpy 2 pickle's module names to that.
    data = pickle.dumps(np.arange(4.0), protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    assert b"numpy.core.multiarray" in data
    np.testing.assert_array_equal(safe_loads(data, "old.pkl"), np.arange(4.0))


def test_unpickler_never_calls_pickle_load(monkeypatch, mmsa_payload, dump):
    path = dump(mmsa_payload)

    def forbidden(*args, **kwargs):
        raise AssertionError("plain pickle.load must not be used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert len(load_dataset(path, sandbox=False).splits["train"]) == 10  # the parser, in this process
    assert len(load_dataset(path).splits["train"]) == 10  # the parent of the sandbox unpickles nothing
