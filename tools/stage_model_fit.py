"""Fitting of the night-architecture model of `sleepnas.tools.stage_model`.

`fit_stage_model` turns expert hypnograms into the plain numbers that
`sleepnas.tools._stage_model_params` stores, and `format_stage_model` prints them as
that module. Both run on Sleep-EDF Expanded cassette hypnograms (PhysioNet, ODC-By 1.0;
Kemp et al. 2000 and Goldberger et al. 2000, cited in `sleepnas.tools.stage_model`).
"""

from __future__ import annotations

import datetime
import pprint
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepnas.runtime.errors import SleepnasError

from .stage_model import (CYCLE_PHASE_EDGES_MIN, DURATION_PHASE_EDGES_H, QUANTILE_LEVELS, STATES,
                          TRANSITION_PHASE_EDGES_H, UNSCORED, WINDOW_S, W, _cycle_phase, _phase,
                          main_sleep_period, read_hypnogram_states, run_lengths)

#: Pseudo-counts that pull a phase's transition row toward the pooled row, so a phase
#: with few bouts of a state borrows from the others.
TRANSITION_PSEUDO_COUNTS = 10.0
#: Minimum number of bouts for a part of the night to get bout-length quantiles of its own.
MIN_BOUTS_FOR_QUANTILES = 15


@dataclass(frozen=True)
class _Night:
    name: str
    period: np.ndarray
    onset_latency_min: float | None
    lights_off_clock_h: float | None


def _fit_transitions(nights: Sequence[_Night]) -> list:
    n = len(STATES)
    counts = np.zeros((len(TRANSITION_PHASE_EDGES_H) + 1, len(CYCLE_PHASE_EDGES_MIN) + 1, n, n))
    for night in nights:
        state, start, length = run_lengths(night.period)
        # A transition happens at the last window of a bout; the clocks are read there.
        last = start[:-1] + length[:-1] - 1
        index = (_phase(last, TRANSITION_PHASE_EDGES_H, 3600.0), _cycle_phase(night.period)[last],
                 state[:-1], state[1:])
        np.add.at(counts, index, 1.0)

    # Shrink each cycle phase's rows toward the rows pooled over all phases, and each
    # (night phase, cycle phase) row toward its cycle phase's row. A phase with few bouts
    # of a state then does not get a row made of one or two observations.
    pooled = _shrink(counts.sum(axis=(0, 1)), None)
    per_cycle = _shrink(counts.sum(axis=0), pooled)
    probabilities = _shrink(counts, per_cycle[None])
    return np.round(probabilities, 4).tolist()


