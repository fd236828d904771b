"""The window store: building, reusing and rebuilding cached cohorts."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import sleepnas.runtime.store as store
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import find_recordings, load_recording_windows
from sleepnas.runtime.spec import WindowSpec
from sleepnas.runtime.store import load_cohort, store_key, summarize_recordings
from tests.edffiles import cassette_dir, write_psg  # noqa: F401  (fixture)

TRIM = 2.0


def _entries(cache):
    return sorted(p.name for p in (cache / "windows").iterdir() if p.is_dir())


def _forbid_reading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the EDF files were read again")
    monkeypatch.setattr(store, "load_recording_windows", fail)


def test_cohort_equals_recordings_read_one_by_one(cassette_dir, tmp_path):
    spec = WindowSpec()
    cohort = load_cohort(cassette_dir, spec, cache_dir=tmp_path / "cache", trim_wake_min=TRIM)
    assert isinstance(cohort.windows, np.memmap)
    assert cohort.windows.shape == (72, 7, 3000)
    assert cohort.subject_ids == ("SC400", "SC401")
    assert [r.name for r in cohort.recordings] == ["SC4001E0", "SC4002E0", "SC4011E0"]
    assert cohort.recording_index.tolist() == [0] * 24 + [1] * 24 + [2] * 24
    assert cohort.subjects.tolist() == ["SC400"] * 48 + ["SC401"] * 24
    for index, recording in enumerate(find_recordings(cassette_dir)):
        windows, labels, onsets = load_recording_windows(recording, spec, trim_wake_min=TRIM)
        rows = cohort.recording_index == index
        np.testing.assert_array_equal(cohort.windows[rows], windows)
        np.testing.assert_array_equal(cohort.labels[rows], labels)
        np.testing.assert_array_equal(cohort.onsets_s[rows], onsets)
    assert cohort.stage_counts() == {"W": 24, "N1": 6, "N2": 21, "N3": 12, "REM": 9}


def test_second_load_reads_no_edf(cassette_dir, tmp_path, monkeypatch):
    first = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    _forbid_reading(monkeypatch)
    second = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    assert second.path == first.path
    np.testing.assert_array_equal(second.windows, first.windows)
    np.testing.assert_array_equal(second.labels, first.labels)


def test_copied_folder_hits_same_entry(cassette_dir, tmp_path, monkeypatch):
    import shutil

    first = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    copy = tmp_path / "copy"
    shutil.copytree(cassette_dir, copy)
    _forbid_reading(monkeypatch)
    second = load_cohort(copy, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    assert second.path == first.path
    assert second.recordings[0].psg.is_relative_to(copy)


def test_key_depends_on_spec_trim_and_content(cassette_dir, tmp_path):
    recordings = find_recordings(cassette_dir)
    base = store_key(recordings, WindowSpec(), TRIM)
    assert store_key(recordings, WindowSpec(), TRIM) == base
    assert store_key(recordings, WindowSpec(scale=(1.0,) * 7, clip=5.0), TRIM) == base
    assert store_key(recordings, WindowSpec(scheme="rk7"), TRIM) != base
    assert store_key(recordings, WindowSpec(channels=("EEG Fpz-Cz",)), TRIM) != base
    assert store_key(recordings, WindowSpec(window_s=20.0), TRIM) != base
    assert store_key(recordings, WindowSpec(), 30.0) != base
    assert store_key(recordings[:2], WindowSpec(), TRIM) != base

    # Same size, same mtime, other content: the digest memo is keyed by mtime, so
    # bump it as any write does.
    psg = recordings[0].psg
    content = bytearray(psg.read_bytes())
    content[-10] ^= 0xFF
    stat = psg.stat()
    psg.write_bytes(bytes(content))
    os.utime(psg, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert store_key(recordings, WindowSpec(), TRIM) != base


@pytest.mark.parametrize("damage", ["truncate_windows", "drop_meta", "bad_meta", "bad_labels"])
def test_corrupt_entry_rebuilt_with_warning(cassette_dir, tmp_path, caplog, damage):
    cache = tmp_path / "c"
    first = load_cohort(cassette_dir, WindowSpec(), cache_dir=cache, trim_wake_min=TRIM)
    expected = np.array(first.windows)
    entry = first.path
    del first
    if damage == "truncate_windows":
        path = entry / "windows.npy"
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "drop_meta":
        (entry / "meta.json").unlink()
    elif damage == "bad_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        np.save(entry / "labels.npy", np.zeros(3, dtype=np.int64))

    with caplog.at_level(logging.WARNING):
        cohort = load_cohort(cassette_dir, WindowSpec(), cache_dir=cache, trim_wake_min=TRIM)
    assert "is corrupt" in caplog.text
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(cohort.windows, expected)
    assert _entries(cache) == [entry.name]


def test_skip_logs_bad_recording_and_goes_on(cassette_dir, tmp_path, caplog):
    bad = cassette_dir / "sleep-cassette" / "SC4002E0-PSG.edf"
    bad.write_bytes(bad.read_bytes()[:3000])
    with caplog.at_level(logging.WARNING):
        cohort = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c",
                             trim_wake_min=TRIM)
    assert [r.name for r in cohort.recordings] == ["SC4001E0", "SC4011E0"]
    assert cohort.skipped[0][0] == "SC4002E0"
    assert "skipped recording SC4002E0" in caplog.text
    assert "is truncated" in caplog.text
    assert len(cohort) == 48

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c",
                            trim_wake_min=TRIM)
    assert again.path == cohort.path
    assert "skipped recording SC4002E0" in caplog.text


def test_raise_stops_and_writes_nothing(cassette_dir, tmp_path):
    bad = cassette_dir / "sleep-cassette" / "SC4011E0-PSG.edf"
    bad.write_bytes(b"not an EDF file" * 40)
    cache = tmp_path / "c"
    with pytest.raises(SleepnasError, match=r"SC4011E0-PSG\.edf is not an EDF or BDF file"):
        load_cohort(cassette_dir, WindowSpec(), cache_dir=cache, trim_wake_min=TRIM,
                    on_error="raise")
    assert _entries(cache) == []
    assert [p.name for p in (cache / "windows").iterdir()] == ["digests.json"]


def test_every_recording_bad(tmp_path):
    write_psg(tmp_path / "data" / "SC4001E0-PSG.edf", 600)
    with pytest.raises(SleepnasError, match="none of the 1 recordings could be read; the first "
                                            "error was: PSG .* has no hypnogram"):
        load_cohort(tmp_path / "data", WindowSpec(), cache_dir=tmp_path / "c")


def test_subject_selection(cassette_dir, tmp_path):
    cohort = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c",
                         trim_wake_min=TRIM, subjects=["SC401"])
    assert cohort.subject_ids == ("SC401",)
    assert len(cohort) == 24
    with pytest.raises(SleepnasError, match="subject 'SC499' not found .* subjects present are "
                                            "SC400, SC401"):
        load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", subjects=["SC499"])


def test_indices_and_stage_counts(cassette_dir, tmp_path):
    cohort = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    rows = cohort.indices(["SC401"])
    assert rows.tolist() == list(range(48, 72))
    assert cohort.stage_counts(rows) == {"W": 8, "N1": 2, "N2": 7, "N3": 4, "REM": 3}


def test_invalid_options(cassette_dir, tmp_path):
    with pytest.raises(SleepnasError, match="invalid on_error 'ignore'"):
        load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path, on_error="ignore")
    with pytest.raises(SleepnasError, match="invalid --trim-wake-min -1"):
        load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path, trim_wake_min=-1)


def test_summary_matches_cohort(cassette_dir, tmp_path):
    cohort = load_cohort(cassette_dir, WindowSpec(), cache_dir=tmp_path / "c", trim_wake_min=TRIM)
    summary = summarize_recordings(cassette_dir, WindowSpec(), trim_wake_min=TRIM)
    assert summary["recordings"] == 3
    assert summary["subjects"] == 2
    assert summary["windows"] == cohort.stage_counts()
    assert [item["name"] for item in summary["per_recording"]] == ["SC4001E0", "SC4002E0",
                                                                   "SC4011E0"]
    json.dumps(summary)
