"""``python3 -m app``: the README's dashboard command."""

import subprocess
import sys

from browser_utils import ROOT


def test_help_is_printed_without_importing_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "app", "--help"], cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python3 -m app")
    assert "streamlit run" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "app.loaders" not in imported


def test_preload_imports_the_pages_and_reports_what_failed(monkeypatch):
    import app.__main__ as launcher

    monkeypatch.setattr(launcher, "_wait_for_server", lambda wait_s: None)
    assert launcher.preload(("json", "no_such_module_here")) == ["no_such_module_here"]
    assert set(launcher.PRELOAD) >= {"torch", "app.loaders", "app.views.overview", "app.views.embeddings"}
    assert launcher.preload() == []  # every name is a module that imports