def _shrink(counts: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    rows = counts.sum(axis=-1, keepdims=True)
    if prior is None:
        return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    return (counts + TRANSITION_PSEUDO_COUNTS * prior) / (rows + TRANSITION_PSEUDO_COUNTS)


def _fit_durations(nights: Sequence[_Night]) -> dict[str, list]:
    n_parts = len(DURATION_PHASE_EDGES_H) + 1
    n_cycles = len(CYCLE_PHASE_EDGES_MIN) + 1
    lengths: dict[tuple[int, int, int], list[int]] = {}
    for night in nights:
        state, start, length = run_lengths(night.period)
        parts = _phase(start, DURATION_PHASE_EDGES_H, 3600.0)
        cycles = _cycle_phase(night.period)[start]
        for key in zip(state.tolist(), parts.tolist(), cycles.tolist(), length.tolist()):
            lengths.setdefault(key[:3], []).append(key[3])

    # A (part, cycle) cell with few bouts takes the bouts of its part of the night, and a
    # part with few bouts takes all bouts of the state.
    quantiles: dict[str, list] = {}
    for s, stage in enumerate(STATES):
        every = [d for (s_, _, _), ds in lengths.items() if s_ == s for d in ds]
        table = []
        for part in range(n_parts):
            in_part = [d for c in range(n_cycles) for d in lengths.get((s, part, c), [])]
            if len(in_part) < MIN_BOUTS_FOR_QUANTILES:
                in_part = every
            row = []
            for c in range(n_cycles):
                sample = lengths.get((s, part, c), [])
                if len(sample) < MIN_BOUTS_FOR_QUANTILES:
                    sample = in_part
                values = np.quantile(sample, QUANTILE_LEVELS) if sample else np.ones(len(QUANTILE_LEVELS))
                row.append(np.round(values, 2).tolist())
            table.append(row)
        quantiles[stage.value] = table
    return quantiles


def _quantiles(values: Iterable[float], decimals: int) -> list[float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return np.round(np.quantile(values, QUANTILE_LEVELS), decimals).tolist()


def fit_stage_model(hypnogram_paths: Iterable[str | Path], *,
                    lights_off: dict[str, datetime.time] | None = None) -> dict:
    """Fit the night-architecture model on expert hypnograms.

    Parameters
    ----------
    hypnogram_paths : iterable of str or Path
        Sleep-EDF cassette hypnograms (``SC4ssNEx-Hypnogram.edf``).
    lights_off : dict, optional
        Lights-off clock time per recording, keyed by the first six characters of the file
        name (``"SC4001"``). Without it the sleep-onset latency and the lights-off clock
        times are not fitted (``None`` in the result).

    Returns
    -------
    dict
        Plain numbers (JSON-compatible), the form that `sample_night` takes.
    """
    nights = [_read_night(Path(p), lights_off or {}) for p in sorted(hypnogram_paths, key=str)]
    if not nights:
        raise SleepnasError("no hypnogram to fit the stage model on: expected SC4ssNEx-Hypnogram.edf files")

    first_states = np.bincount([night.period[0] for night in nights], minlength=len(STATES))
    letters: dict[str, int] = {}
    for night in nights:
        letters[night.name[7]] = letters.get(night.name[7], 0) + 1
    return {
        "n_nights": len(nights),
        "states": [stage.value for stage in STATES],
        "quantile_levels": list(QUANTILE_LEVELS),
        "transition_phase_edges_h": list(TRANSITION_PHASE_EDGES_H),
        "cycle_phase_edges_min": list(CYCLE_PHASE_EDGES_MIN),
        "duration_phase_edges_h": list(DURATION_PHASE_EDGES_H),
        "initial": np.round(first_states / first_states.sum(), 4).tolist(),
        "transitions": _fit_transitions(nights),
        "bout_windows": _fit_durations(nights),
        "sleep_period_h": _quantiles((len(n.period) * WINDOW_S / 3600.0 for n in nights), 3),
        "onset_latency_min": _quantiles((n.onset_latency_min for n in nights), 2),
        "lights_off_clock_h": _quantiles((n.lights_off_clock_h for n in nights), 3),
        "scorer_letters": dict(sorted(letters.items())),
    }


def _read_night(path: Path, lights_off: dict[str, datetime.time]) -> _Night:
    import edfio

    states = read_hypnogram_states(path)
    first, stop = main_sleep_period(states)
    period = states[first:stop].copy()
    # Unscored windows are rare inside the sleep period, so they count as wake.
    period[period == UNSCORED] = W

    latency = clock_h = None
    off = lights_off.get(path.name[:6])
    if off is not None:
        start = edfio.read_edf(path).starttime
        start_h = start.hour + start.minute / 60 + start.second / 3600
        clock_h = off.hour + off.minute / 60 + off.second / 3600
        # Clock times are kept as hours after noon of the recording day, so 01:00 is 13.0.
        clock_h = (clock_h - 12.0) % 24.0
        offset_h = clock_h - (start_h - 12.0) % 24.0
        latency = max(0.0, (first * WINDOW_S / 3600.0 - offset_h) * 60.0)
    return _Night(path.name, period, latency, clock_h)


def read_lights_off(xls_path: str | Path) -> dict[str, datetime.time]:
    """Read lights-off times from Sleep-EDF's ``SC-subjects.xls`` (needs the xlrd package).

    Returns a dict keyed by recording (``"SC4001"``: subject 0, night 1).
    """
    try:
        import xlrd
    except ImportError:
        raise SleepnasError("reading SC-subjects.xls needs the xlrd package: pip install xlrd") from None
    sheet = xlrd.open_workbook(str(xls_path)).sheet_by_index(0)
    header = [str(v).strip().lower() for v in sheet.row_values(0)]
    try:
        subject_col, night_col, off_col = header.index("subject"), header.index("night"), header.index("lightsoff")
    except ValueError:
        raise SleepnasError(f"{xls_path} has columns {header}: expected subject, night and LightsOff") from None

    times = {}
    for r in range(1, sheet.nrows):
        row = sheet.row_values(r)
        seconds = int(round(float(row[off_col]) * 86400)) % 86400
        key = f"SC4{int(row[subject_col]):02d}{int(row[night_col])}"
        times[key] = datetime.time(seconds // 3600, seconds % 3600 // 60, seconds % 60)
    return times


def format_stage_model(model: dict) -> str:
    """Return the Python source of a module that defines ``STAGE_MODEL = model``."""
    body = pprint.pformat(model, width=100, sort_dicts=False, compact=True)
    return (
        '"""Night-architecture numbers fitted by `sleepnas.tools.stage_model_fit.fit_stage_model`.\n\n'
        "Generated by ``python -m sleepnas.tools.stage_model``, so do not edit it by hand. Fitted on\n"
        "Sleep-EDF Expanded cassette hypnograms (PhysioNet, ODC-By 1.0; Kemp et al. 2000,\n"
        'Goldberger et al. 2000).\n"""\n\n'
        f"STAGE_MODEL = {body}\n"
    )
