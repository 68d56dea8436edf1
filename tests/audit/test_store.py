"""Append-only audit trail: schema, round trips, immutability, restarts, WAL, concurrency, export."""

import csv
import multiprocessing as mp
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from decalign.audit import MAX_COMMENT_CHARS, AuditError, AuditTrail, default_audit_path

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
BARRIER_S = 600  # spawned writers import pandas and torch first: minutes on a busy 2-core machine


def _row(sample_id, **extra):
    row = {"source": "cli", "checkpoint_fingerprint": "ckpt-1", "input_sha256": SHA,
           "sample_id": sample_id, "prediction": 0.5}
    return {**row, **extra}


@pytest.fixture
def trail(tmp_path):
    return AuditTrail(tmp_path / "audit.sqlite3")


def _raw(trail):
    return sqlite3.connect(trail.path)


def test_schema_is_created(trail):
    with _raw(trail) as conn:
        objects = {(t, n) for t, n in conn.execute("SELECT type, name FROM sqlite_master")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert {("table", "predictions"), ("table", "reviews")} <= objects
    triggers = {n for t, n in objects if t == "trigger"}
    assert triggers == {f"{t}_no_{op}" for t in ("predictions", "reviews") for op in ("update", "delete", "replace")}


def test_wal_mode_is_on(trail):
    with _raw(trail) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_predictions_round_trip(trail):
    rows = [
        _row(np.int64(3), prediction=np.array([0.25, -1.5], dtype=np.float32), label=np.float64(1.0),
             input_name="batch.npz", split="test", contributions={"text": 0.75, "audio": -0.25},
             flags=["drift"]),
        _row("s-2", source="dashboard", input_sha256=SHA.upper()),
    ]
    before = datetime.now(UTC)
    assert trail.record_predictions(rows) == 2
    frame = trail.predictions()
    assert list(frame["id"]) == [1, 2]
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["sample_id"] == "3"
    assert first["prediction"] == [0.25, -1.5]
    assert first["label"] == 1.0
    assert first["contributions"] == {"text": 0.75, "audio": -0.25}
    assert first["flags"] == ["drift"]
    assert (first["input_name"], first["split"], first["source"]) == ("batch.npz", "test", "cli")
    assert second["label"] is None and second["contributions"] == {} and second["flags"] == []
    assert second["input_sha256"] == SHA  # stored lower-case
    assert second["source"] == "dashboard"
    created = datetime.fromisoformat(first["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    raw = trail.predictions(decode=False)
    assert raw.iloc[0]["prediction"] == "[0.25,-1.5]"


def test_filters_count_and_limit(trail):
    trail.record_predictions([_row(i, split="test" if i % 2 else "valid") for i in range(10)])
    trail.record_predictions([_row(0, input_sha256=OTHER_SHA)])
    assert trail.count() == 11
    assert trail.count(split="test") == 5
    assert trail.count(input_sha256=OTHER_SHA) == 1
    assert list(trail.predictions(sample_id=0)["input_sha256"]) == [SHA, OTHER_SHA]
    assert list(trail.predictions(limit=3)["id"]) == [9, 10, 11]  # the newest, in order
    with pytest.raises(AuditError, match="unknown filter column"):
        trail.count(colour="red")
    with pytest.raises(AuditError, match="table must be one of"):
        trail.count("sqlite_master")


@pytest.mark.parametrize("table, sql", [
    ("predictions", "UPDATE predictions SET prediction = '9' WHERE id = 1"),
    ("predictions", "DELETE FROM predictions"),
    ("reviews", "UPDATE reviews SET verdict = 'correct'"),
    ("reviews", "DELETE FROM reviews WHERE id = 1"),
])
def test_update_and_delete_are_refused(trail, table, sql):
    trail.record_predictions([_row(1)])
    trail.record_review("ckpt-1", SHA, 1, "wrong", "sarcasm", reviewer="ann")
    conn = _raw(trail)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql)
    conn.close()
    assert trail.count(table) == 1
    assert trail.predictions().iloc[0]["prediction"] == 0.5
    assert trail.reviews().iloc[0]["verdict"] == "wrong"


def test_corrections_are_new_reviews(trail):
    assert trail.latest_review("ckpt-1", SHA, 4) is None
    first = trail.record_review("ckpt-1", SHA, 4, "wrong", "looks negative", reviewer="ann")
    second = trail.record_review("ckpt-1", SHA, "4", "correct", "re-listened: fine", reviewer="ann")
    trail.record_review("ckpt-1", SHA, 5, "unsure", reviewer="bo")
    assert second > first
    history = trail.reviews_for("ckpt-1", SHA, 4)
    assert list(history["verdict"]) == ["wrong", "correct"]
    latest = trail.latest_review("ckpt-1", SHA, 4)
    assert latest["id"] == second and latest["verdict"] == "correct" and type(latest["id"]) is int
    current = trail.latest_reviews()
    assert list(zip(current["sample_id"], current["verdict"])) == [("4", "correct"), ("5", "unsure")]
    # a filter applies to the current verdict, not to the history
    assert trail.latest_reviews(verdict="wrong").empty
    assert trail.count("reviews") == 3


def test_survives_restarts(tmp_path):
    path = tmp_path / "nested" / "audit.sqlite3"
    AuditTrail(path).record_predictions([_row(i) for i in range(3)])
    AuditTrail(path).record_review("ckpt-1", SHA, 1, "correct", reviewer="ann")
    reopened = AuditTrail(path)
    assert reopened.count() == 3 and reopened.count("reviews") == 1
    assert list(reopened.predictions()["sample_id"]) == ["0", "1", "2"]


def test_batch_is_all_or_nothing(trail):
    with pytest.raises(AuditError, match="prediction row 2: field 'input_sha256'"):
        trail.record_predictions([_row(0), _row(1), _row(2, input_sha256="abc")])
    assert trail.count() == 0
    assert trail.record_predictions([]) == 0
    empty = trail.predictions()
    assert empty.empty and "prediction" in empty.columns


@pytest.mark.parametrize("row, message", [
    ({"source": "cli"}, "missing fields"),
    (_row(1, colour="red"), r"unknown fields \['colour'\]"),
    (_row(1, source="api"), "field 'source' must be one of"),
    (_row(1, checkpoint_fingerprint=""), "checkpoint_fingerprint': expected non-empty"),
    (_row(1, prediction=float("nan")), "field 'prediction': not storable as JSON"),
    (_row(1, prediction=np.array([1.0, np.inf])), "field 'prediction': not storable as JSON"),
    (_row(1, prediction=object()), "not storable as JSON"),
    (_row(1, contributions=[1, 2]), "field 'contributions' must be a dict"),
    (_row(1, input_name="x" * 2000), "at most 1024"),
    (_row(None), "field 'sample_id': expected text"),
    ("not a dict", "expected a dict, found str"),
])
def test_bad_prediction_rows_are_rejected(trail, row, message):
    with pytest.raises(AuditError, match=message):
        trail.record_predictions([row])


def test_bad_reviews_are_rejected(trail):
    with pytest.raises(AuditError, match="verdict must be one of correct, wrong, unsure, found 'maybe'"):
        trail.record_review("ckpt-1", SHA, 1, "maybe", reviewer="ann")
    with pytest.raises(AuditError, match=f"expected at most {MAX_COMMENT_CHARS}"):
        trail.record_review("ckpt-1", SHA, 1, "wrong", "x" * (MAX_COMMENT_CHARS + 1), reviewer="ann")
    with pytest.raises(AuditError, match="SHA-256"):
        trail.record_review("ckpt-1", "not-a-hash", 1, "wrong", reviewer="ann")
    # no default verdict and no anonymous review: an untouched form records nothing
    with pytest.raises(AuditError, match="no verdict chosen"):
        trail.record_review("ckpt-1", SHA, 1, None, reviewer="ann")
    for blank in ("", "   "):
        with pytest.raises(AuditError, match="no reviewer"):
            trail.record_review("ckpt-1", SHA, 1, "correct", "ok", reviewer=blank)
    assert trail.count("reviews") == 0
    assert trail.record_review("ckpt-1", SHA, 1, "wrong", "x" * MAX_COMMENT_CHARS, reviewer="ann") == 1


def test_export_csv_matches_and_is_atomic(trail, tmp_path):
    trail.record_predictions([_row(i, prediction=[i / 4, -i], flags={"ood": i > 1}) for i in range(4)])
    trail.record_review("ckpt-1", SHA, 2, "wrong", 'a comment, with "quotes"\nand a newline', reviewer="bo")
    out = tmp_path / "exports" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("old content")
    assert trail.export_csv(out) == 4
    exported = pd.read_csv(out, dtype=str, keep_default_na=False)
    stored = trail.predictions(decode=False).map(lambda v: "" if v is None else str(v))
    pd.testing.assert_frame_equal(exported, stored, check_dtype=False)
    assert exported.loc[3, "prediction"] == "[0.75,-3]"
    assert trail.export_csv(out.with_name("reviews.csv"), table="reviews") == 1
    reviews = pd.read_csv(out.with_name("reviews.csv"))
    assert reviews.loc[0, "comment"] == 'a comment, with "quotes"\nand a newline'
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv", "reviews.csv"]  # no temp files
    assert trail.export_csv(tmp_path / "test-only.csv", split="nope") == 0


@pytest.mark.parametrize("sql", [
    ("REPLACE INTO predictions (id, created_at, source, checkpoint_fingerprint, input_sha256, sample_id, "
    "prediction) VALUES (1, 'x', 'cli', 'forged', '{sha}', '1', '9')"),
    ("INSERT OR REPLACE INTO reviews (id, created_at, checkpoint_fingerprint, input_sha256, sample_id, verdict) "
    "VALUES (1, 'x', 'ckpt-1', '{sha}', '1', 'correct')"),
    ("INSERT INTO reviews (id, created_at, checkpoint_fingerprint, input_sha256, sample_id, verdict) "
    "VALUES (1, 'x', 'ckpt-1', '{sha}', '1', 'correct') ON CONFLICT(id) DO UPDATE SET verdict = 'correct'"),
])
@pytest.mark.parametrize("recursive", [False, True])
def test_replace_and_upsert_are_refused(trail, sql, recursive):
    # REPLACE deletes the conflicting row without firing DELETE triggers (unless recursive triggers are
    # on); the BEFORE INSERT trigger refuses it either way.
    trail.record_predictions([_row(1)])
    trail.record_review("ckpt-1", SHA, 1, "wrong", "sarcasm", reviewer="ann")
    conn = _raw(trail)
    conn.execute(f"PRAGMA recursive_triggers = {'ON' if recursive else 'OFF'}")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql.format(sha=SHA))
    conn.close()
    assert trail.predictions().iloc[0]["checkpoint_fingerprint"] == "ckpt-1"
    assert trail.reviews().iloc[0]["verdict"] == "wrong"
    trail.record_review("ckpt-1", SHA, 1, "correct", "second look", reviewer="ann")  # appending still works
    assert list(trail.reviews()["verdict"]) == ["wrong", "correct"]


def test_unwritable_database_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "sub").write_text("a file where a folder is expected")
    with pytest.raises(AuditError, match="sub/audit.sqlite3: the audit trail's folder cannot be created"):
        AuditTrail(tmp_path / "sub" / "audit.sqlite3")
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(tmp_path / "sub" / "audit.sqlite3"))
    with pytest.raises(AuditError, match="set DECALIGN_AUDIT_DB to a writable file"):
        default_audit_path()
    (tmp_path / "folder.sqlite3").mkdir()  # a folder where the database file should be
    with pytest.raises(AuditError, match="folder.sqlite3: the audit trail cannot be opened"):
        AuditTrail(tmp_path / "folder.sqlite3")


