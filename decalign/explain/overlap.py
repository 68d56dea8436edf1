"""How well modalities overlap in a feature space, and how well classes separate there: two numbers a
joint view can state instead of leaving the reader to judge a scatter plot.

Both are cross-validated balanced accuracies of a k-nearest-neighbour classifier (scikit-learn's
``KNeighborsClassifier``, Euclidean, the metric the 2-D views' neighbourhoods use):

- **modality overlap**: the classifier guesses which modality a row came from. Near chance (1 / M) the
  modalities share one region; near 1 each sits on its own island.
- **class separation**: the classifier guesses the sample's label (the class, or for regression the sign
  of the label). Far above chance (1 / number of classes) the classes form separate groups.

Folds are grouped by sample (``GroupKFold``): the rows of one sample in every modality are held out
together, so no sample is judged by its own other-modality rows. Balanced accuracy (the mean per-class
recall) is used so unequal group sizes cannot fake a high score; its chance level is 1 / groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 10
FOLDS = 5
MAX_SAMPLES = 2000  # per modality; a seeded subsample above this keeps the numbers quick to compute


@dataclass(frozen=True)
class Separability:
    """A cross-validated balanced accuracy against its chance level."""

    accuracy: float  # balanced accuracy, held-out folds
    chance: float  # 1 / number of groups
    groups: int  # modalities or classes
    rows: int  # rows classified
    folds: int

    @property
    def above_chance(self) -> float:
        """Where the accuracy lies between chance (0) and perfect (1)."""
        return float((self.accuracy - self.chance) / (1 - self.chance)) if self.chance < 1 else 0.0


def modality_overlap(features: dict[str, np.ndarray], *, seed: int = 0, max_samples: int = MAX_SAMPLES
                     ) -> Separability:
    """How well a kNN classifier tells the modalities apart from ``features`` (modality -> (N, d), the
    same N samples in the same order and the same d in every modality)."""
    x, owner, sample = _stack(features, seed, max_samples)
    return _cross_validated(x, owner, sample)


def class_separation(features: dict[str, np.ndarray], labels: np.ndarray, *, seed: int = 0,
                     max_samples: int = MAX_SAMPLES) -> Separability | None:
    """How well a kNN classifier finds each row's label group (``labels``: (N,), one per sample, e.g.
    ``transport_view.label_groups``) from ``features`` (one or several modalities, stacked). None when
    fewer than two groups or too few samples."""
    x, _, sample = _stack(features, seed, max_samples)
    groups = np.asarray(labels)[sample]
    if len(np.unique(groups)) < 2:
        return None
    return _cross_validated(x, groups, sample)


def _stack(features: dict[str, np.ndarray], seed: int, max_samples: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of every modality stacked; which modality and which sample each row is."""
    if not features:
        raise ValueError("no features given")
    sizes = {m: np.shape(x) for m, x in features.items()}
    if len({s[0] for s in sizes.values()}) != 1 or len({s[1:] for s in sizes.values()}) != 1:
        raise ValueError(f"every modality needs the same (N, d); found {sizes}")
    n = next(iter(sizes.values()))[0]
    keep = np.arange(n)
    if n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    x = np.concatenate([np.asarray(f, dtype=np.float64)[keep] for f in features.values()])
    if not np.isfinite(x).all():
        raise ValueError("features contain non-finite values")
    owner = np.repeat(np.arange(len(features)), len(keep))
    return x, owner, np.tile(keep, len(features))


def _cross_validated(x: np.ndarray, target: np.ndarray, sample: np.ndarray) -> Separability | None:
    groups = len(np.unique(target))
    samples = len(np.unique(sample))
    folds = min(FOLDS, samples)
    if folds < 2 or groups < 2:
        return None
    # scikit-learn is imported here: its import costs about a second of the dashboard's cold start
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=max(1, min(NEIGHBOURS, len(x) * (folds - 1) // folds - 1)))
    predicted = cross_val_predict(classifier, x, target, groups=sample, cv=GroupKFold(n_splits=folds))
    return Separability(float(balanced_accuracy_score(target, predicted)), 1.0 / groups, groups, len(x), folds)


def overlap_sentence(overlap: Separability | None, separation: Separability | None, what: str = "labels") -> str:
    """One plain sentence per number: what the accuracy is, against chance, and what it means."""
    parts = []
    if overlap is not None:
        share = overlap.above_chance
        verdict = ("the modalities share one region (the alignment's goal)" if share < 0.25 else
                   "the modalities overlap only partly" if share < 0.75 else
                   "each modality sits in its own region: these spaces are not aligned")
        parts.append(f"Telling the {overlap.groups} modalities apart: balanced accuracy {overlap.accuracy:.2f} "
                     f"(chance {overlap.chance:.2f}), so {verdict}.")
    if separation is not None:
        share = separation.above_chance
        verdict = ("the groups are well separated" if share >= 0.75 else
                   "the groups are partly separated" if share >= 0.25 else "the groups are mixed")
        parts.append(f"Finding the {what} ({separation.groups} groups) from a point's neighbours: balanced "
                     f"accuracy {separation.accuracy:.2f} (chance {separation.chance:.2f}), so {verdict}.")
    return " ".join(parts)


NEGLIGIBLE = 0.1  # a change of the above-chance share smaller than this is called "barely"


def alignment_effect_sentence(with_alignment: Separability, without_alignment: Separability,
                              space: str = "the aligned common space") -> str:
    """What alignment did to the overlap of the modalities in ``space``, from the two models' numbers,
    said plainly, including when it did (almost) nothing."""
    a, b = with_alignment, without_alignment
    numbers = (f"a classifier tells the modalities apart with balanced accuracy {a.accuracy:.2f} with alignment "
               f"and {b.accuracy:.2f} without (chance {a.chance:.2f})")
    change = b.above_chance - a.above_chance  # positive: alignment made them harder to tell apart
    if abs(change) < NEGLIGIBLE:
        return f"Alignment barely changes how the modalities overlap in {space}: {numbers}."
    if change > 0:
        return f"With alignment the modalities overlap more in {space}: {numbers}."
    return f"With alignment the modalities overlap less in {space}: {numbers}."
