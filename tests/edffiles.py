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


def write_bdf(path: Path, duration_s: float, rates: dict[str, float], *,
              record_s: float = WINDOW_S) -> Path:
    """Write a BioSemi BDF file (24-bit samples) by hand, since edfio writes EDF only.

    ``EEG Fpz-Cz`` gets `eeg_signal` and ``Temp rectal`` `temp_signal`; the others get
    a 5-uV sine at a tenth of their rate.
    """
    n_records = int(round(duration_s / record_s))
    names = list(rates)
    samples = [int(round(rates[name] * record_s)) for name in names]
    physical = (-1000.0, 1000.0)
    digital = (-8388608, 8388607)
    gain = (physical[1] - physical[0]) / (digital[1] - digital[0])

    def text(value, width: int) -> bytes:
        return str(value).encode("ascii").ljust(width)[:width]

    header = (b"\xffBIOSEMI" + text("X X X X", 80) + text("Startdate 01-JAN-2000 X X X", 80)
              + text("01.01.00", 8) + text("22.10.00", 8) + text(256 * (len(names) + 1), 8)
              + text("24BIT", 44) + text(n_records, 8) + text(f"{record_s:g}", 8)
              + text(len(names), 4))
    columns = [
        ([text(n, 16) for n in names]), [text("", 80)] * len(names),
        [text("degC" if n == "Temp rectal" else "uV", 8) for n in names],
        [text(physical[0], 8)] * len(names), [text(physical[1], 8)] * len(names),
        [text(digital[0], 8)] * len(names), [text(digital[1], 8)] * len(names),
        [text("", 80)] * len(names), [text(s, 8) for s in samples], [text("", 32)] * len(names),
    ]
    header += b"".join(b"".join(column) for column in columns)

    signals = []
    for name, n in zip(names, samples):
        t_s = np.arange(n * n_records) / rates[name]
        if name == "EEG Fpz-Cz":
            values = eeg_signal(t_s)
        elif name == "Temp rectal":
            values = temp_signal(t_s)
        else:
            values = 5.0 * np.sin(2 * np.pi * rates[name] / 10 * t_s)
        digits = np.round((values - physical[0]) / gain + digital[0]).astype("<i4")
        signals.append(digits.reshape(n_records, n))
    records = np.concatenate(signals, axis=1)
    data = records.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    path.write_bytes(header + data)
    return path
