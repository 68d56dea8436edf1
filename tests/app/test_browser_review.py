"""End-to-end in Chromium: a reviewer's verdict and comment survive a restart of the dashboard server.

The first server gets a temporary ``DECALIGN_AUDIT_DB``; in the browser the test goes to the Sample page
through the navigation, picks a sample, records the verdict "wrong" with a unique comment and sees it in the
page's review history. That server is stopped (by PID), a new one is started on the same audit file, and a
fresh browser page must show the same comment and verdict for the same sample, on the Sample page and in the
Audit page's "Reviews" tab. The browser console must stay free of errors. Screenshots:
``test-artifacts/review_before_restart.png``, ``review_after_restart.png`` and ``review_audit_page.png``.
Never skipped in CI: without Chromium it fails.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from browser_utils import (
    ROOT,
    free_port,
    launch_chromium,
    require_browser,
    start_server,
    stop_server,
)

from decalign.audit import AuditTrail

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT = 30_000
SAMPLE_PAGE_TIMEOUT = 90_000  # the Sample page computes integrated gradients and attention on a cold server
# First columns of the Sample page's review history and of the Audit page's "Reviews" tab.
HISTORY_FIRST = "created_at"
TRAIL_FIRST = "id"
SAMPLE_INDEX = 3  # a sample other than the first, so the page's default choice cannot pass by chance




def _settle(page, heading: str, timeout: int = TIMEOUT) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible(timeout=timeout)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=timeout)


def _open(page, name: str, timeout: int = TIMEOUT) -> None:
    """Go to a page through the navigation (a deep link first probes a prefixed health URL and logs 404s)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()
    _settle(page, name, timeout)


def _choose_sample(page, index: int | None = None, sample_id: str | None = None) -> str:
    """Pick a sample in the Sample page's id selectbox, by position in the list or by id; returns the id."""
    from playwright.sync_api import expect

    box = page.locator(".st-key-sample_id input[role='combobox']")
    box.click()
    if sample_id is not None:
        box.fill(sample_id)  # the combobox filters its list by what is typed
        option = page.get_by_role("option", name=sample_id, exact=True)
    else:
        option = page.get_by_role("option").nth(index)
    expect(option).to_be_visible(timeout=TIMEOUT)
    chosen = option.inner_text().strip()
    option.click()
    expect(box).to_have_value(chosen, timeout=TIMEOUT)
    _settle(page, "Sample", SAMPLE_PAGE_TIMEOUT)
    return chosen


