"""Subject-wise train/validation/test and k-fold splits."""

from __future__ import annotations

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.splits import SubjectSplit, kfold_subjects, split_subjects

SUBJECTS = [f"SC4{i:02d}" for i in range(20)]


def test_split_is_disjoint_and_complete():
    split = split_subjects(SUBJECTS, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert len(split.test) == 3
    assert len(split.val) == 3
    assert len(split.train) == 14
    assert not set(split.train) & set(split.val)
    assert not set(split.train) & set(split.test)
    assert not set(split.val) & set(split.test)
    assert sorted(split.train + split.val + split.test) == SUBJECTS


def test_split_is_seeded():
    assert split_subjects(SUBJECTS, seed=1) == split_subjects(list(reversed(SUBJECTS)), seed=1)
    assert split_subjects(SUBJECTS, seed=1) != split_subjects(SUBJECTS, seed=2)


def test_split_accepts_per_window_subjects():
    per_window = np.repeat(SUBJECTS[:5], 100)
    split = split_subjects(per_window, val_fraction=0.2, test_fraction=0.2)
    assert sorted(split.train + split.val + split.test) == SUBJECTS[:5]


def test_small_cohort_gets_one_each():
    split = split_subjects(SUBJECTS[:3])
    assert (len(split.train), len(split.val), len(split.test)) == (1, 1, 1)
    with pytest.raises(SleepnasError, match="cannot split 2 subjects"):
        split_subjects(SUBJECTS[:2])
    assert split_subjects(SUBJECTS[:2], val_fraction=0.0, test_fraction=0.5).val == ()


def test_split_rejects_bad_fractions():
    with pytest.raises(SleepnasError, match="invalid val_fraction 1.5"):
        split_subjects(SUBJECTS, val_fraction=1.5)
    with pytest.raises(SleepnasError, match="empty list"):
        split_subjects([])


def test_kfold_tests_each_subject_once():
    splits = kfold_subjects(SUBJECTS, 5, seed=0)
    assert len(splits) == 5
    tested = [s for split in splits for s in split.test]
    assert sorted(tested) == SUBJECTS
    for split in splits:
        assert len(split.test) == 4
        assert len(split.val) == 2  # 15 % of the 16 others
        assert sorted(split.train + split.val + split.test) == SUBJECTS
    assert kfold_subjects(SUBJECTS, 5, seed=0) == splits
    assert kfold_subjects(SUBJECTS, 5, seed=1) != splits


def test_kfold_rejects_bad_k():
    with pytest.raises(SleepnasError, match="invalid number of folds 1"):
        kfold_subjects(SUBJECTS, 1)
    with pytest.raises(SleepnasError, match="invalid number of folds 21"):
        kfold_subjects(SUBJECTS, 21)
    with pytest.raises(SleepnasError, match="cannot keep 1 validation"):
        kfold_subjects(SUBJECTS[:2], 2)


def test_subject_in_two_parts_rejected():
    with pytest.raises(SleepnasError, match="'SC400' is in both the train and the test split"):
        SubjectSplit(train=("SC400", "SC401"), val=(), test=("SC400",))


def test_round_trip_and_select():
    split = split_subjects(SUBJECTS, seed=0)
    assert SubjectSplit.from_dict(split.to_dict()) == split
    window_subjects = np.array(["SC400", "SC401", "SC400", split.test[0]])
    rows = split.select("test", window_subjects)
    assert window_subjects[rows].tolist() == [split.test[0]] * len(rows)
    with pytest.raises(SleepnasError, match="invalid split 'dev'"):
        split.select("dev", window_subjects)
    with pytest.raises(SleepnasError, match="expected the keys train, val, test"):
        SubjectSplit.from_dict({"train": []})
