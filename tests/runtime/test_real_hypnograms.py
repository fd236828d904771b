"""The 44 expert hypnograms of Sleep-EDF's cassette study, read and windowed.

Window counts after trimming are checked against a direct reading of the same files
with ``mne.read_annotations``, windowed by index as the usual Sleep-EDF preparation
scripts do it. Every annotation gives ``duration // 30`` windows, and 60 windows
(30 min) are kept on each side of the first and last sleep window.
"""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pytest

from sleepnas.runtime.recordings import read_stages, window_labels
from sleepnas.runtime.spec import WindowSpec

HYPNOGRAMS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sleep-edf" / "hypnograms"
FILES = sorted(HYPNOGRAMS.glob("*-Hypnogram.edf")) if HYPNOGRAMS.is_dir() else []

pytestmark = pytest.mark.skipif(
    not FILES, reason=f"the real Sleep-EDF hypnograms are not in {HYPNOGRAMS} "
                      f"(a folder beside the repository, absent in a user's clone)")

SLEEP_TEXTS = ["Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4", "Sleep stage R"]
AASM5_TEXTS = {"W": ["Sleep stage W"], "N1": ["Sleep stage 1"], "N2": ["Sleep stage 2"],
               "N3": ["Sleep stage 3", "Sleep stage 4"], "REM": ["Sleep stage R"]}
RK7_TEXTS = {"W": ["Sleep stage W"], "S1": ["Sleep stage 1"], "S2": ["Sleep stage 2"],
             "S3": ["Sleep stage 3"], "S4": ["Sleep stage 4"], "REM": ["Sleep stage R"],
             "MT": ["Movement time"]}


def _reference_counts(path: Path, texts: dict[str, list[str]]) -> dict[str, int]:
    annotations = mne.read_annotations(path)
    onsets = np.asarray(annotations.onset)
    ends = onsets + np.asarray(annotations.duration)
    assert np.allclose(onsets[1:], ends[:-1]), "the reference assumes contiguous annotations"
    per_window = np.concatenate([
        np.repeat(description, int(duration // 30))
        for description, duration in zip(annotations.description, annotations.duration)
    ])
    sleep = np.flatnonzero(np.isin(per_window, SLEEP_TEXTS))
    start = max(sleep[0] - 60, 0)
    stop = min(sleep[-1] + 60, len(per_window) - 1)
    kept = per_window[start:stop + 1]
    return {stage: int(np.isin(kept, names).sum()) for stage, names in texts.items()}


def test_all_44_hypnograms_present():
    assert len(FILES) == 44


@pytest.mark.parametrize("path", FILES, ids=[p.name[:6] for p in FILES])
def test_window_counts_match_mne(path):
    stages = read_stages(path)
    for scheme, texts in (("aasm5", AASM5_TEXTS), ("rk7", RK7_TEXTS)):
        spec = WindowSpec(scheme=scheme)
        labels, onsets = window_labels(stages, spec, trim_wake_min=30.0, source=path.name)
        counts = dict(zip(spec.stage_names, np.bincount(labels, minlength=spec.scheme_obj.n_classes)))
        assert {k: int(v) for k, v in counts.items()} == _reference_counts(path, texts), scheme
        assert np.all(np.diff(onsets) >= 30.0)
