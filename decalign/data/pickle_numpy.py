"""numpy arrays, dtypes and scalars rebuilt by this project's code for :mod:`.safe_pickle`.

When a pickle names ``numpy.core.multiarray._reconstruct``, ``numpy.dtype``, ``scalar`` or ``_frombuffer``,
the unpickler hands it these stand-ins instead. They build arrays from raw bytes with ``np.frombuffer`` and
a dtype chosen from an allow-list of numeric, bool and fixed-width string type codes: never an object
dtype, never the dtype flags a file declares (with numpy's own functions, an object dtype whose flags
claim "no objects" turns raw bytes into object pointers). An object array's items become a str array, a
numeric array or a list, within the file's :class:`AllocationBudget`.
"""

from __future__ import annotations

import math
import pickle
import re
from typing import Any

import numpy as np

from ..sandbox import MIB
from .dataset import DataError

ALLOCATION_FACTOR = 4  # conversions may allocate this many times the file's size ...
ALLOCATION_SLACK = 64 * MIB  # ... plus this much, for small files with long strings
MAX_NDIM = 32
_TYPESTR = re.compile(r"(b1|[iu][1248]|f(2|4|8|16)|c(8|16|32)|[US][1-9][0-9]{0,8}|O[48])$")
_NUMBERS = (bool, int, float, np.bool_, np.integer, np.floating)


class AllocationBudget:
    """Bytes a parse may allocate beyond the file itself; :meth:`spend` refuses once they run out."""

    def __init__(self, file_size: int, shown: str) -> None:
        self.limit = ALLOCATION_FACTOR * file_size + ALLOCATION_SLACK
        self.left, self.file_size, self.shown = self.limit, file_size, shown

    def spend(self, nbytes: int, where: str) -> None:
        if nbytes > self.left:
            raise DataError(
                f"{where} would need {nbytes:,} bytes of memory, more than a {self.file_size:,}-byte file "
                f"can plausibly hold (at most {self.limit:,} in all); refused as a likely memory bomb"
            )
        self.left -= nbytes


class Refused(pickle.UnpicklingError):
    """The pickle asked for something this unpickler does not do; the message says what."""


class _NdarrayType:
    """What a pickle gets for ``numpy.ndarray``: only a marker for ``_reconstruct``."""


NDARRAY = _NdarrayType()
OBJECT = "object"  # the resolved dtype of an object array: its items come as a list, never as pointers


class Builder:
    """A numpy object under construction: the unpickler's BUILD opcode hands it its state."""

    built: Any = None
    done = False


class _DtypeBuilder(Builder):
    def __init__(self, typestr: str) -> None:
        self.typestr = typestr

    def default(self) -> np.dtype | str:
        return OBJECT if self.typestr[0] == "O" else np.dtype(self.typestr)

    def build(self, state: Any, budget: AllocationBudget) -> np.dtype | str:
        """dtype state ``(version, byteorder, subdescr, names, fields, elsize, alignment, flags[, meta])``:
        only the byte order is used; fields, sub-arrays and metadata are refused, flags ignored."""
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise Refused(f"dtype {self.typestr!r} with fields or sub-arrays (structured dtypes)")
        dtype = self.default()
        if dtype is OBJECT:
            return OBJECT
        order = state[1]
        return dtype.newbyteorder(order) if order in ("<", ">") and dtype.itemsize > 1 else dtype


