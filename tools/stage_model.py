"""Night architecture: a semi-Markov model of the stage sequence of one night.

A night is wake before lights-off, the sleep-onset latency, a sleep period made of
stage bouts, and morning wake. Inside the sleep period the stage of the next bout
depends on the current stage, on the hours since sleep onset (deep sleep comes early in
the night, REM sleep late) and on the minutes since the last REM window (the NREM-REM
cycle). The length of a bout is drawn from the empirical quantiles of bout lengths of
that stage in that part of the night and cycle.

The numbers in `sleepnas.tools._stage_model_params` are fitted by
`sleepnas.tools.stage_model_fit.fit_stage_model` on the 44 expert hypnograms of the
first 44 cassette nights (subjects 0-22) of Sleep-EDF Expanded, published on PhysioNet
under the Open Data Commons Attribution License v1.0. The sleep-onset latency and the
lights-off times come from the lights-off column of the release's ``SC-subjects.xls``.
Refit them with (reading the XLS file needs the xlrd package)::

    python -m sleepnas.tools.stage_model HYPNOGRAM_DIR [--subjects-xls SC-subjects.xls]

References
----------
B. Kemp, A. H. Zwinderman, B. Tuk, H. A. C. Kamphuisen, J. J. L. Oberyé. Analysis of a
sleep-dependent neuronal feedback loop: the slow-wave microcontinuity of the EEG.
IEEE Trans. Biomed. Eng. 47(9):1185-1194 (2000).

A. L. Goldberger et al. PhysioBank, PhysioToolkit, and PhysioNet: Components of a New
Research Resource for Complex Physiologic Signals. Circulation 101(23):e215-e220 (2000).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.stages import Stage, annotation_to_stage

logger = logging.getLogger(__name__)

#: Length of one scored window (an "epoch" in sleep papers) in seconds.
WINDOW_S = 30.0

#: Model states, in index order. Unscored windows have index -1.
STATES: tuple[Stage, ...] = (Stage.W, Stage.S1, Stage.S2, Stage.S3, Stage.S4, Stage.REM, Stage.MT)
UNSCORED = -1
W, S1, S2, S3, S4, REM, MT = range(len(STATES))
SLEEP_STATES = (S1, S2, S3, S4, REM)

#: Sleep-EDF annotation text of each state, in index order.
ANNOTATION_TEXTS: tuple[str, ...] = (
    "Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4",
    "Sleep stage R", "Movement time",
)
UNSCORED_TEXT = "Sleep stage ?"

#: Transitions depend on the time since sleep onset (deep sleep comes early, REM sleep
#: late): phases start at these hours.
TRANSITION_PHASE_EDGES_H = (2.0, 4.0, 6.0)
#: Transitions also depend on the minutes since the last REM window (since sleep onset
#: before the first one). Within a REM period sleep returns to REM after a short
#: interruption, and a new REM period rarely starts within an hour of the last one.
CYCLE_PHASE_EDGES_MIN = (15.0, 60.0)
#: Bout lengths depend on the part of the night: the bout starts before 2.5 h, before 5 h,
#: or later.
DURATION_PHASE_EDGES_H = (2.5, 5.0)
#: Probability levels of the stored bout-length quantiles. The tail is finer because the
#: few long bouts carry much of the mean.
QUANTILE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: Wake longer than this (in windows) splits sleep into separate periods (a nap, the night).
MAX_WAKE_GAP_WINDOWS = 120


def read_hypnogram_states(path: str | Path) -> np.ndarray:
    """Read a Sleep-EDF hypnogram into one state index per 30-s window.

    Parameters
    ----------
    path : str or Path
        An EDF+ hypnogram file (``SC4ssNEx-Hypnogram.edf``).

    Returns
    -------
    ndarray of int8
        Index into `STATES` per window from the file start; -1 for unscored windows.
    """
    import edfio

    path = Path(path)
    try:
        annotations = edfio.read_edf(path).annotations
    except (OSError, ValueError) as err:
        raise SleepnasError(f"failed to read hypnogram {path}: {err}") from None
    if not annotations:
        raise SleepnasError(f"hypnogram {path} has no annotations: expected sleep stages")

    end_s = max(a.onset + (a.duration or 0.0) for a in annotations)
    states = np.full(int(round(end_s / WINDOW_S)), UNSCORED, dtype=np.int8)
    for annotation in annotations:
        stage = annotation_to_stage(annotation.text, source=str(path))
        index = STATES.index(stage) if stage in STATES else UNSCORED
        first = int(round(annotation.onset / WINDOW_S))
        last = int(round((annotation.onset + (annotation.duration or 0.0)) / WINDOW_S))
        states[first:last] = index
    return states


def main_sleep_period(states: np.ndarray, max_gap: int = MAX_WAKE_GAP_WINDOWS) -> tuple[int, int]:
    """Return ``(first, stop)`` window indices of the longest sleep period of a recording.

    Sleep windows separated by more than ``max_gap`` windows belong to different periods,
    so an afternoon nap is not taken for the start of the night. ``stop`` is one past the
    last sleep window.
    """
    sleep_index = np.flatnonzero(np.isin(states, SLEEP_STATES))
    if len(sleep_index) == 0:
        raise SleepnasError("hypnogram has no sleep window: expected stages 1-4 or R")
    breaks = np.flatnonzero(np.diff(sleep_index) > max_gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks + 1, [len(sleep_index)]])
    longest = int(np.argmax(stops - starts))
    return int(sleep_index[starts[longest]]), int(sleep_index[stops[longest] - 1]) + 1


def run_lengths(states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a state sequence into bouts: ``(state, start, length)`` arrays."""
    states = np.asarray(states)
    if len(states) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    change = np.flatnonzero(np.diff(states) != 0) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(states)]]))
    return states[starts].astype(np.int64), starts, lengths