def test_export_is_formula_safe_read_back_with_the_csv_module(trail, tmp_path):
    ids = ["=HYPERLINK(\"http://x\")", "@SUM(1+1)", "+cmd|' /C calc'!A0", "x\r=1+1", "\t=1", "-2+3", "-3", "ok"]
    trail.record_predictions([_row(i) for i in ids])
    trail.export_csv(tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sample_id"] for r in rows] == [
        "'=HYPERLINK(\"http://x\")", "'@SUM(1+1)", "'+cmd|' /C calc'!A0", "x\r=1+1", "'\t=1", "'-2+3", "-3", "ok"]
    raw = (tmp_path / "p.csv").read_bytes()
    assert b'"x\r=1+1"' in raw  # a bare CR inside a cell is quoted, so no line starts with =1+1
    assert not any(line.lstrip(b"\r\n").startswith((b"=", b"@", b"+")) for line in raw.split(b"\n"))


def test_export_defuses_spreadsheet_formulas(trail, tmp_path):
    trail.record_review("ckpt-1", SHA, -3, "wrong", "=HYPERLINK(\"http://x\")", reviewer="@bob")
    trail.export_csv(tmp_path / "r.csv", table="reviews")
    row = pd.read_csv(tmp_path / "r.csv", dtype=str).iloc[0]
    assert row["comment"] == "'=HYPERLINK(\"http://x\")"
    assert row["reviewer"] == "'@bob"
    assert row["sample_id"] == "-3"  # a number is left alone


