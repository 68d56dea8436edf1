"""Zip archives from users (npz data, zipped run directories): every member checked before it is read.

``zipfile`` raises half a dozen exception types for broken archives (bad CRC, encryption, unknown
compression methods, forged sizes) and happily decompresses whatever a member declares. Here a member
is refused with one message naming the archive and the member when it is encrypted, uses a method we
do not read, or declares more than the caller allows; reading stops at the declared size.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from typing import BinaryIO

SUPPORTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                     zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
MAX_MEMBERS = 100_000
MAX_RATIO = 100  # an archive may unpack to this many times its size (zero padding compresses well) ...
RATIO_SLACK = 256 << 20  # ... plus this much
# What zipfile raises for archives that are broken or forged; caught where an archive is read.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
              NotImplementedError, RuntimeError, UnicodeDecodeError, KeyError)
_CHUNK = 1 << 20


def open_archive(file: BinaryIO | str, shown: str, error: type[Exception], expected: str) -> zipfile.ZipFile:
    """Open a zip archive, or raise ``error`` saying it is not one."""
    try:
        archive = zipfile.ZipFile(file)
    except ZIP_ERRORS as exc:
        raise error(f"{shown}: not a readable zip archive (truncated or corrupt: {exc}); expected {expected}"
                    ) from None
    if len(archive.infolist()) > MAX_MEMBERS:
        archive.close()
        raise error(f"{shown}: the archive lists more than {MAX_MEMBERS:,} members; expected {expected}")
    return archive


def check_member(info: zipfile.ZipInfo, shown: str, error: type[Exception]) -> None:
    """Refuse an encrypted member or one compressed with a method this program does not read."""
    if info.flag_bits & 0x1:
        raise error(f"{shown}: member {info.filename!r} is encrypted; expected an unencrypted archive")
    if info.compress_type not in SUPPORTED_METHODS:
        raise error(f"{shown}: member {info.filename!r} uses compression method {info.compress_type}, which "
                    f"is not supported; expected one of {', '.join(SUPPORTED_METHODS.values())}")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str, error: type[Exception],
                limit: int) -> bytes:
    """The member's bytes, refused if it declares more than ``limit``; the CRC is checked at the end."""
    check_member(info, shown, error)
    if info.file_size > limit:
        raise error(f"{shown}: member {info.filename!r} unpacks to {info.file_size:,} bytes, more than "
                    f"the {limit:,} expected")
    chunks, total = [], 0
    try:
        with archive.open(info) as stream:  # stops at the declared size, checks the CRC at its end
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                chunks.append(chunk)
    except ZIP_ERRORS as exc:
        raise error(f"{shown}: member {info.filename!r} could not be read (truncated or corrupt: {exc})"
                    ) from None
    if total != info.file_size:
        raise error(f"{shown}: member {info.filename!r} holds {total:,} bytes but declares {info.file_size:,}")
    return b"".join(chunks)