def _phase(windows: np.ndarray | int, edges: Sequence[float], unit_s: float) -> np.ndarray:
    """Index of the interval between ``edges`` (in units of ``unit_s``) that each count of windows falls in."""
    return np.searchsorted(np.asarray(edges), np.asarray(windows) * WINDOW_S / unit_s, side="right")


def _cycle_phase(period: np.ndarray) -> np.ndarray:
    """Index of the interval of `CYCLE_PHASE_EDGES_MIN` that the time since the last REM window falls in, per window.

    Before the first REM window the clock runs from sleep onset, and the first interval
    (inside a REM period) is skipped: sleep onset starts a cycle as the end of REM does.
    """
    index = np.arange(len(period))
    is_rem = period == REM
    last_rem = np.where(is_rem, index, 0)
    np.maximum.accumulate(last_rem, out=last_rem)
    phase = _phase(index - last_rem, CYCLE_PHASE_EDGES_MIN, 60.0)
    before_first_rem = np.cumsum(is_rem) == 0
    return np.where(before_first_rem, np.maximum(phase, 1), phase)


@dataclass(frozen=True)
class NightPlan:
    """The stage sequence of one synthetic recording, one entry per 30-s window.

    Attributes
    ----------
    states : ndarray of int8
        Index into `STATES` per window.
    clock_h : ndarray of float
        Clock time of each window in hours after noon (25.0 is 01:00 the next day).
        Where the night is compressed into a short recording, this is the time the
        window stands for, so slow rhythms such as body temperature follow the night.
    lights_off : int
        Window index of lights-off.
    sleep_onset : int
        Index of the first sleep window.
    sleep_offset : int
        One past the index of the last sleep window.
    """

    states: np.ndarray
    clock_h: np.ndarray
    lights_off: int
    sleep_onset: int
    sleep_offset: int


def default_stage_model() -> dict:
    """Return the model fitted on Sleep-EDF cassette hypnograms (see the module docstring)."""
    from sleepnas.tools._stage_model_params import STAGE_MODEL

    return STAGE_MODEL


def _draw_quantile(rng: np.random.Generator, values: Sequence[float], levels: Sequence[float]) -> float:
    return float(np.interp(rng.random(), levels, values))


