"""The code's layout as the README's map says: no module imports a higher layer, and every module is on it.

The layer table is the README's "How the code is laid out" section, the one place that names each
package's layer: a new top-level module of ``decalign/`` joins a row there (a one-line change), or the
test below names it. Every import counts, also those inside functions (lazy imports are still
dependencies).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## How the code is laid out"


def readme_layers() -> dict[str, int]:
    """``{"decalign/train/": 3, "decalign/atomic.py": 0, "app/": 7, ...}`` from the README's map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    layers = {}
    for line in text[start:end if end >= 0 else None].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for path in re.findall(r"`([^`]+)`", cells[1]):
                layers[path] = int(cells[0])
    return layers


LAYERS = readme_layers()


def component(module: str) -> str:
    """The map's entry a dotted module belongs to: ``decalign.train.reference`` -> ``decalign/train/``."""
    parts = module.split(".")
    if parts[0] == "app":
        return "app/"
    if len(parts) == 1:
        return "decalign/__init__.py"
    package = ROOT / "decalign" / parts[1]
    return f"decalign/{parts[1]}/" if package.is_dir() else f"decalign/{parts[1]}.py"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if (ROOT / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").is_file()]
    return found


def source_files() -> list[Path]:
    return sorted([*(ROOT / "decalign").rglob("*.py"), *(ROOT / "app").rglob("*.py")])


def test_the_readme_map_has_every_layer():
    assert sorted(set(LAYERS.values())) == list(range(8)), LAYERS
    assert LAYERS["decalign/data/"] == 0 and LAYERS["decalign/model/"] == 1 and LAYERS["app/"] == 7


def test_every_module_is_on_the_map():
    missing = sorted({component(module_name(p)) for p in source_files()} - set(LAYERS))
    assert not missing, (f"{missing} are in no layer of the README's map; add each to the row of its layer "
                         f"in the section {SECTION!r}")


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_goes_up(path):
    own = LAYERS[component(module_name(path))]
    upward = []
    for line, target in imported_modules(path):
        root = target.split(".")[0]
        if root == "streamlit" and not module_name(path).startswith("app"):
            upward.append(f"line {line}: {target} (decalign/ never imports Streamlit)")
        if root not in ("decalign", "app"):
            continue
        layer = LAYERS[component(target)]
        if layer > own:
            upward.append(f"line {line}: {target} (layer {layer}) from layer {own}")
    assert not upward, f"{path.relative_to(ROOT)} imports upward: " + "; ".join(upward)


def test_the_checker_sees_upward_and_lazy_imports():
    # The checker itself: relative imports inside a function are found and resolved to their layer.
    probe = ROOT / "decalign" / "model" / "probe.py"
    source = "def f():\n    from ..train import trainer\n    from . import output\n    import app.session\n"
    found = imported_modules(probe, source)
    assert {(2, "decalign.train"), (2, "decalign.train.trainer"), (3, "decalign.model"),
            (3, "decalign.model.output"), (4, "app.session")} <= set(found)
    assert [LAYERS[component(m)] for _, m in found] == [3, 3, 1, 1, 7]


def test_session_keys_are_written_in_one_place():
    # Views and the sidebar call app.session's functions; only that module touches st.session_state.
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py")
                 if p.name != "session.py" and "session_state" in p.read_text(encoding="utf-8")]
    assert not offenders, f"{offenders} use st.session_state directly; add a named function to app/session.py"


def test_charts_are_shown_in_one_place():
    # Every chart goes through app.charts.show (drawn once, in Streamlit's look); the hidden empty chart that
    # makes a new browser load the chart code early (app/prefetch.py) is never seen.
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py")
                 if p.name not in ("charts.py", "prefetch.py") and "plotly_chart(" in p.read_text(encoding="utf-8")]
    assert not offenders, f"{offenders} call st.plotly_chart directly; show charts with app.charts.show"
