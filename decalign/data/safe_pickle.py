"""A restricted unpickler for pickles that come from outside: plain numpy arrays and builtin containers.

``pickle.load`` runs whatever callable a file names (``os.system``, ``builtins.eval`` ...). Allowing
numpy's own reconstruction functions is not safe either: numpy takes dtype flags from the pickle, so a
file can declare an object dtype that "holds no objects" and have raw bytes used as object pointers.
So this unpickler never calls numpy's reconstructors. When a pickle names them, it gets the
stand-ins of :mod:`.pickle_numpy`, which build arrays from raw bytes (``np.frombuffer``) with a dtype from an
allow-list of numeric, bool and fixed-width string type codes (never an object dtype, never flags from
the file). An object array (MMSA's ``id`` and ``raw_text``) becomes a str array, a numeric array or a
list of its items. Anything else a file names raises :class:`DataError` before it is called.

Sizes are bounded too. It is the pure-Python unpickler (its memo is a dict, so a memo index of 2**27
costs nothing), every length field is checked against the bytes left in the file before anything is
allocated, ``bytearray(n)`` is refused, and conversions that allocate (object arrays to str arrays)
spend from an :class:`AllocationBudget` proportional to the file's size. The loader still runs all of
this in a memory-limited child process (:mod:`decalign.sandbox`): a bug here cannot take the server down.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
from typing import Any, BinaryIO, ClassVar

from .dataset import DataError
from .pickle_numpy import NDARRAY, AllocationBudget, Builder, NumpyFunctions, Refused, type_name

MEMO_ENTRY_BYTES = 128  # what one memo entry may be charged
VIEW_MIN_BYTES = 1 << 20  # a bytes payload at least this large is a view of a mapped file (not a copy)
_LATIN1_NAMES = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


class RefusedGlobal(Refused):
    """A pickle named a global that is not on the allow list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


