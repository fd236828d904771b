"""A synthetic cohort in the Sleep-EDF cassette layout, for the demo and the tests.

Each recording is a pair of files named as in Sleep-EDF Expanded. ``SC4ssNE0-PSG.edf``
(subject ``ss``, night ``N``) contains the seven cassette signals at their real names,
rates, units and ranges. ``SC4ssNEx-Hypnogram.edf`` is an EDF+ file of stage annotations
with the real texts. The night architecture comes from `sleepnas.tools.stage_model`, the
signals from `sleepnas.tools.synth_signals`. The EDF headers say the data are synthetic.
"""

from __future__ import annotations

import datetime
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.utils import atomic_write_bytes, progress

from .stage_model import ANNOTATION_TEXTS, UNSCORED_TEXT, WINDOW_S, NightPlan, default_stage_model, sample_night
from .synth_signals import EEG_SFREQ, SLOW_SFREQ, SubjectTraits, synthesize_signals

logger = logging.getLogger(__name__)

#: Maximum recording length (hours). Cassette recordings span about 20 h.
MAX_HOURS = 24.0
#: Minimum recording length (hours) that still contains lights-off wake, sleep and morning wake.
MIN_HOURS = 0.25
#: Sleep-EDF numbers subjects with two digits and nights with one.
MAX_SUBJECTS = 100
MAX_NIGHTS = 9

#: First recording date. Night N of subject ss is recorded ss * 7 + N - 1 days later, and
#: the fixed date keeps the files byte-identical for a seed.
FIRST_DATE = datetime.date(1990, 1, 1)
#: Header fields that mark the files as synthetic: no real person or recording is behind them.
PATIENT_NAME = "Synthetic_subject"
EQUIPMENT_CODE = "sleepnas_synth"


@dataclass(frozen=True)
class _ChannelHeader:
    label: str
    sfreq: int
    dimension: str
    physical_range: tuple[float, float]
    digital_range: tuple[int, int]
    transducer: str
    prefiltering: str


#: The signal headers of a Sleep-EDF cassette PSG file (SC4001E0-PSG.edf), in file order.
CASSETTE_HEADERS: tuple[_ChannelHeader, ...] = (
    _ChannelHeader("EEG Fpz-Cz", EEG_SFREQ, "uV", (-192.0, 192.0), (-2048, 2047), "Ag-AgCl electrodes",
                   "HP:0.5Hz LP:100Hz [enhanced cassette BW]"),
    _ChannelHeader("EEG Pz-Oz", EEG_SFREQ, "uV", (-197.0, 196.0), (-2048, 2047), "Ag-AgCl electrodes",
                   "HP:0.5Hz LP:100Hz [enhanced cassette BW]"),
    _ChannelHeader("EOG horizontal", EEG_SFREQ, "uV", (-1009.0, 1009.0), (-2048, 2047), "Ag-AgCl electrodes",
                   "HP:0.5Hz LP:100Hz [enhanced cassette BW]"),
    _ChannelHeader("Resp oro-nasal", SLOW_SFREQ, "", (-2048.0, 2047.0), (-2048, 2047), "Oral-nasal thermistors",
                   "HP:0.03Hz LP:0.9Hz"),
    _ChannelHeader("EMG submental", SLOW_SFREQ, "uV", (-5.0, 5.0), (-2500, 2500), "Ag-AgCl electrodes",
                   "HP:16Hz Rectification LP:0.7Hz"),
    _ChannelHeader("Temp rectal", SLOW_SFREQ, "DegC", (34.0, 40.0), (-2849, 2731), "Rectal thermistor", ""),
    _ChannelHeader("Event marker", SLOW_SFREQ, "", (-2047.0, 2048.0), (-2047, 2048), "Marker button",
                   "Hold during 2 seconds"),
)


def recording_name(subject: int, night: int) -> str:
    """Return the six-character Sleep-EDF recording name, e.g. ``"SC4011"`` for subject 1, night 1."""
    return f"SC4{subject:02d}{night}"


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise SleepnasError(f"invalid {name} {value!r}: expected an integer from {low} to {high}")
    return int(value)


def _check_hours(hours: float | None) -> float | None:
    if hours is None:
        return None
    if isinstance(hours, bool) or not isinstance(hours, (int, float, np.floating)) or not (
            MIN_HOURS <= float(hours) <= MAX_HOURS):
        raise SleepnasError(f"invalid --hours {hours!r}: expected a number from {MIN_HOURS} to {MAX_HOURS}, "
                            f"or none for a realistic night of about 9-10 h")
    return float(hours)


def synthesize_recording(out_dir: str | Path, subject: int, night: int, *, seed: int = 0,
                         hours: float | None = None) -> tuple[Path, Path]:
    """Write one synthetic night: a cassette PSG file and its hypnogram.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write to (created if missing).
    subject : int
        Subject number, 0-99 (the ``ss`` of ``SC4ssN``).
    night : int
        Night number, 1-9 (the ``N``; Sleep-EDF has nights 1 and 2).
    seed : int
        Seed of the cohort. The subject's traits depend on ``(seed, subject)`` only, so
        the nights of one subject share them.
    hours : float, optional
        Length of the recording in hours, from 0.25 to 24, rounded to whole 30-s
        windows. Default: a realistic night
        of about 9-10 h (wake before lights-off, sleep-onset latency, a sleep period of
        4.6-11.8 h and wake after). A shorter recording contains the whole night
        compressed, as `sleepnas.tools.stage_model.sample_night` describes.

    Returns
    -------
    (Path, Path)
        The PSG file and the hypnogram file.
    """
    subject = _check_int("subject", subject, 0, MAX_SUBJECTS - 1)
    night = _check_int("night", night, 1, MAX_NIGHTS)
    seed = _check_int("--seed", seed, 0, 2**63 - 1)
    hours = _check_hours(hours)
    out_dir = Path(out_dir)

    traits = SubjectTraits.draw(np.random.default_rng([seed, subject]))
    rng = np.random.default_rng([seed, subject, night])
    n_windows = None if hours is None else int(round(hours * 3600.0 / WINDOW_S))
    plan = sample_night(rng, n_windows=n_windows)
    signals = synthesize_signals(rng, plan.states, plan.clock_h, plan.lights_off, traits)

    name = recording_name(subject, night)
    letter = _scorer_letter(rng)
    start = _start_datetime(plan, subject, night)
    psg_path = out_dir / f"{name}E0-PSG.edf"
    hypnogram_path = out_dir / f"{name}E{letter}-Hypnogram.edf"
    atomic_write_bytes(psg_path, _psg_bytes(signals, start))
    atomic_write_bytes(hypnogram_path, _hypnogram_bytes(plan, start, rng))
    logger.debug("wrote %s and %s (%d windows)", psg_path.name, hypnogram_path.name, len(plan.states))
    return psg_path, hypnogram_path


