"""Untrusted text made inert: formula-safe CSV (read back with the csv module), Markdown and plotly escaping."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pandas as pd
import pytest

from decalign.safe_output import csv_cell, frame_csv, markdown_text, plotly_text, write_csv

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3", "\t=1", "\r=1",
           "\n=1", "\uff1d1+1", "a\r=1+1", "x\ny", "plain", "-3", "+4.5", "1e5", "-inf", "", "=", "'quoted"]


def _read_back(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_formula_cells_are_prefixed_numbers_kept():
    out = io.StringIO(newline="")
    write_csv(out, ["id", "value"], [[h, -1.5] for h in HOSTILE] + [[np.str_("=np"), np.float32(-2.0)]])
    rows = _read_back(out.getvalue())
    assert rows[0] == ["id", "value"] and len(rows) == len(HOSTILE) + 2  # CR and LF inside a cell stay in it
    for original, (cell, value) in zip([*HOSTILE, "=np"], rows[1:]):
        formula = original[:1] in "=+-@\t\r\n\uff1d" and re.fullmatch(r"[+-]?\d+(\.\d*)?([eE]\d+)?", original) is None
        assert cell == ("'" + original if formula and original else original), original
        assert value in ("-1.5", "-2.0")  # a negative number is a number
    records = out.getvalue().split("\r\n")[1:]  # a bare CR or LF is inside a quoted cell, never a record end
    first_cells = [line.split(",")[0] for line in records if line and line[0] in "=+-@"]
    assert all(re.fullmatch(r"[+-]\d+(\.\d*)?", cell) for cell in first_cells), first_cells


def test_csv_cell_leaves_non_text_alone():
    assert csv_cell(-3) == -3 and csv_cell(-0.5) == -0.5 and csv_cell(None) is None and csv_cell(True) is True


def test_frame_csv_is_formula_safe_and_keeps_missing_values_empty():
    frame = pd.DataFrame({"id": ["=1+1", "b\r=2"], "prediction": [-0.25, np.nan],
                          "label": pd.array([1, None], dtype="Int64")})
    rows = _read_back(frame_csv(frame))
    assert rows == [["id", "prediction", "label"], ["'=1+1", "-0.25", "1"], ["b\r=2", "", ""]]


@pytest.mark.parametrize("text", ["![t](http://127.0.0.1:9/x)", "<img src=http://x/y>", "[a](javascript:x)",
                                  "**bold** _it_ `code` $x^2$ :red[c] # head", "a\\b", "1. list\n- item"])
def test_markdown_text_escapes_every_markdown_and_html_character(text):
    escaped = markdown_text(text)
    assert re.sub(r"\\(.)", r"\1", escaped) == text  # nothing lost
    unescaped = re.sub(r"\\.", "", escaped)
    assert not set(unescaped) & set("!\\`*_{}[]()#+-.|<>~:$&")  # every special character is escaped


def test_plotly_text_escapes_tags():
    assert plotly_text("<a href='x'>&</a>") == "&lt;a href='x'&gt;&amp;&lt;/a&gt;"