def _sampled_cycle_phase(model: dict, window: int, last_rem: int | None) -> int:
    """`_cycle_phase` of one window, from the index of the last REM window so far."""
    if last_rem is None:
        return max(1, int(_phase(window, model["cycle_phase_edges_min"], 60.0)))
    return int(_phase(window - last_rem, model["cycle_phase_edges_min"], 60.0))


def sample_sleep_period(rng: np.random.Generator, model: dict | None = None,
                        length_h: float | None = None) -> np.ndarray:
    """Draw the stage sequence from sleep onset to the last sleep window.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    model : dict, optional
        Output of `sleepnas.tools.stage_model_fit.fit_stage_model`; default:
        `default_stage_model`.
    length_h : float, optional
        Target length in hours; default: drawn from the fitted sleep-period lengths.
        The result can be a few windows shorter, because it ends on a sleep window.

    Returns
    -------
    ndarray of int8
        State index per window; the first and the last window are sleep.
    """
    model = model or default_stage_model()
    levels = model["quantile_levels"]
    if length_h is None:
        length_h = _draw_quantile(rng, model["sleep_period_h"], levels)
    target = max(1, int(round(length_h * 3600.0 / WINDOW_S)))
    transitions = np.asarray(model["transitions"])
    bout_windows = [model["bout_windows"][stage.value] for stage in STATES]

    states = []
    state = int(rng.choice(len(STATES), p=model["initial"]))
    elapsed = 0
    last_rem = None
    while elapsed < target:
        part = int(_phase(elapsed, model["duration_phase_edges_h"], 3600.0))
        quantiles = bout_windows[state][part][_sampled_cycle_phase(model, elapsed, last_rem)]
        length = max(1, int(np.floor(_draw_quantile(rng, quantiles, levels) + 0.5)))
        states.append(np.full(length, state, dtype=np.int8))
        elapsed += length

        last = elapsed - 1
        if state == REM:
            last_rem = last
        row = transitions[int(_phase(last, model["transition_phase_edges_h"], 3600.0)),
                          _sampled_cycle_phase(model, last, last_rem), state]
        state = int(rng.choice(len(STATES), p=row / row.sum()))

    period = np.concatenate(states)[:target]
    sleep = np.flatnonzero(np.isin(period, SLEEP_STATES))
    return period[: sleep[-1] + 1]


def sample_night(rng: np.random.Generator, *, n_windows: int | None = None, model: dict | None = None,
                 pre_wake_min: tuple[float, float] = (30.0, 60.0),
                 post_wake_min: tuple[float, float] = (30.0, 60.0)) -> NightPlan:
    """Draw the stage sequence of one recording: wake, lights-off, sleep, wake.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_windows : int, optional
        Length of the recording in 30-s windows. Default: its natural length, which is
        wake before lights-off (drawn from ``pre_wake_min``), the sleep-onset latency, the
        sleep period and morning wake (drawn from ``post_wake_min``): about 9-10 h.
        A longer recording gets more wake at both ends. A shorter one is the whole night
        compressed, every part in proportion: windows are taken at even steps through
        the sleep period, and each stage of the night keeps at least one window.
    model : dict, optional
        Output of `sleepnas.tools.stage_model_fit.fit_stage_model`; default:
        `default_stage_model`.
    pre_wake_min, post_wake_min : tuple of float
        Ranges (minutes) of the wake before lights-off and after the last sleep window.

    Returns
    -------
    NightPlan
    """
    model = model or default_stage_model()
    levels = model["quantile_levels"]
    clock_q = model.get("lights_off_clock_h")
    lights_off_h = _draw_quantile(rng, clock_q, levels) if clock_q else 11.0
    latency_q = model.get("onset_latency_min")
    latency_min = _draw_quantile(rng, latency_q, levels) if latency_q else 15.0

    per_min = 60.0 / WINDOW_S
    parts = [int(round(rng.uniform(*pre_wake_min) * per_min)), int(round(latency_min * per_min))]
    period = sample_sleep_period(rng, model)
    parts += [len(period), int(round(rng.uniform(*post_wake_min) * per_min))]
    # Clock positions (in windows from the natural start) that the windows stand for.
    positions = np.arange(sum(parts), dtype=np.float64)

    if n_windows is not None and n_windows >= sum(parts):
        extra = n_windows - sum(parts)
        # Cassette recordings start in the afternoon and run into the next day.
        before = extra * 45 // 100
        parts[0] += before
        parts[3] += extra - before
        positions = np.arange(n_windows, dtype=np.float64) - before
    elif n_windows is not None:
        period, parts, positions = _compress(period, parts, n_windows)

    states = np.concatenate([np.full(parts[0] + parts[1], W, dtype=np.int8), period,
                             np.full(parts[3], W, dtype=np.int8)])
    natural_lights_off = positions[parts[0]] if parts[0] < len(positions) else positions[-1]
    clock_h = lights_off_h + (positions - natural_lights_off) * WINDOW_S / 3600.0
    onset = parts[0] + parts[1]
    return NightPlan(states=states, clock_h=clock_h, lights_off=parts[0], sleep_onset=onset,
                     sleep_offset=onset + len(period))