def synthesize_cohort(out_dir: str | Path, *, subjects: int = 4, nights: int = 2, seed: int = 0,
                      hours: float | None = None) -> list[Path]:
    """Write a synthetic cohort in the Sleep-EDF cassette layout.

    Subjects are numbered 0 to ``subjects - 1`` and nights 1 to ``nights``, as in
    Sleep-EDF (``SC4001E0-PSG.edf`` is subject 0, night 1). The same arguments write
    byte-identical files.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write the files to, directly (no ``sleep-cassette/`` subfolder).
    subjects : int
        Number of subjects, 1-100.
    nights : int
        Nights per subject, 1-9.
    seed : int
        Seed of the cohort, >= 0.
    hours : float, optional
        Length of each recording in hours (see `synthesize_recording`).

    Returns
    -------
    list of Path
        The written files, PSG then hypnogram for each recording, in name order.
    """
    subjects = _check_int("--subjects", subjects, 1, MAX_SUBJECTS)
    nights = _check_int("--nights", nights, 1, MAX_NIGHTS)
    _check_int("--seed", seed, 0, 2**63 - 1)
    _check_hours(hours)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SleepnasError(f"output folder {out_dir} is a file: expected a folder or a new path")

    written: list[Path] = []
    pairs = [(s, n) for s in range(subjects) for n in range(1, nights + 1)]
    for subject, night in progress(pairs, desc="synthesizing recordings", unit="recording"):
        written.extend(synthesize_recording(out_dir, subject, night, seed=seed, hours=hours))
    logger.info("wrote %d synthetic recordings to %s", len(pairs), out_dir)
    return written


def _scorer_letter(rng: np.random.Generator) -> str:
    """Draw the letter before ``-Hypnogram`` with the frequencies of the real files."""
    letters = default_stage_model()["scorer_letters"]
    counts = np.array(list(letters.values()), dtype=np.float64)
    return list(letters)[int(rng.choice(len(counts), p=counts / counts.sum()))]


def _start_datetime(plan: NightPlan, subject: int, night: int) -> datetime.datetime:
    """Clock time of the first window, on the recording's fixed date, to the second."""
    day = FIRST_DATE + datetime.timedelta(days=subject * 7 + night - 1)
    seconds = int(round(float(plan.clock_h[0]) * 3600.0))
    return datetime.datetime.combine(day, datetime.time(12)) + datetime.timedelta(seconds=seconds)


def _header_fields(start: datetime.datetime) -> dict:
    import edfio

    return {
        "patient": edfio.Patient(name=PATIENT_NAME, additional=("synthetic",)),
        "recording": edfio.Recording(startdate=start.date(), equipment_code=EQUIPMENT_CODE,
                                     additional=("synthetic_signals",)),
        "starttime": start.time(),
    }


def _psg_bytes(signals: dict[str, np.ndarray], start: datetime.datetime) -> bytes:
    import edfio

    edf_signals = []
    for header in CASSETTE_HEADERS:
        low, high = header.physical_range
        # The recorder clips at its range, and EDF cannot store values outside it.
        data = np.clip(np.asarray(signals[header.label], dtype=np.float64), low, high)
        edf_signals.append(edfio.EdfSignal(
            data, header.sfreq, label=header.label, transducer_type=header.transducer,
            physical_dimension=header.dimension, physical_range=header.physical_range,
            digital_range=header.digital_range, prefiltering=header.prefiltering,
        ))
    # Cassette files store one 30-s window per data record.
    edf = edfio.Edf(edf_signals, data_record_duration=WINDOW_S, **_header_fields(start))
    buffer = io.BytesIO()
    edf.write(buffer)
    return buffer.getvalue()


def _hypnogram_bytes(plan: NightPlan, start: datetime.datetime, rng: np.random.Generator) -> bytes:
    import edfio

    from .stage_model import run_lengths

    state, first, length = run_lengths(plan.states)
    annotations = [edfio.EdfAnnotation(float(f * WINDOW_S), float(d * WINDOW_S), ANNOTATION_TEXTS[s])
                   for s, f, d in zip(state.tolist(), first.tolist(), length.tolist())]
    # As in the real files, an unscored annotation starts where the signals end and runs past them.
    end_s = len(plan.states) * WINDOW_S
    annotations.append(edfio.EdfAnnotation(end_s, float(rng.integers(10, 240) * WINDOW_S), UNSCORED_TEXT))
    edf = edfio.Edf([], annotations=annotations, **_header_fields(start))
    buffer = io.BytesIO()
    edf.write(buffer)
    return buffer.getvalue()
