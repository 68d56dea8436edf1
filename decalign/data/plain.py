"""Turn a value that came out of a pickle (array, nested lists, tuples) into one plain numpy array.

``np.asarray`` on nested lists allocates before it can be stopped, and a pickle can share one list
many times (a 13 KB file can hold a 500 x 500 x 500 "array" of references to the same rows). So the
value is measured first, counting every shared reference as often as it is used but visiting each
list only once, and the array is built only if its size fits the file's :class:`AllocationBudget`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sandbox import is_plain_dtype
from .dataset import DataError
from .pickle_numpy import MAX_NDIM, AllocationBudget, type_name

_NUMBER_TYPES = (bool, int, float, np.bool_, np.integer, np.floating)


@dataclass(frozen=True)
class _Size:
    leaves: int  # elements after expansion (every shared reference counted)
    max_text: int  # longest string among them
    kinds: frozenset[str]  # "number", "text", "array" or the name of an unexpected type
    depth: int


def to_plain_array(value: Any, where: str, expected: str, budget: AllocationBudget) -> np.ndarray:
    """``value`` as a numeric, bool or fixed-width string array; DataError naming ``where`` otherwise."""
    if isinstance(value, np.ndarray):
        if not is_plain_dtype(value.dtype):  # never happens for the safe unpickler's arrays
            raise DataError(f"{where} holds dtype {value.dtype}; expected {expected}")
        return value
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where} holds a {type_name(value)}; expected {expected}")
    size = _measure(value, where)
    if size.depth > MAX_NDIM:
        raise DataError(f"{where} is nested {size.depth} levels deep; expected {expected}")
    odd = sorted(size.kinds - {"number", "text", "array"})
    if odd or ("text" in size.kinds and len(size.kinds) > 1):
        found = ", ".join(odd) or "a mix of strings and numbers"
        raise DataError(f"{where} holds {found}; expected {expected}")
    if "text" in size.kinds:
        budget.spend(4 * size.leaves * max(size.max_text, 1), where)
        return _text_array(value, where, expected)
    budget.spend(8 * size.leaves, where)
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as err:  # ragged nested lists, huge integers
        raise DataError(f"{where} could not be read as an array ({err}); expected {expected}") from None


def _text_array(value: Any, where: str, expected: str) -> np.ndarray:
    if any(isinstance(v, bytes) for v in value):
        value = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    try:
        return np.array(value, dtype=str)
    except (ValueError, TypeError) as err:
        raise DataError(f"{where} could not be read as an array ({err}); expected {expected}") from None


def _measure(value: list | tuple, where: str) -> _Size:
    """Post-order walk without recursion; each list is measured once however often it is shared."""
    done: dict[int, _Size] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, expanded = stack.pop()
        key = id(item)
        if key in done:
            continue
        if expanded:
            on_path.discard(key)
            done[key] = _combine([_leaf(v, done) for v in item])
            continue
        if key in on_path:
            raise DataError(f"{where} contains itself (a list that refers back to itself); expected an array")
        on_path.add(key)
        stack.append((item, True))
        stack.extend((v, False) for v in item if isinstance(v, (list, tuple)) and id(v) not in done)
    return done[id(value)]


def _leaf(item: Any, done: dict[int, _Size]) -> _Size:
    if isinstance(item, (list, tuple)):
        return done[id(item)]
    if isinstance(item, (str, bytes)):
        return _Size(1, len(item), frozenset({"text"}), 0)
    if isinstance(item, _NUMBER_TYPES):
        return _Size(1, 0, frozenset({"number"}), 0)
    if isinstance(item, np.ndarray) and item.dtype.kind in "biuf":
        return _Size(item.size, 0, frozenset({"array"}), item.ndim)
    return _Size(1, 0, frozenset({type_name(item)}), 0)


def _combine(parts: list[_Size]) -> _Size:
    if not parts:
        return _Size(0, 0, frozenset(), 1)
    return _Size(sum(p.leaves for p in parts), max(p.max_text for p in parts),
                 frozenset().union(*(p.kinds for p in parts)), 1 + max(p.depth for p in parts))
