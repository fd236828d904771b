"""Subject-wise splits: train/validation/test and k-fold, seeded.

Windows of one night are strongly correlated, so splitting windows at random leaks
a subject between training and evaluation. Every split here assigns whole subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SleepnasError

_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SubjectSplit:
    """Disjoint sets of subject ids for training, validation and test.

    Attributes
    ----------
    train, val, test : tuple of str
        Sorted subject ids; ``val`` or ``test`` may be empty.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        for part in _PARTS:
            object.__setattr__(self, part, tuple(sorted(str(s) for s in getattr(self, part))))
        seen: dict[str, str] = {}
        for part in _PARTS:
            for subject in getattr(self, part):
                if subject in seen:
                    raise SleepnasError(
                        f"subject {subject!r} is in both the {seen[subject]} and the {part} "
                        f"split: a subject belongs to one split only"
                    )
                seen[subject] = part

    def select(self, part: str, window_subjects: np.ndarray) -> np.ndarray:
        """Return the indices of the windows whose subject is in split ``part``."""
        if part not in _PARTS:
            raise SleepnasError(f"invalid split {part!r}: expected one of {', '.join(_PARTS)}")
        return np.flatnonzero(np.isin(window_subjects, list(getattr(self, part))))

    def to_dict(self) -> dict[str, list[str]]:
        return {part: list(getattr(self, part)) for part in _PARTS}

    @classmethod
    def from_dict(cls, data: dict) -> SubjectSplit:
        """Build a split from `to_dict` output; other keys or a missing part raise."""
        if not isinstance(data, dict) or set(data) != set(_PARTS):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise SleepnasError(f"invalid subject split {keys}: expected the keys "
                                f"{', '.join(_PARTS)}")
        return cls(**{part: tuple(data[part]) for part in _PARTS})


def _unique_subjects(subject_ids: Sequence[str]) -> list[str]:
    subjects = sorted({str(s) for s in subject_ids})
    if not subjects:
        raise SleepnasError("cannot split an empty list of subjects")
    return subjects


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise SleepnasError(f"invalid {name} {value!r}: expected a fraction in [0, 1)")


def split_subjects(subject_ids: Sequence[str], *, val_fraction: float = 0.15,
                   test_fraction: float = 0.15, seed: int = 0) -> SubjectSplit:
    """Split subjects at random into train, validation and test sets.

    Each non-zero fraction gets at least one subject, rounded from the fraction of the
    number of subjects. Train keeps the rest and must keep at least one.

    Parameters
    ----------
    subject_ids : sequence of str
        Subject ids; duplicates are ignored, so per-window subjects may be passed.
    val_fraction, test_fraction : float
        Fractions of subjects in the validation and test sets, each in [0, 1).
    seed : int
        Seed of the shuffle; the same subjects and seed give the same split.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    subjects = _unique_subjects(subject_ids)
    n = len(subjects)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise SleepnasError(
            f"cannot split {n} subjects into {n_val} validation, {n_test} test and at least "
            f"one training subject: use more subjects or smaller fractions"
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [subjects[i] for i in order]
    return SubjectSplit(train=tuple(shuffled[n_test + n_val:]),
                        val=tuple(shuffled[n_test:n_test + n_val]),
                        test=tuple(shuffled[:n_test]))


def kfold_subjects(subject_ids: Sequence[str], k: int, seed: int = 0, *,
                   val_fraction: float = 0.15) -> list[SubjectSplit]:
    """Split subjects into ``k`` folds; fold ``i`` is the test set of the ``i``-th split.

    Every subject is in exactly one test set. The validation set of each split is
    drawn (seeded) from the subjects outside its test fold.

    Parameters
    ----------
    subject_ids : sequence of str
        Subject ids; duplicates are ignored.
    k : int
        Number of folds, from 2 to the number of subjects.
    seed : int
        Seed of the shuffles.
    val_fraction : float
        Fraction of the remaining subjects used for validation in each split.
    """
    _check_fraction("val_fraction", val_fraction)
    subjects = _unique_subjects(subject_ids)
    n = len(subjects)
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
        raise SleepnasError(f"invalid number of folds {k!r}: expected an integer from 2 to "
                            f"the number of subjects ({n})")
    rng = np.random.default_rng(seed)
    shuffled = [subjects[i] for i in rng.permutation(n)]
    folds = [list(fold) for fold in np.array_split(np.array(shuffled, dtype=object), k)]

    splits = []
    for i, test in enumerate(folds):
        rest = [s for j, fold in enumerate(folds) if j != i for s in fold]
        n_val = max(1, round(len(rest) * val_fraction)) if val_fraction > 0 else 0
        if n_val >= len(rest):
            raise SleepnasError(
                f"cannot keep {n_val} validation and at least one training subject out of "
                f"{len(rest)} in a {k}-fold split: use fewer folds or a smaller val_fraction"
            )
        rest = [rest[j] for j in rng.permutation(len(rest))]
        splits.append(SubjectSplit(train=tuple(rest[n_val:]), val=tuple(rest[:n_val]),
                                   test=tuple(test)))
    return splits
