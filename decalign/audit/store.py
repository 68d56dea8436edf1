"""Append-only audit trail of predictions and human reviews, in one SQLite file.

Every prediction shown by the dashboard or written by the CLI can be recorded with the checkpoint
and input it came from; reviewers add verdicts. Rows are never changed: triggers abort any UPDATE
or DELETE, and an INSERT that would replace an existing row (``REPLACE INTO``, ``INSERT OR REPLACE``:
SQLite deletes the old row without firing DELETE triggers unless recursive triggers are on), so a
correction is a new review row and ``latest_review`` returns the newest one. (The triggers guard
against edits through SQL, not against someone who can rewrite the file itself.)

Concurrency: the database runs in WAL mode (readers never block the writer) and each operation
opens its own short-lived connection, so one ``AuditTrail`` can be shared by Streamlit's session
threads and by several processes; writers wait up to ``BUSY_TIMEOUT_S`` for the write lock.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_write_file
from ..safe_output import SafeCsvWriter

ENV_VAR = "DECALIGN_AUDIT_DB"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
SOURCES = ("dashboard", "cli")
VERDICTS = ("correct", "wrong", "unsure")
MAX_COMMENT_CHARS = 10_000
_MAX_ID_CHARS = 256
_MAX_NAME_CHARS = 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JSON_COLUMNS = ("prediction", "label", "contributions", "flags")

_PREDICTION_COLUMNS = (
    "id", "created_at", "source", "checkpoint_fingerprint", "input_sha256", "input_name", "split",
    "sample_id", "prediction", "label", "contributions", "flags",
)
_REVIEW_COLUMNS = (
    "id", "created_at", "checkpoint_fingerprint", "input_sha256", "sample_id", "reviewer", "verdict", "comment",
)
_TABLES = {"predictions": _PREDICTION_COLUMNS, "reviews": _REVIEW_COLUMNS}
_REQUIRED = ("source", "checkpoint_fingerprint", "input_sha256", "sample_id", "prediction")
_OPTIONAL = {"input_name": "", "split": "", "label": None, "contributions": {}, "flags": []}

_TABLE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('dashboard', 'cli')),
        checkpoint_fingerprint TEXT NOT NULL,
        input_sha256 TEXT NOT NULL,
        input_name TEXT NOT NULL DEFAULT '',
        split TEXT NOT NULL DEFAULT '',
        sample_id TEXT NOT NULL,
        prediction TEXT NOT NULL,
        label TEXT,
        contributions TEXT NOT NULL DEFAULT '{}',
        flags TEXT NOT NULL DEFAULT '[]'
    )""",
    """CREATE TABLE IF NOT EXISTS reviews (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        checkpoint_fingerprint TEXT NOT NULL,
        input_sha256 TEXT NOT NULL,
        sample_id TEXT NOT NULL,
        reviewer TEXT NOT NULL DEFAULT '',
        verdict TEXT NOT NULL CHECK (verdict IN ('correct', 'wrong', 'unsure')),
        comment TEXT NOT NULL DEFAULT ''
    )""",
)
_INDEX_AND_TRIGGER_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS predictions_key ON predictions (checkpoint_fingerprint, input_sha256, sample_id)",
    "CREATE INDEX IF NOT EXISTS reviews_key ON reviews (checkpoint_fingerprint, input_sha256, sample_id)",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
            BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END"""
        for table in _TABLES for op in ("UPDATE", "DELETE")
    ),
    # REPLACE deletes the row it conflicts with silently; refuse any insert whose id is taken.
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table}
            WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id)
            BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END"""
        for table in _TABLES
    ),
)


class AuditError(ValueError):
    """A bad row, a bad filter, or a file that is not a DecAlign audit trail."""


def default_audit_path() -> Path:
    """Where the audit trail lives: ``$DECALIGN_AUDIT_DB`` if set, else
    ``$XDG_DATA_HOME/decalign-studio/audit.sqlite3`` (``~/.local/share`` when XDG_DATA_HOME is unset
    or relative, as the XDG spec says). Creates the parent folder."""
    explicit = os.environ.get(ENV_VAR, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "").strip()
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
        path = base / "decalign-studio" / "audit.sqlite3"
    _make_parent(path)
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"{path}: the audit trail's folder cannot be created ({exc.strerror or exc}); set "
                         f"{ENV_VAR} to a writable file") from None