def _compress(period: np.ndarray, parts: list[int],
              n_windows: int) -> tuple[np.ndarray, list[int], np.ndarray]:
    natural = sum(parts)
    factor = n_windows / natural
    wake = [max(1, int(round(parts[0] * factor))), int(round(parts[1] * factor)),
            max(1, int(round(parts[3] * factor)))]
    n_period = n_windows - sum(wake)
    if n_period < 1:
        raise SleepnasError(f"a recording of {n_windows} windows is too short for a night: "
                            f"expected at least {sum(wake) + 1}")

    # Even steps through the period keep the stage proportions and start and end on sleep.
    take = np.round(np.linspace(0, len(period) - 1, n_period)).astype(np.int64)
    short = period[take]
    state, start, length = run_lengths(period)
    for s in np.unique(period):
        if s in short or n_period < 3:
            continue
        longest = np.flatnonzero(state == s)[np.argmax(length[state == s])]
        centre = start[longest] + length[longest] // 2
        short[int(np.clip(np.searchsorted(take, centre), 1, n_period - 2))] = s

    offsets = np.cumsum([0] + parts)
    positions = np.concatenate([
        offsets[0] + np.linspace(0, parts[0], wake[0], endpoint=False),
        offsets[1] + np.linspace(0, parts[1], wake[1], endpoint=False),
        offsets[2] + take,
        offsets[3] + np.linspace(0, parts[3], wake[2], endpoint=False),
    ])
    return short, [wake[0], wake[1], n_period, wake[2]], positions


def main(argv: list[str] | None = None) -> None:
    """Fit the model on a folder of hypnograms and print the constants module."""
    parser = argparse.ArgumentParser(prog="python -m sleepnas.tools.stage_model",
                                     description=main.__doc__)
    parser.add_argument("hypnogram_dir", type=Path, help="folder with SC4ssNEx-Hypnogram.edf files")
    parser.add_argument("--subjects-xls", type=Path, default=None,
                        help="SC-subjects.xls with lights-off times (default: beside the folder)")
    args = parser.parse_args(argv)

    from .stage_model_fit import fit_stage_model, format_stage_model, read_lights_off

    paths = sorted(p for p in args.hypnogram_dir.iterdir() if re.fullmatch(r"SC4\d{3}E.-Hypnogram\.edf", p.name))
    xls = args.subjects_xls or args.hypnogram_dir.parent / "SC-subjects.xls"
    lights_off = read_lights_off(xls) if xls.exists() else None
    if lights_off is None:
        logger.warning("%s not found: sleep-onset latency and lights-off times are not fitted", xls)
    sys.stdout.write(format_stage_model(fit_stage_model(paths, lights_off=lights_off)))


if __name__ == "__main__":
    main()
