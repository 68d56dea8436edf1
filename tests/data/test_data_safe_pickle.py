"""The restricted unpickler: numpy arrays and containers load, anything that could run code is refused."""

from __future__ import annotations

import collections
import functools
import mmap
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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_large_payloads_of_a_mapped_file_are_read_only_views_of_it(tmp_path, monkeypatch, protocol):
    """``view`` (the sandbox's child): a bytes payload of at least VIEW_MIN_BYTES outside the pickle's frames is
    a view of the mapped file, so an array built on it is too; smaller ones, Python 2's text payloads
    (protocol 2) and bytearrays (protocol 5's arrays) are copies as before. Everything loads equal."""
    from decalign.data import safe_pickle
    from decalign.sandbox import mapped_view

    monkeypatch.setattr(safe_pickle, "VIEW_MIN_BYTES", 1000)
    big = np.arange(20_000, dtype=np.float32).reshape(200, 100)  # over protocol 4's 64 KiB frames
    obj = {"big": big, "small": np.arange(10, dtype=np.float32), "raw": b"x" * 70_000, "again": big,
           "mutable": bytearray(b"y" * 70_000)}
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with open(path, "rb") as handle:
        back = safe_pickle.safe_load(handle, "x.pkl", view=mapped_view(handle))
    np.testing.assert_array_equal(back["big"], big)
    np.testing.assert_array_equal(back["small"], obj["small"])
    assert back["raw"] == b"x" * 70_000 and back["again"] is back["big"]
    assert type(back["mutable"]) is bytearray and back["mutable"] == obj["mutable"]
    assert isinstance(back["raw"], memoryview) == (protocol >= 3)  # bytes are BINBYTES from protocol 3 on
    assert _mapped_file(back["big"]) == (protocol in (3, 4)) and not _mapped_file(back["small"])  # 5: BYTEARRAY8


def _mapped_file(array: np.ndarray) -> bool:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return isinstance(array.base, memoryview) and isinstance(array.base.obj, mmap.mmap)


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


# ------------------------------------------------------------------- numpy rebuilt by our own code


def test_object_arrays_become_str_or_numeric_arrays_never_objects():
    data = pickle.dumps({
        "ids": np.array(["a$_$1", "bé"], dtype=object),
        "labels": np.array([1, 2.5], dtype=object),
        "mixed": np.array([["a", 1], [None, 2.0]], dtype=object),
    }, protocol=2)
    back = safe_loads(data, "x.pkl")
    assert back["ids"].dtype == np.dtype("<U5") and back["ids"].tolist() == ["a$_$1", "bé"]
    assert back["labels"].dtype == np.float64 and back["labels"].tolist() == [1.0, 2.5]
    assert back["mixed"] == [["a", 1], [None, 2.0]]  # a list: the reader refuses it with the key's name


def test_an_array_referenced_twice_through_the_memo_is_the_same_array():
    array = np.arange(5.0)
    back = safe_loads(pickle.dumps({"x": array, "y": array, "dtype_again": array.dtype}, protocol=2), "x.pkl")
    np.testing.assert_array_equal(back["y"], array)
    assert back["x"] is back["y"] and back["dtype_again"] == np.float64


def test_python2_style_raw_data_given_as_text_loads():
    # Python 2 pickles hold an array's bytes as an 8-bit str (SHORT_BINSTRING), which encoding="latin1"
    # turns into text; the array is rebuilt from that text's latin-1 bytes, as numpy does.
    raw = np.array([1.5, -2.0, 3.25]).tobytes()
    dtype = (b"cnumpy\ndtype\n(X\x02\x00\x00\x00f8\x89\x88tR"
             b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(K\x00tU\x01btR"
            b"(K\x01(K\x03t" + dtype + b"\x89U" + bytes([len(raw)]) + raw + b"tb.")
    np.testing.assert_array_equal(safe_loads(data, "py2.pkl"), [1.5, -2.0, 3.25])


@pytest.mark.parametrize("body, refused", [
    (pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD, "setting the state of a dict"),
    (pickle.GLOBAL + b"builtins\nset\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ, "creating a set object"),
    (pickle.EMPTY_LIST + pickle.NONE + pickle.NONE + pickle.SETITEM, "setting items of a list"),
])
def test_opcodes_only_do_what_plain_data_needs(body, refused):
    with pytest.raises(DataError, match=refused):
        safe_loads(pickle.PROTO + b"\x02" + body + pickle.STOP, "x.pkl")


def test_every_length_is_checked_against_what_is_left_of_the_file():
    huge = pickle.PROTO + b"\x04" + pickle.BINUNICODE8 + (1 << 40).to_bytes(8, "little") + pickle.STOP
    with pytest.raises(DataError, match="declares 1,099,511,627,776 bytes where only 1 remain"):
        safe_loads(huge, "x.pkl")


def test_the_allow_list_is_exactly_what_plain_data_needs():
    from decalign.data.safe_pickle import ALLOWED_NAMES

    numpy = {(f"{p}.{m}", n) for p in ("numpy.core", "numpy._core")
             for m, n in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
    assert ALLOWED_NAMES == numpy | {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex")}