def _grid_rows(page, scope, first_column: str) -> list[dict[str, str]]:
    """The rows of the ``st.dataframe`` in ``scope`` whose first column is ``first_column``, as dicts by
    column name.

    The grid draws on a canvas; its text is in the page only in the grid's accessible table, which holds
    just the columns scrolled into view, so the grid is scrolled from left to right and the pieces merged.
    (CSS rather than ``get_by_role``: Playwright counts the table inside the canvas as hidden. The keys of
    ``st.dataframe`` do not reach the DOM, so the grid is found by its first column.)
    """
    from playwright.sync_api import expect

    # relative to each grid: a locator given to filter(has=...) is matched inside the filtered element
    first = page.locator('th[role="columnheader"][aria-colindex="1"]',
                         has_text=re.compile(f"^{re.escape(first_column)}$"))
    grids = scope.locator('[data-testid="stDataFrame"]')
    expect(grids.filter(has=first), f"one table whose first column is {first_column!r}").to_have_count(
        1, timeout=TIMEOUT)
    # pinned by position: once scrolled right, the grid's table no longer holds its first column
    index = grids.evaluate_all("(gs, name) => gs.findIndex(g => [...g.querySelectorAll("
                               "'th[aria-colindex=\"1\"]')].some(h => h.textContent.trim() === name))",
                               first_column)
    grid = grids.nth(index)
    grid.scroll_into_view_if_needed()
    scroller = grid.locator(".dvn-scroller")
    headers: dict[str, str] = {}
    cells: dict[tuple[str, str], str] = {}
    width, view = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
    for left in [*range(0, width, max(view // 2, 1)), width]:
        scroller.evaluate("(e, x) => { e.scrollLeft = x; }", left)
        page.wait_for_timeout(200)  # the grid redraws (and rewrites its table) on the next frames
        headers.update(grid.locator('th[role="columnheader"]').evaluate_all(
            "hs => Object.fromEntries(hs.map(h => [h.getAttribute('aria-colindex'), h.textContent.trim()]))"))
        for row, col, text in grid.locator('tbody td[role="gridcell"]').evaluate_all(
                "cs => cs.map(c => [c.parentElement.getAttribute('aria-rowindex'),"
                " c.getAttribute('aria-colindex'), c.textContent.trim()])"):
            cells[(row, col)] = text
    scroller.evaluate("e => { e.scrollLeft = 0; }")
    rows = sorted({r for r, _ in cells}, key=int)
    return [{headers.get(c, c): t for (r2, c), t in cells.items() if r2 == r} for r in rows]


def _expect_review(page, scope, first_column: str, comment: str,
                   sample_id: str | None = None) -> dict[str, str]:
    """Wait until the grid in ``scope`` starting with ``first_column`` has a row with the comment and the
    verdict "wrong" (and the sample id, when given); returns that row."""
    rows: list[dict[str, str]] = []
    for _ in range(20):
        rows = _grid_rows(page, scope, first_column)
        for row in rows:
            if row.get("comment") == comment and row.get("verdict") == "wrong" and (
                    sample_id is None or row.get("sample_id") == sample_id):
                return row
        page.wait_for_timeout(500)
    raise AssertionError(f"no row with verdict 'wrong', comment {comment!r} and sample {sample_id!r} in the "
                         f"grid starting with {first_column!r}: {rows}")


def _review_tab(page) -> None:
    """Open the Sample page's Review tab (the form and the sample's review history)."""
    page.get_by_role("tab", name="Review").click()


def _record_review(page, comment: str) -> None:
    from playwright.sync_api import expect

    _review_tab(page)
    form = page.locator('[data-testid="stForm"]')
    expect(form).to_have_count(1, timeout=TIMEOUT)
    expect(form).to_be_visible(timeout=TIMEOUT)
    form.scroll_into_view_if_needed()
    form.locator('[data-testid="stRadio"] label', has_text="wrong").click()
    expect(form.get_by_role("radio", name="wrong")).to_be_checked(timeout=TIMEOUT)
    form.get_by_label("Comment").fill(comment)
    form.get_by_label("Reviewer").fill("restart test")
    form.get_by_role("button", name="Record review").click()
    expect(page.get_by_text("Review recorded.")).to_be_visible(timeout=TIMEOUT)
    _settle(page, "Sample", SAMPLE_PAGE_TIMEOUT)


@contextmanager
def _serving(demo_dir: Path, audit_db: Path, runs: Path) -> Iterator[str]:
    """A fresh server process on ``audit_db``; yields its URL and stops it by its PID afterwards."""
    port = free_port()
    proc = start_server(port, env={"DECALIGN_DEMO_MODEL": str(demo_dir), "DECALIGN_AUDIT_DB": str(audit_db),
                                   "DECALIGN_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
    assert proc.poll() is not None, f"the server (pid {proc.pid}) is still running"


@contextmanager
def _page(browser, base: str, errors: list[str]):
    """A new tab on the app's root; closed before its server stops (a tab left open on a stopped server
    logs ERR_CONNECTION_REFUSED while it tries to reconnect), with a screenshot when something failed."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.on("console", lambda msg: errors.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    try:
        page.goto(base)
        _settle(page, "Overview")
        yield page
    except BaseException:
        with suppress(Exception):  # a failed screenshot must not hide the failure itself
            page.screenshot(path=str(ARTIFACTS / "review_failure.png"))
        raise
    finally:
        page.close()


def _screenshot(page, name: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=TIMEOUT)
    page.screenshot(path=str(ARTIFACTS / name))


def test_review_survives_a_server_restart(demo_dir, tmp_path):
    sync = require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "review_failure.png").unlink(missing_ok=True)
    audit_db = tmp_path / "audit.sqlite3"
    runs = tmp_path / "runs"
    comment = f"flagged by the restart test {uuid.uuid4()}"
    errors: list[str] = []
    with sync.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            with _serving(demo_dir, audit_db, runs) as base, _page(browser, base, errors) as page:
                _open(page, "Sample", SAMPLE_PAGE_TIMEOUT)
                sample_id = _choose_sample(page, index=SAMPLE_INDEX)
                _record_review(page, comment)
                row = _expect_review(page, page, HISTORY_FIRST, comment)
                assert row["reviewer"] == "restart test"
                _screenshot(page, "review_before_restart.png")
            # what the first server wrote, read straight from the file: exactly this one review
            reviews = AuditTrail(audit_db).reviews(limit=10)
            assert list(reviews["comment"]) == [comment]
            assert list(reviews["verdict"]) == ["wrong"] and list(reviews["sample_id"]) == [sample_id]

            with _serving(demo_dir, audit_db, runs) as base, _page(browser, base, errors) as page:
                _open(page, "Sample", SAMPLE_PAGE_TIMEOUT)
                assert _choose_sample(page, sample_id=sample_id) == sample_id
                _review_tab(page)
                row = _expect_review(page, page, HISTORY_FIRST, comment)
                assert row["reviewer"] == "restart test"
                _screenshot(page, "review_after_restart.png")
                _open(page, "Audit", 4 * TIMEOUT)
                page.get_by_role("tab", name="Reviews").click()
                # only the open tab: the Predictions tab also holds a grid whose first column is "id"
                reviews_tab = page.get_by_role("tabpanel", name="Reviews")
                _expect_review(page, reviews_tab, TRAIL_FIRST, comment, sample_id)
                # the verdict and comment columns into view for the screenshot
                reviews_tab.locator(".dvn-scroller").evaluate("e => { e.scrollLeft = e.scrollWidth; }")
                page.wait_for_timeout(300)
                _screenshot(page, "review_audit_page.png")
        finally:
            browser.close()
    assert not errors, "browser console errors:\n" + "\n".join(errors)
