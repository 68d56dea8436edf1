"""Every file of the hostile corpus, through the dashboard's loading functions and through the CLI.

A refused case must end in one clear line naming the file (a DataError/CheckpointError for the
dashboard, exit code 2 and ``decalign: error: ...`` for the CLI), the parsing child must have stayed
small (its own peak memory, measured in the child), and nothing may be left in the temporary folder or
written next to the file. A merely unusual case must load.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from decalign.checkpoint import CheckpointError, ModelCard, load_model_zip
from decalign.cli import main
from decalign.data import DataError
from tests.hostile.corpus import Case, all_cases
from tests.hostile.helpers import listing

CASES = all_cases()
MAX_CHILD_PEAK = 160 << 20  # Python + numpy is about 30 MiB; the largest case (a 3.5 MB memo flood) 75 MiB
ROOT = Path(__file__).resolve().parents[2]


def _load_like_the_dashboard(case: Case, data: bytes, card: ModelCard):
    """The functions the sidebar calls for an upload (``app.loaders`` caches them)."""
    from app import sidebar

    if case.kind == "data":
        return sidebar.load_upload(data, case.filename, card)[0]
    return load_model_zip(data, case.filename)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dashboard_loading(case, valid_run, private_tmp):
    card = ModelCard.from_dict(__import__("json").loads((valid_run / "card.json").read_text()))
    data = case.make()
    if case.outcome == "loads":
        loaded = _load_like_the_dashboard(case, data, card)
        if case.kind == "data":
            assert loaded.report.parser_peak_rss_bytes < MAX_CHILD_PEAK
    else:
        with pytest.raises((DataError, CheckpointError)) as caught:
            _load_like_the_dashboard(case, data, card)
        message = str(caught.value)
        assert "\n" not in message and "Traceback" not in message
        assert message.startswith(case.filename), message
        for word in case.says:
            assert word in message, f"{word!r} not in {message!r}"
        report = getattr(caught.value.__cause__, "report", None)
        if report is not None and report.peak_rss_bytes is not None:
            assert report.peak_rss_bytes < MAX_CHILD_PEAK
    assert listing(private_tmp) == set()  # the sandbox's folder is gone


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli(case, valid_run, valid_data, private_tmp, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / case.filename).write_bytes(case.make())
    before = listing(tmp_path)
    if case.kind == "data":
        args = ["eval", "--checkpoint", str(valid_run), "--data", case.filename]
    else:
        args = ["eval", "--checkpoint", case.filename, "--data", str(valid_data)]
    code = main(args)
    err = capsys.readouterr().err
    if case.outcome == "loads":
        assert code == 0, err
    else:
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("decalign: error: "), err
        assert case.filename in err
    assert listing(tmp_path) == before  # nothing written beside the file or in the temporary folder
    assert not (tmp_path.parent / "card.json").exists() and not (Path("/tmp") / "decalign-hostile-pwned").exists()


HEADLINE = ["object-dtype-scalar", "object-dtype-id", "bytearray-3gib", "shared-lists-1000",
            "card-num-layers-1e6", "weights-declared-1-9gib"]


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADLINE)
def test_cli_process_exits_2_with_one_line(name, valid_run, valid_data, tmp_path):
    """The issue's headline cases in a real ``decalign`` process (one segfaulted with exit 139)."""
    case = next(c for c in CASES if c.name == name)
    path = tmp_path / case.filename
    path.write_bytes(case.make())
    target = ["--checkpoint", str(valid_run), "--data", str(path)] if case.kind == "data" else \
        ["--checkpoint", str(path), "--data", str(valid_data)]
    proc = subprocess.run([sys.executable, "-m", "decalign", "eval", *target], capture_output=True, text=True, check=False,
                          timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("decalign: error: "), proc.stderr
