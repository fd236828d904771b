"""Tiny EDF recordings written with edfio, in the Sleep-EDF cassette layout.

Test modules import the fixtures they use from here (``from tests.edffiles import
cassette_dir``).

The signals are made so tests can check values after reading. ``EEG Fpz-Cz`` is a
10-Hz sine plus a step that equals the window index in uV, so each window's median
identifies the window. The 1-Hz ``Temp rectal`` is a slow sine that MNE's upsampling
must reproduce at 100 Hz.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import edfio
import numpy as np
import pytest

WINDOW_S = 30
#: (annotation text, duration in s): 34 windows, 4 unscored past the signal end.
SHORT_NIGHT = (
    ("Sleep stage W", 300), ("Sleep stage 1", 60), ("Sleep stage 2", 150),
    ("Sleep stage 3", 60), ("Sleep stage 4", 60), ("Movement time", 30),
    ("Sleep stage R", 90), ("Sleep stage 2", 60), ("Sleep stage W", 210),
    ("Sleep stage ?", 120),
)
CASSETTE_RATES = {
    "EEG Fpz-Cz": 100, "EEG Pz-Oz": 100, "EOG horizontal": 100, "Resp oro-nasal": 1,
    "EMG submental": 1, "Temp rectal": 1, "Event marker": 1,
}
TELEMETRY_RATES = {"EEG Fpz-Cz": 100, "EEG Pz-Oz": 100, "EOG horizontal": 100,
                   "EMG submental": 100, "Marker": 10}
_UNITS = {"Temp rectal": "DegC", "Event marker": "", "Marker": "", "Resp oro-nasal": ""}
START = dt.time(22, 10, 0)


def temp_signal(t_s: np.ndarray) -> np.ndarray:
    """Rectal temperature in degC: a slow sine well below the 0.5-Hz Nyquist of 1-Hz sampling."""
    return 37.0 + 0.5 * np.sin(2 * np.pi * t_s / 120.0)


def eeg_signal(t_s: np.ndarray) -> np.ndarray:
    """EEG Fpz-Cz in uV: a 10-Hz sine plus the window index."""
    return 20.0 * np.sin(2 * np.pi * 10.0 * t_s) + np.floor(t_s / WINDOW_S)


def _signal(name: str, rate: float, duration_s: float, rng: np.random.Generator) -> edfio.EdfSignal:
    t_s = np.arange(int(round(duration_s * rate))) / rate
    if name == "EEG Fpz-Cz":
        data = eeg_signal(t_s)
        physical_range = (-200.0, 200.0 + duration_s / WINDOW_S)
    elif name == "Temp rectal":
        data, physical_range = temp_signal(t_s), (30.0, 40.0)
    elif name in ("Event marker", "Marker"):
        data, physical_range = np.zeros_like(t_s), (0.0, 1.0)
    else:
        data, physical_range = rng.normal(0.0, 30.0, t_s.size), (-500.0, 500.0)
    return edfio.EdfSignal(data, sampling_frequency=rate, label=name,
                           physical_dimension=_UNITS.get(name, "uV"),
                           physical_range=physical_range)


def write_psg(path: Path, duration_s: float, rates: dict[str, float] | None = None,
              *, seed: int = 0, record_s: float = WINDOW_S,
              annotations: Sequence[tuple[str, float]] | None = None) -> Path:
    """Write a PSG EDF with the given signals; ``annotations`` embeds EDF+ stages."""
    rng = np.random.default_rng(seed)
    rates = CASSETTE_RATES if rates is None else rates
    signals = [_signal(name, rate, duration_s, rng) for name, rate in rates.items()]
    edf_annotations = None
    if annotations is not None:
        edf_annotations = _annotations(annotations)
    edf = edfio.Edf(signals, starttime=START, data_record_duration=record_s,
                    annotations=edf_annotations)
    path.parent.mkdir(parents=True, exist_ok=True)
    edf.write(path)
    return path


def _annotations(stages: Sequence[tuple[str, float]]) -> list[edfio.EdfAnnotation]:
    onset, result = 0.0, []
    for text, duration in stages:
        result.append(edfio.EdfAnnotation(onset, duration, text))
        onset += duration
    return result


def write_hypnogram(path: Path, stages: Sequence[tuple[str, float]] = SHORT_NIGHT,
                    start: dt.time = START) -> Path:
    """Write an annotation-only EDF+ hypnogram like Sleep-EDF's."""
    edf = edfio.Edf([], starttime=start, annotations=_annotations(stages))
    path.parent.mkdir(parents=True, exist_ok=True)
    edf.write(path)
    return path


def write_recording(folder: Path, name: str = "SC4001E0", letter: str = "C",
                    stages: Sequence[tuple[str, float]] = SHORT_NIGHT,
                    rates: dict[str, float] | None = None, seed: int = 0,
                    signal_s: float | None = None) -> tuple[Path, Path]:
    """Write ``<name>-PSG.edf`` and ``<name[:7]><letter>-Hypnogram.edf`` into ``folder``.

    The signal stops where the last unscored annotation starts, unless ``signal_s`` is given.
    """
    if signal_s is None:
        signal_s = sum(d for text, d in stages if text != "Sleep stage ?")
    psg = write_psg(folder / f"{name}-PSG.edf", signal_s, rates, seed=seed)
    hypnogram = write_hypnogram(folder / f"{name[:7]}{letter}-Hypnogram.edf", stages)
    return psg, hypnogram


@pytest.fixture
def cassette_dir(tmp_path: Path) -> Path:
    """Two subjects, three nights, in PhysioNet's ``sleep-cassette/`` layout."""
    folder = tmp_path / "sleep-edf" / "sleep-cassette"
    write_recording(folder, "SC4001E0", "C", seed=1)
    write_recording(folder, "SC4002E0", "H", seed=2)
    write_recording(folder, "SC4011E0", "J", seed=3)
    return tmp_path / "sleep-edf"
