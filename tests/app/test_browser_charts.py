"""In Chromium: a chart shown by ``app.charts.show`` looks exactly as Streamlit's own theme draws it, in light and
dark, and the browser draws it once (Streamlit's own element draws every chart twice).

The page is tests/app/chart_look_app.py: the same figures through ``st.plotly_chart`` (``?via=streamlit``) or
through ``show`` (``?via=show``). Plotly's resolved layout and traces (``_fullLayout``, ``_fullData``) are
compared, with the plot area's size in pixels, so a tick, grid line or margin that differs fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_utils import free_port, launch_chromium, require_browser, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]
APP = Path(__file__).with_name("chart_look_app.py")
CHARTS = 9  # len(chart_look_app.figures())
TIMEOUT = 90_000

# Plotly's resolved figure of every chart, in page order. Internal keys are skipped, but for the plot area's
# size; arrays longer than 12 are compared by length. Streamlit's theme bolds a title with <b> tags, show with
# a bold font, so the title's text and weight are left out.
RESOLVED_JS = """() => {
  const plainly = (value, depth) => {
    if (depth > 6 || value === null || typeof value !== 'object') return typeof value === 'function' ? 'fn' : value;
    if (value instanceof Node) return 'node';
    if (Array.isArray(value) || ArrayBuffer.isView(value))
      return value.length > 12 ? 'array of ' + value.length : Array.from(value).map(v => plainly(v, depth + 1));
    const out = {};
    for (const key of Object.keys(value))
      if (!key.startsWith('_') || key === '_size') out[key] = plainly(value[key], depth + 1);
    return out;
  };
  return [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const layout = plainly(gd._fullLayout, 0);
    // newshape: the colour of shapes drawn with plotly's drawing tools, which no chart offers (under the theme's
    // template plotly picks it against a white background even in dark mode).
    for (const key of ['template', 'datarevision', 'clickmode', 'dragmode', 'hovermode', 'newshape'])
      delete layout[key];
    delete layout.title.text; delete layout.title.font.weight;
    // An axis's ticks are placed while drawing (dtick, tick0), and after a restyle without a new drawing plotly
    // leaves an automatic range at its default in "range": the range drawn, and converted with, is "_rl".
    for (const key of Object.keys(layout).filter(key => /^[xy]axis[0-9]*$/.test(key))) {
      delete layout[key].dtick; delete layout[key].tick0; layout[key].range = gd._fullLayout[key]._rl;
    }
    return {layout, data: gd._fullData.map(trace => { const t = plainly(trace, 0); delete t.uid; return t; })};
  });
}"""

# Counts the full drawings of every chart after its first: plotly announces each with plotly_beforeplot (the
# first one happens before the chart's element can be hooked). Installed before the page's own scripts.
COUNT_DRAWS_JS = """(() => {
  window.redraws = 0;
  const hook = gd => { if (gd.hooked || !gd.on) return; gd.hooked = true;
                       gd.on('plotly_beforeplot', () => { window.redraws += 1; }); };
  new MutationObserver(() => document.querySelectorAll('.js-plotly-plot').forEach(hook))
    .observe(document, {childList: true, subtree: true, attributes: true, attributeFilter: ['class']});
})()"""


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port, script=APP)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def _drawn(page, url: str) -> None:
    """Open ``url`` and wait until every chart is drawn and the page has settled."""
    page.goto(url)
    page.wait_for_function("[...document.querySelectorAll('.js-plotly-plot')]"
                           f".filter(chart => chart.querySelector('.main-svg')).length === {CHARTS}", timeout=TIMEOUT)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT)
    page.wait_for_timeout(2000)  # Streamlit's re-theme and plotly's redraws come after the first drawing


def _differences(expected, found, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        return [d for key in sorted(set(expected) | set(found))
                for d in _differences(expected.get(key), found.get(key), f"{path}.{key}")]
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        return [d for i, (e, f) in enumerate(zip(expected, found)) for d in _differences(e, f, f"{path}[{i}]")]
    return [] if expected == found else [f"{path}: {expected!r} != {found!r}"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_shown_charts_look_as_streamlits_theme_draws_them(server, scheme):
    sync = require_browser()
    with sync.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
            resolved = {}
            for via in ("streamlit", "show"):
                _drawn(page, f"{server}/?via={via}")
                resolved[via] = page.evaluate(RESOLVED_JS)
        finally:
            browser.close()
    assert len(resolved["show"]) == len(resolved["streamlit"]) == CHARTS
    differences = [f"chart {i}: {d}" for i, (theirs, ours) in enumerate(zip(resolved["streamlit"], resolved["show"]))
                   for d in _differences(theirs, ours)]
    assert differences == [], "\n".join(differences)
    backgrounds = {chart["layout"]["paper_bgcolor"] for chart in resolved["show"]}
    assert backgrounds == ({"#FFFFFF"} if scheme == "light" else {"#171614"})


def test_shown_charts_are_drawn_once(server):
    sync = require_browser()
    with sync.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            redraws = {}
            for via in ("streamlit", "show", "show-select", "show-lasso", "show-box", "show-columns"):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.add_init_script(COUNT_DRAWS_JS)
                _drawn(page, f"{server}/?via={via}")
                if via == "streamlit":  # its redraws are expected: wait for them, however busy the machine
                    page.wait_for_function(f"window.redraws >= {CHARTS}", timeout=TIMEOUT)
                redraws[via] = page.evaluate("window.redraws")
                page.close()
        finally:
            browser.close()
    assert redraws["streamlit"] >= CHARTS  # Streamlit's own element: each chart drawn again in full
    assert redraws["show"] == 0
    assert redraws["show-columns"] == 0  # three to a row: each column a whole number of pixels wide
    # With selections on: no click or drag mode for Streamlit's chart to change after the first drawing.
    assert {via: redraws[via] for via in ("show-select", "show-lasso", "show-box")} == dict.fromkeys(
        ("show-select", "show-lasso", "show-box"), 0)
