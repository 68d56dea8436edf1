"""A restricted unpickler for pickles that come from outside: numpy arrays and builtin containers only.

``pickle.load`` runs whatever callable a file names (``os.system``, ``builtins.eval`` ...). This
unpickler resolves a global only if it is on an allow list of the few numpy functions and classes that
rebuild arrays, dtypes and scalars (under their numpy 1.x and 2.x module names); anything else raises
:class:`~decalign.data.dataset.DataError` before it is called, so nothing a hostile file names can run.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from typing import Any, BinaryIO

from .dataset import DataError

try:  # numpy >= 2 keeps the implementation in numpy._core and pickles under that name
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

import numpy as np

_LATIN1_NAMES = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, limited to latin-1.

    Other codecs are refused without being looked up: a codec lookup imports a module by name.
    """
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed with latin-1, not {encoding!r}")
    return text.encode("latin1")


def _numpy_names() -> dict[tuple[str, str], Any]:
    """The globals numpy's own pickles name, under both the 1.x and the 2.x module paths."""
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        # protocol 5 pickles of contiguous arrays: frombuffer(buf, dtype).reshape(shape, order)
        allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_names(),
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global that is not on the allow list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only hands out :data:`ALLOWED_GLOBALS`.

    ``encoding="latin1"`` is what numpy documents for arrays pickled by Python 2.
    """

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules (__builtin__.set); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def safe_load(file: BinaryIO, shown: str, hint: str = "") -> Any:
    """Unpickle ``file`` allowing only numpy arrays, dtypes, scalars and builtin containers.

    Parameters
    ----------
    file
        A binary stream positioned at the start of the pickle.
    shown
        The file name used in error messages.
    hint
        Appended to the message when the content cannot be unpickled (e.g. "; the content looks like text").

    Raises
    ------
    DataError
        Naming ``shown`` and, for a refused global, the global (``module.name``); or saying that the
        file is truncated or not a pickle.
    """
    try:
        return RestrictedUnpickler(file).load()
    except RefusedGlobal as err:
        raise DataError(
            f"{shown}: refused to load: the pickle asks for {err.qualified}, which is not allowed; "
            "expected only numpy arrays and builtin containers (dict, list, str, numbers). "
            "Nothing from the file was run."
        ) from None
    except EOFError:
        raise DataError(
            f"{shown}: the pickle ends early (truncated file); expected a complete pickle"
        ) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise DataError(
            f"{shown}: not a readable pickle ({type(err).__name__}: {err}){hint}; expected an MMSA pickle"
        ) from None
    except MemoryError:
        raise DataError(f"{shown}: the pickle needs more memory than is available") from None


def safe_loads(data: bytes, shown: str, hint: str = "") -> Any:
    """:func:`safe_load` over bytes in memory."""
    return safe_load(io.BytesIO(data), shown, hint)