class _ArrayBuilder(Builder):
    def build(self, state: Any, budget: AllocationBudget) -> np.ndarray | list:
        """ndarray state ``([version,] shape, dtype, is_fortran, rawdata)``, rebuilt from raw bytes."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise Refused("an ndarray state that is not (version, shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state[-4:]
        shape = _shape(shape)
        dtype = _resolve_dtype(dtype)
        if dtype is OBJECT:
            return _object_array(raw, shape, budget)
        array = _from_bytes(raw, dtype, shape, "F" if fortran else "C")
        # numpy's own __setstate__ swaps non-native data into native byte order: do the same
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(
        type(n) is int and n >= 0 for n in shape
    ):
        raise Refused(f"an array shape {shape!r:.80}; expected up to {MAX_NDIM} non-negative integers")
    return shape


def _resolve_dtype(dtype: Any) -> np.dtype | str:
    if isinstance(dtype, _DtypeBuilder):
        return dtype.built if dtype.done else dtype.default()
    if dtype is OBJECT or (isinstance(dtype, np.dtype) and _TYPESTR.match(dtype.str[1:])):
        return dtype
    raise Refused(f"an array of dtype {dtype!r:.80}")


def type_name(value: Any) -> str:
    """The type a message names: ``bytes`` for a bytes payload the unpickler gave as a view of the mapped file
    (``safe_pickle.VIEW_MIN_BYTES``), so that a message reads the same either way."""
    return "bytes" if isinstance(value, memoryview) else type(value).__name__


def _raw_bytes(raw: Any) -> bytes | bytearray | memoryview:
    if isinstance(raw, str):  # Python 2 pickles: 8-bit strings decoded as latin-1
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return raw
    raise Refused(f"array data given as {type_name(raw)}; expected raw bytes")


def _from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    data = _raw_bytes(raw)
    count = math.prod(shape)
    size = memoryview(data).nbytes
    if size != count * dtype.itemsize:
        raise Refused(f"array data of {size:,} bytes for shape {shape} of {dtype} "
                       f"({count * dtype.itemsize:,} bytes)")
    if order not in ("C", "F"):
        raise Refused(f"array order {order!r}")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order=order)


def _object_array(items: Any, shape: tuple[int, ...], budget: AllocationBudget) -> np.ndarray | list:
    """An object array's items as a str array (all text), a numeric array (all numbers) or a list."""
    if not isinstance(items, list) or len(items) != math.prod(shape):
        raise Refused(f"an object array of shape {shape} whose items are not a list of that length")
    if items and all(isinstance(v, (str, bytes)) for v in items):
        texts = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in items]
        budget.spend(4 * len(texts) * max(map(len, texts)), "an object array of strings")
        return np.array(texts, dtype=str).reshape(shape)
    if items and all(isinstance(v, _NUMBERS) for v in items):
        budget.spend(8 * len(items), "an object array of numbers")
        try:
            return np.array(items).reshape(shape)
        except OverflowError:
            raise Refused("an object array with integers beyond 64 bits") from None
    return items if len(shape) <= 1 else _nest(items, shape)


def _nest(items: list, shape: tuple[int, ...]) -> list:
    for size in reversed(shape[1:]):
        items = [items[i:i + size] for i in range(0, len(items), size)] if size else []
    return items


class NumpyFunctions:
    """Stand-ins for the numpy globals that pickles of arrays, dtypes and scalars name."""

    def __init__(self, budget: AllocationBudget) -> None:
        self.budget = budget

    @staticmethod
    def dtype(typestr: Any, align: Any = False, copy: Any = True) -> _DtypeBuilder:
        if not isinstance(typestr, str) or not _TYPESTR.match(typestr):
            raise Refused(f"numpy dtype {typestr!r:.40}; expected a numeric, bool or fixed-width string type")
        return _DtypeBuilder(typestr)

    @staticmethod
    def reconstruct(subtype: Any, shape: Any = None, typecode: Any = None) -> _ArrayBuilder:
        if subtype is not NDARRAY:
            raise Refused(f"_reconstruct of {subtype!r:.60}; only plain numpy.ndarray is allowed")
        return _ArrayBuilder()

    @staticmethod
    def scalar(dtype: Any, data: Any = None) -> Any:
        dtype = _resolve_dtype(dtype)
        if dtype is OBJECT:  # numpy never pickles one: its raw bytes would be read as a pointer
            raise Refused("a numpy scalar of dtype object")
        return _from_bytes(data, dtype, (1,), "C")[0]

    @staticmethod
    def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        dtype = _resolve_dtype(dtype)
        if dtype is OBJECT:
            raise Refused("an object array built from a raw buffer")
        return _from_bytes(buffer, dtype, _shape(shape), order)