def test_env_var_path_is_honoured(tmp_path, monkeypatch):
    target = tmp_path / "custom" / "dir" / "trail.db"
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(target))
    assert default_audit_path() == target
    assert target.parent.is_dir()
    AuditTrail().record_predictions([_row(1)])
    assert target.is_file() and AuditTrail(target).count() == 1


def test_xdg_and_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("DECALIGN_AUDIT_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_audit_path() == tmp_path / "xdg" / "decalign-studio" / "audit.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "decalign-studio" / "audit.sqlite3"
    assert default_audit_path() == expected and expected.parent.is_dir()


def test_not_a_database_is_a_clear_error(tmp_path):
    bogus = tmp_path / "notes.sqlite3"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="notes.sqlite3: not an SQLite database"):
        AuditTrail(bogus)


def test_foreign_schema_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE predictions (x INTEGER)")
    with pytest.raises(AuditError, match="table 'predictions' has columns"):
        AuditTrail(path)


def _write_predictions(path, worker, n_rows, batch, barrier):
    """Child process: once every writer is ready, append rows in small transactions."""
    trail = AuditTrail(path)
    barrier.wait(BARRIER_S)
    for start in range(0, n_rows, batch):
        trail.record_predictions(
            [_row(f"{worker}-{i}", checkpoint_fingerprint=f"worker-{worker}") for i in range(start, start + batch)]
        )


def test_concurrent_writers(trail):
    ctx = mp.get_context("spawn")  # nothing inherited: each process opens its own connections
    barrier = ctx.Barrier(5)  # the 4 writers and this process start together, after spawn's imports
    go = threading.Event()
    procs = [ctx.Process(target=_write_predictions, args=(str(trail.path), w, 200, 5, barrier)) for w in range(4)]
    for proc in procs:
        proc.start()
    errors = []

    def review(thread):
        go.wait(BARRIER_S)
        try:
            for i in range(60):
                trail.record_review(f"worker-{thread}", SHA, f"{thread}-{i}", "wrong", f"t{thread}", reviewer="t")
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread that hit it
            errors.append((thread, exc))

    threads = [threading.Thread(target=review, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    barrier.wait(BARRIER_S)
    go.set()
    for proc in procs:
        proc.join(BARRIER_S)
    for thread in threads:
        thread.join(BARRIER_S)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert errors == []
    assert trail.count() == 800
    assert [trail.count(checkpoint_fingerprint=f"worker-{w}") for w in range(4)] == [200] * 4
    assert trail.predictions()["sample_id"].nunique() == 800
    assert trail.count("reviews") == 120 and trail.count("reviews", comment="t1") == 60
    with _raw(trail) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