class AuditTrail:
    """Append-only SQLite store of predictions and reviews.

    Parameters
    ----------
    path : the database file (created with its schema if missing); ``default_audit_path()`` if None.

    Examples
    --------
    >>> trail = AuditTrail("audit.sqlite3")
    >>> trail.record_predictions([{"source": "cli", "checkpoint_fingerprint": "ab12",
    ...     "input_sha256": "0" * 64, "sample_id": "7", "prediction": 1.25}])
    1
    >>> trail.record_review("ab12", "0" * 64, "7", "wrong", "sarcasm", reviewer="ann")
    1
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_audit_path()
        _make_parent(self.path)
        self._create_schema()

    def __repr__(self) -> str:
        return f"AuditTrail({str(self.path)!r})"

    # -- writing -----------------------------------------------------------------------------

    def record_predictions(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append prediction rows in one transaction (all or none); returns how many.

        Each row needs ``source`` ("dashboard" or "cli"), ``checkpoint_fingerprint``,
        ``input_sha256`` (64 hex digits), ``sample_id`` and ``prediction`` (a number or a list);
        optional: ``input_name``, ``split``, ``label`` (None when unknown), ``contributions``
        (JSON object) and ``flags`` (JSON value). Numpy values are accepted; NaN/inf are not.
        """
        created_at = _now()
        values = [_prediction_values(row, i, created_at) for i, row in enumerate(rows)]
        if not values:
            return 0
        columns = _PREDICTION_COLUMNS[1:]
        sql = f"INSERT INTO predictions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with self._connect(write=True) as conn:
            conn.executemany(sql, values)
        return len(values)

    def record_review(
        self,
        checkpoint_fingerprint: str,
        input_sha256: str,
        sample_id: str | int,
        verdict: str,
        comment: str = "",
        reviewer: str = "",
    ) -> int:
        """Append a review of one sample's prediction; returns the new row id.

        ``verdict`` is "correct", "wrong" or "unsure" (there is no default: None is refused); ``reviewer``
        names who decided and is required; ``comment`` at most ``MAX_COMMENT_CHARS``.
        """
        missing = [what for what, absent in (("no verdict chosen (correct, wrong or unsure)", verdict is None),
                                             ("no reviewer (a review needs the reviewer's name)",
                                              isinstance(reviewer, str) and not reviewer.strip())) if absent]
        if missing:
            raise AuditError(" and ".join(missing))
        if verdict not in VERDICTS:
            raise AuditError(f"verdict must be one of {', '.join(VERDICTS)}, found {verdict!r}")
        values = (
            _now(),
            _text(checkpoint_fingerprint, "checkpoint_fingerprint", _MAX_ID_CHARS, required=True),
            _sha256(input_sha256, "input_sha256"),
            _text(_sample_id(sample_id), "sample_id", _MAX_ID_CHARS, required=True),
            _text(reviewer, "reviewer", _MAX_ID_CHARS),
            verdict,
            _text(comment, "comment", MAX_COMMENT_CHARS),
        )
        sql = (f"INSERT INTO reviews ({', '.join(_REVIEW_COLUMNS[1:])}) "
               f"VALUES ({', '.join('?' * len(values))})")
        with self._connect(write=True) as conn:
            return int(conn.execute(sql, values).lastrowid)

    # -- reading -----------------------------------------------------------------------------

    def predictions(self, *, limit: int | None = None, decode: bool = True, **filters: Any) -> pd.DataFrame:
        """Prediction rows in insertion order; ``filters`` are equality tests on columns
        (``checkpoint_fingerprint=..., split="test"``); ``limit`` keeps the newest rows.
        With ``decode`` the JSON columns come back as Python objects."""
        frame = self._select("predictions", filters, limit)
        return _decode(frame) if decode else frame

    def reviews(self, *, limit: int | None = None, **filters: Any) -> pd.DataFrame:
        """Review rows (the full history) in insertion order, filtered like ``predictions``."""
        return self._select("reviews", filters, limit)

    def reviews_for(self, checkpoint_fingerprint: str, input_sha256: str, sample_id: str | int) -> pd.DataFrame:
        """Every review of one sample, oldest first."""
        return self.reviews(checkpoint_fingerprint=checkpoint_fingerprint, input_sha256=input_sha256,
                            sample_id=_sample_id(sample_id))

    def latest_review(
        self, checkpoint_fingerprint: str, input_sha256: str, sample_id: str | int
    ) -> dict[str, Any] | None:
        """The newest review of one sample as a dict, or None if it was never reviewed."""
        history = self.reviews(limit=1, checkpoint_fingerprint=checkpoint_fingerprint,
                               input_sha256=input_sha256, sample_id=_sample_id(sample_id))
        if history.empty:
            return None
        # Plain Python values (not numpy scalars), so the dict is JSON-ready.
        return {key: value.item() if isinstance(value, np.generic) else value
                for key, value in history.iloc[-1].items()}

    def latest_reviews(self, **filters: Any) -> pd.DataFrame:
        """The current verdict of every reviewed sample (its newest review); filters apply to it."""
        where, params = _where("reviews", filters)
        newest = "SELECT MAX(id) AS id FROM reviews GROUP BY checkpoint_fingerprint, input_sha256, sample_id"
        sql = f"SELECT * FROM (SELECT * FROM reviews WHERE id IN ({newest})){where} ORDER BY id"
        return self._query(sql, params)

    def count(self, table: str = "predictions", **filters: Any) -> int:
        """Number of rows of ``table`` ("predictions" or "reviews") matching ``filters``."""
        where, params = _where(table, filters)
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}{where}", params).fetchone()[0])

    def export_csv(self, path: str | os.PathLike[str], table: str = "predictions", **filters: Any) -> int:
        """Write ``table`` (JSON columns as stored) to a CSV file atomically; returns the row count.

        Formula-safe (:mod:`decalign.safe_output`): text cells a spreadsheet would run as a formula
        get a leading ``'``, and cells with CR or LF are quoted.
        """
        frame = self._select(table, filters, None)
        atomic_write_file(path, lambda handle: _write_frame(handle, frame), text=True)
        return len(frame)

    # -- plumbing ----------------------------------------------------------------------------

    def _select(self, table: str, filters: dict[str, Any], limit: int | None) -> pd.DataFrame:
        where, params = _where(table, filters)
        sql = f"SELECT * FROM {table}{where} ORDER BY id"
        if limit is not None:
            if not isinstance(limit, int) or limit < 0:
                raise AuditError(f"limit must be a non-negative integer, found {limit!r}")
            sql = f"SELECT * FROM (SELECT * FROM {table}{where} ORDER BY id DESC LIMIT {limit}) ORDER BY id"
        return self._query(sql, params)

    def _query(self, sql: str, params: list[Any]) -> pd.DataFrame:
        with self._connect() as conn:
            cursor = conn.execute(sql, params)
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        # A column holding NULL keeps object dtype so NULL stays None (pandas would make it NaN).
        data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
        return pd.DataFrame({name: pd.Series(values, dtype=object if None in values else None)
                             for name, values in data.items()}, columns=columns)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection per operation (sqlite3 connections must not cross threads).

        Writes run in ``BEGIN IMMEDIATE`` so the write lock is taken up front and waited for
        with the busy timeout, rather than failing when a read transaction tries to upgrade.
        """
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: the audit trail cannot be opened ({exc}); set {ENV_VAR} to a "
                             "writable file") from None
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # safe in WAL mode: commits survive app crashes
            if write:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Append-only violations stay IntegrityError; other database failures name the file.
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError
            ):
                raise AuditError(f"{self.path}: audit trail error ({exc})") from exc
            raise
        finally:
            conn.close()

    def _create_schema(self) -> None:
        try:
            with self._connect() as conn:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    warnings.warn(f"{self.path}: WAL mode unavailable (journal_mode={mode})", stacklevel=3)
                conn.execute("BEGIN IMMEDIATE")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise AuditError(f"{self.path}: audit trail schema version {version} is newer than "
                                     f"this program's ({SCHEMA_VERSION})")
                for statement in _TABLE_SCHEMA:
                    conn.execute(statement)
                _check_columns(conn, self.path)  # before indexes: a foreign table gets a clear message
                for statement in _INDEX_AND_TRIGGER_SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except AuditError as exc:
            if "file is not a database" in str(exc):
                raise AuditError(f"{self.path}: not an SQLite database, expected a DecAlign audit trail") from exc
            raise


# ---------------------------------------------------------------------------------------------
# Row validation and encoding
# ---------------------------------------------------------------------------------------------

def _prediction_values(row: dict[str, Any], index: int, created_at: str) -> tuple[Any, ...]:
    where = f"prediction row {index}"
    if not isinstance(row, dict):
        raise AuditError(f"{where}: expected a dict, found {type(row).__name__}")
    missing = [key for key in _REQUIRED if key not in row]
    unknown = sorted(set(row) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise AuditError(f"{where}: missing fields {missing}, unknown fields {unknown}; "
                         f"expected {list(_REQUIRED)} and optionally {list(_OPTIONAL)}")
    full = {**_OPTIONAL, **row}
    if full["source"] not in SOURCES:
        raise AuditError(f"{where}: field 'source' must be one of {SOURCES}, found {full['source']!r}")
    if not isinstance(full["contributions"], dict):
        raise AuditError(f"{where}: field 'contributions' must be a dict, "
                         f"found {type(full['contributions']).__name__}")
    label = full["label"]
    return (
        created_at,
        full["source"],
        _text(full["checkpoint_fingerprint"], f"{where}: field 'checkpoint_fingerprint'", _MAX_ID_CHARS, True),
        _sha256(full["input_sha256"], f"{where}: field 'input_sha256'"),
        _text(full["input_name"], f"{where}: field 'input_name'", _MAX_NAME_CHARS),
        _text(full["split"], f"{where}: field 'split'", _MAX_ID_CHARS),
        _text(_sample_id(full["sample_id"]), f"{where}: field 'sample_id'", _MAX_ID_CHARS, True),
        _to_json(full["prediction"], f"{where}: field 'prediction'"),
        None if label is None else _to_json(label, f"{where}: field 'label'"),
        _to_json(full["contributions"], f"{where}: field 'contributions'"),
        _to_json(full["flags"], f"{where}: field 'flags'"),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _sample_id(value: Any) -> Any:
    # Integer ids (numpy ones too) are stored as their decimal text so lookups by 7 and "7" agree.
    return str(int(value)) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value


def _text(value: Any, what: str, max_chars: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise AuditError(f"{what}: expected text, found {type(value).__name__}")
    if required and not value.strip():
        raise AuditError(f"{what}: expected non-empty text")
    if len(value) > max_chars:
        raise AuditError(f"{what}: {len(value)} characters, expected at most {max_chars}")
    return value


def _sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise AuditError(f"{what}: expected 64 hexadecimal characters (a SHA-256), found {value!r:.80}")
    return value.lower()


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"{what}: not storable as JSON ({exc})") from exc


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _decode(frame: pd.DataFrame) -> pd.DataFrame:
    for column in _JSON_COLUMNS:
        decoded = [None if text is None else json.loads(text) for text in frame[column]]
        frame[column] = pd.Series(decoded, index=frame.index, dtype=object)  # keeps None, lists, dicts
    return frame


def _where(table: str, filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL ``WHERE`` clause of equality filters; column names come from the schema only."""
    if table not in _TABLES:
        raise AuditError(f"table must be one of {', '.join(_TABLES)}, found {table!r}")
    unknown = sorted(set(filters) - set(_TABLES[table]))
    if unknown:
        raise AuditError(f"{table}: unknown filter column(s) {unknown}, expected some of {list(_TABLES[table])}")
    active = {key: _sample_id(value) for key, value in filters.items() if value is not None}
    if "input_sha256" in active and isinstance(active["input_sha256"], str):
        active["input_sha256"] = active["input_sha256"].lower()
    if not active:
        return "", []
    return " WHERE " + " AND ".join(f"{key} = ?" for key in active), list(active.values())


def _check_columns(conn: sqlite3.Connection, path: Path) -> None:
    for table, expected in _TABLES.items():
        found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        if found != expected:
            raise AuditError(f"{path}: table {table!r} has columns {list(found)}, expected {list(expected)}")


def _write_frame(handle, frame: pd.DataFrame) -> None:
    """The frame as formula-safe CSV (``decalign.safe_output``); NULL cells stay empty."""
    writer = SafeCsvWriter(handle)
    writer.writerow(list(frame.columns))
    writer.writerows([None if pd.isna(v) else v for v in row] for row in frame.itertuples(index=False, name=None))