# ------------------------------------------------------------------------------- builtin stand-ins


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, limited to latin-1.

    Other codecs are refused without being looked up: a codec lookup imports a module by name.
    """
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed with latin-1, not {encoding!r}")
    return text.encode("latin1")


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray`` from bytes or latin-1 text only: ``bytearray(n)`` would allocate n bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and str(encoding).lower().replace("_", "-") in _LATIN1_NAMES:
        return bytearray(source.encode("latin1"))
    raise Refused(f"bytearray({type_name(source)}) (only bytearray(bytes) is read)")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        raise Refused("complex() of something other than two numbers")
    return complex(real, imag)


def _allowed_globals(numpy: NumpyFunctions) -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): NDARRAY, ("numpy", "dtype"): numpy.dtype,
        ("_codecs", "encode"): _latin1_encode, ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): _bytearray, ("builtins", "complex"): _complex,
    }
    for package in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x module names
        allowed[(f"{package}.multiarray", "_reconstruct")] = numpy.reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = numpy.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numpy.frombuffer
    return allowed


ALLOWED_NAMES = frozenset(_allowed_globals(NumpyFunctions(AllocationBudget(0, ""))))
_NEW_ALLOWED = {complex: _complex, collections.OrderedDict: collections.OrderedDict}


# ----------------------------------------------------------------------------------- the unpickler


class _BoundedFile:
    """The file as the unpickler reads it: a length field larger than what is left is refused. With ``view``
    (the whole file mapped), a large payload is a read-only view of it (:meth:`read_payload`)."""

    def __init__(self, file: BinaryIO, size: int, view: memoryview | None = None) -> None:
        self.file, self.left, self.view = file, size, view

    def read_payload(self, n: int) -> bytes | memoryview:
        """``read(n)``, or a view of the mapped file for at least :data:`VIEW_MIN_BYTES`: an MMSA pickle's
        arrays (349 MB for MOSI) are then neither read into new memory nor, in the sandbox's child, written
        again (``decalign._sandbox_worker._in_place_plan``)."""
        if self.view is None or n < VIEW_MIN_BYTES:
            return self.read(n)
        self._check_left(n)
        start = self.file.tell()
        self.file.seek(start + n)
        self.left -= n
        return self.view[start:start + n]

    def _check_left(self, n: int) -> None:
        if n > self.left:  # EOFError: the message says "ends early"
            raise EOFError(f"it declares {n:,} bytes where only {self.left:,} remain")

    def read(self, n: int) -> bytes:
        self._check_left(n)
        data = self.file.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.file.readline()
        self.left -= len(line)
        return line


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler whose globals are :data:`ALLOWED_NAMES`' stand-ins, with bounded sizes.

    ``encoding="latin1"`` is what numpy documents for arrays pickled by Python 2.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, size: int, budget: AllocationBudget, view: memoryview | None = None) -> None:
        self.bounded = _BoundedFile(file, size, view)
        super().__init__(self.bounded, encoding="latin1")
        self.budget = budget
        self.max_memo = budget.limit // MEMO_ENTRY_BYTES
        self.allowed = _allowed_globals(NumpyFunctions(budget))

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules (__builtin__.set); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def load_binbytes(self) -> None:
        (size,) = struct.unpack("<I", self.read(4))
        self.append(self._payload(size))

    def load_binbytes8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        self.append(self._payload(size))

    def _payload(self, size: int) -> bytes | memoryview:
        # Outside a frame (where the pickler puts large payloads) the file's position is the payload's.
        return self.read(size) if self._unframer.current_frame else self.bounded.read_payload(size)

    def load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(size)))  # read (bounded) before allocating

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, Builder) or target.done:
            raise Refused(f"setting the state of a {type_name(target)}")
        target.built, target.done = target.build(state, self.budget), True
        self.stack[-1] = target.built

    def _memo_put(self, load) -> None:
        load(self)
        if len(self.memo) > self.max_memo:  # each entry costs about a hundred bytes of dict and key
            raise Refused(f"more than {self.max_memo:,} memo entries for a {self.budget.file_size:,}-byte file")

    def load_put(self) -> None:
        self._memo_put(pickle._Unpickler.load_put)

    def load_binput(self) -> None:
        self._memo_put(pickle._Unpickler.load_binput)

    def load_long_binput(self) -> None:
        self._memo_put(pickle._Unpickler.load_long_binput)

    def load_memoize(self) -> None:
        self._memo_put(pickle._Unpickler.load_memoize)

    def _memo_get(self, index: int) -> None:
        try:
            value = self.memo[index]
        except KeyError:
            raise pickle.UnpicklingError(f"memo value not found at index {index}") from None
        self.append(value.built if isinstance(value, Builder) and value.done else value)

    def load_get(self) -> None:
        self._memo_get(int(self.readline()[:-1]))

    def load_binget(self) -> None:
        self._memo_get(self.read(1)[0])

    def load_long_binget(self) -> None:
        self._memo_get(struct.unpack("<I", self.read(4))[0])

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls not in _NEW_ALLOWED or not isinstance(args, tuple):
            raise Refused(f"creating a {getattr(cls, '__name__', type(cls).__name__)} object")
        self.append(_NEW_ALLOWED[cls](*args))

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._dict()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict()
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def _dict(self) -> dict:
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise Refused(f"setting items of a {type_name(target)}")
        return target

    def _refuse_opcode(self) -> None:
        raise pickle.UnpicklingError("class instances (INST/OBJ/NEWOBJ_EX opcodes) are not supported")

    dispatch[pickle.BINBYTES[0]] = load_binbytes
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.BINPUT[0]] = load_binput
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput
    dispatch[pickle.MEMOIZE[0]] = load_memoize
    dispatch[pickle.GET[0]] = load_get
    dispatch[pickle.BINGET[0]] = load_binget
    dispatch[pickle.LONG_BINGET[0]] = load_long_binget
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX):
        dispatch[_opcode[0]] = _refuse_opcode
    del _opcode


def safe_load(file: BinaryIO, shown: str, hint: str = "", budget: AllocationBudget | None = None,
              view: memoryview | None = None) -> Any:
    """Unpickle ``file`` allowing only plain numpy arrays, numpy scalars and builtin containers.

    Parameters
    ----------
    file
        A seekable binary stream positioned at the start of the pickle.
    shown
        The file name used in error messages.
    hint
        Appended to the message when the content cannot be unpickled (e.g. "; the content looks like text").
    budget
        What conversions may allocate; by default :class:`AllocationBudget` of the bytes left in ``file``.
    view
        The whole of ``file`` mapped read-only (the sandbox's child): bytes payloads of at least
        :data:`VIEW_MIN_BYTES` are then views of it, not copies.

    Raises
    ------
    DataError
        Naming ``shown`` and, for a refused global, the global (``module.name``); or saying that the
        file is truncated, not a pickle, or asks for something that is not allowed.
    """
    size = _bytes_left(file)
    budget = budget or AllocationBudget(size, shown)
    try:
        return RestrictedUnpickler(file, size, budget, view).load()
    except DataError:
        raise
    except RefusedGlobal as err:
        raise DataError(
            f"{shown}: refused to load: the pickle asks for {err.qualified}, which is not allowed; "
            "expected only numpy arrays and builtin containers (dict, list, str, numbers). "
            "Nothing from the file was run."
        ) from None
    except Refused as err:
        raise DataError(
            f"{shown}: refused to load: the pickle asks for {err}, which is not allowed; expected plain "
            "numeric or string numpy arrays and builtin containers. Nothing from the file was run."
        ) from None
    except EOFError as err:
        detail = f" ({err})" if str(err) else ""
        raise DataError(
            f"{shown}: the pickle ends early{detail}: truncated or forged file; expected a complete pickle"
        ) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, struct.error, UnicodeDecodeError) as err:
        raise DataError(
            f"{shown}: not a readable pickle ({type(err).__name__}: {err}){hint}; expected an MMSA pickle"
        ) from None
    except RecursionError:
        raise DataError(f"{shown}: the pickle is nested too deeply to be read") from None
    except MemoryError:
        raise DataError(f"{shown}: the pickle needs more memory than is available") from None


def safe_loads(data: bytes, shown: str, hint: str = "") -> Any:
    """:func:`safe_load` over bytes in memory."""
    return safe_load(io.BytesIO(data), shown, hint)


def _bytes_left(file: BinaryIO) -> int:
    here = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(here)
    return end - here
