"""Text that came from files, made inert wherever the product shows or writes it.

Ids, raw text, class names, card fields, comments and file names are untrusted. Three places would
otherwise interpret them:

- **CSV files** opened in a spreadsheet: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR
  (or their full-width forms) runs as a formula. :func:`csv_cell` prefixes such text with ``'``.
  Numbers stay numbers: a value of a numeric type is written as it is (``-1.5`` is a number, not a
  formula), and so is text that is exactly a decimal number (``"-3"``, ``"2e5"``), which a
  spreadsheet reads as that number. Every CSV the project writes goes through :class:`SafeCsvWriter`,
  which also quotes every cell containing CR or LF (``\\r\\n`` line ends, RFC 4180).
- **Markdown** (Streamlit captions, messages): :func:`markdown_text` backslash-escapes every
  character Markdown or HTML would act on, so ``![x](http://host/x)`` is shown, not fetched.
- **plotly labels and hover text**, which understand a few HTML tags: :func:`plotly_text` escapes
  ``& < >``.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=\"'^%@])")


def csv_cell(value: Any) -> Any:
    """``value`` as a safe CSV cell: formula-looking text gets a leading ``'``; numbers are kept."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _DECIMAL.fullmatch(value):
        return "'" + value
    return value


class SafeCsvWriter:
    """``csv.writer`` that passes every cell through :func:`csv_cell`, with CRLF line ends and minimal
    quoting (so every cell holding CR or LF is quoted). Open ``handle`` with ``newline=""``."""

    def __init__(self, handle: TextIO) -> None:
        self._writer = csv.writer(handle, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)

    def writerow(self, row: Sequence[Any]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])

    def writerows(self, rows: Iterable[Sequence[Any]]) -> int:
        count = 0
        for row in rows:
            self.writerow(row)
            count += 1
        return count


def write_csv(handle: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write ``header`` and ``rows`` formula-safe; returns the number of rows written."""
    writer = SafeCsvWriter(handle)
    writer.writerow(header)
    return writer.writerows(rows)


def frame_csv(frame: Any) -> str:
    """A pandas DataFrame as formula-safe CSV text (no index; missing values as empty cells)."""
    buffer = io.StringIO(newline="")
    missing = frame.isna().to_numpy()
    rows = ([None if gap else v for v, gap in zip(row, gaps)]
            for row, gaps in zip(frame.itertuples(index=False, name=None), missing))
    write_csv(buffer, [str(c) for c in frame.columns], rows)
    return buffer.getvalue()


def markdown_text(text: Any) -> str:
    """``text`` escaped for Markdown (Streamlit): shown literally, no links, images, HTML or maths."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def plotly_text(text: Any) -> str:
    """``text`` escaped for plotly labels and hover text (which read ``<a>``, ``<b>``, ``<br>``...)."""
    return html.escape(str(text), quote=False)
