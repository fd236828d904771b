"""Hypnogram files, sleep statistics and agreement with a reference hypnogram.

For a scored recording called ``<name>`` this module writes, each file atomically:

- ``<name>.hypnogram.csv``: ``onset_s``, ``duration_s``, ``stage``, one ``p_<stage>``
  column per stage (the hypnodensity) and ``flag``;
- ``<name>-Hypnogram.edf``: EDF+ annotations with the Sleep-EDF texts, so MNE and
  other tools open it beside the PSG;
- ``<name>.summary.json``: sleep statistics, and the agreement with a reference
  hypnogram when there is one;
- ``<name>.png`` on request: the hypnogram above the hypnodensity.

Nothing from the EDF header of the recording goes into these files: the EDF+ file
has an anonymous header and the other files name the recording by its file name only.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import SleepnasError
from .metrics import agreement
from .scoring import ScoreResult, recording_name, score_recording
from .stages import get_scheme
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

_WAKE = "W"
_REM = "REM"
# Movement time (rk7) is neither sleep nor wake in the statistics.
_NOT_SLEEP = ("W", "MT")


def output_paths(out_dir: str | os.PathLike, name: str, *, plot: bool = False) -> dict[str, Path]:
    """Return the paths of the files written for recording ``name`` in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {
        "csv": out_dir / f"{name}.hypnogram.csv",
        "edf": out_dir / f"{name}-Hypnogram.edf",
        "summary": out_dir / f"{name}.summary.json",
    }
    if plot:
        paths["png"] = out_dir / f"{name}.png"
    return paths


# ---------------------------------------------------------------- CSV and EDF+

def csv_header(stage_names: Sequence[str]) -> list[str]:
    """Return the column names of the hypnogram CSV."""
    return ["onset_s", "duration_s", "stage", *[f"p_{s}" for s in stage_names], "flag"]


def csv_row(onset_s: float, duration_s: float, stage: str, probabilities: Sequence[float],
            flag: str) -> list[str]:
    """Format one window as a row of the hypnogram CSV."""
    return [f"{onset_s:.10g}", f"{duration_s:.10g}", stage,
            *[f"{p:.6f}" for p in probabilities], flag]


def csv_line(fields: Sequence[str]) -> str:
    """Return one CSV line (without the newline), quoting fields that need it."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


def hypnogram_csv(result: ScoreResult) -> str:
    """Return the hypnogram CSV of a scored recording as text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(result.stage_names))
    for onset, label, p, flag in zip(result.onsets_s, result.labels, result.proba, result.flags):
        writer.writerow(csv_row(onset, result.window_s, result.stage_names[label], p, flag))
    return buffer.getvalue()


def stage_runs(result: ScoreResult) -> list[tuple[float, float, int]]:
    """Merge consecutive windows of one stage into ``(onset_s, duration_s, label)`` runs."""
    runs: list[tuple[float, float, int]] = []
    for onset, label in zip(result.onsets_s, result.labels):
        last = runs[-1] if runs else None
        if last and last[2] == label and np.isclose(last[0] + last[1], onset):
            runs[-1] = (last[0], last[1] + result.window_s, last[2])
        else:
            runs.append((float(onset), float(result.window_s), int(label)))
    return runs


def hypnogram_edf(result: ScoreResult) -> bytes:
    """Return an EDF+ file of annotations, one per run of a stage, with Sleep-EDF texts.

    The texts are ``Sleep stage W``, ``1``, ``2``, ``3``, ``4`` and ``R`` (and
    ``Movement time`` in ``rk7``); N3 of ``aasm5`` is written as ``Sleep stage 3``.
    The header is anonymous (patient and recording ``X``, no start date), so the
    onsets count seconds from the first sample of the PSG.
    """
    from edfio import Edf, EdfAnnotation

    texts = get_scheme(result.scheme).annotation_texts
    annotations = [EdfAnnotation(onset, duration, texts[label])
                   for onset, duration, label in stage_runs(result)]
    buffer = io.BytesIO()
    Edf([], annotations=annotations).write(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- sleep statistics

def parse_lights(text: str, option: str) -> tuple[str, float]:
    """Parse ``--lights-off``/``--lights-on``: a clock time ``HH:MM[:SS]`` or seconds.

    Returns
    -------
    kind : str
        ``"clock"`` (seconds after midnight) or ``"offset"`` (seconds after the first sample).
    seconds : float
    """
    text = str(text).strip()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?", text)
    if clock:
        hours, minutes = int(clock.group(1)), int(clock.group(2))
        seconds = float(clock.group(3) or 0)
        if hours < 24 and minutes < 60 and seconds < 60:
            return "clock", hours * 3600 + minutes * 60 + seconds
    else:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if np.isfinite(value) and value >= 0:
            return "offset", value
    raise SleepnasError(f"invalid {option} {text!r}: expected a clock time HH:MM[:SS] or "
                        f"seconds from the start of the recording (a number >= 0)")


def lights_offset_s(value: tuple[str, float] | None, start_time_s: float | None) -> float | None:
    """Turn a parsed lights time into seconds after the first sample.

    A clock time is counted forward from the recording's start time of day, so
    ``23:00`` of a recording started at ``22:30`` is 1800 s and ``07:00`` is 30600 s.
    """
    if value is None:
        return None
    kind, seconds = value
    if kind == "offset":
        return seconds
    if start_time_s is None:
        raise SleepnasError("a clock time for --lights-off/--lights-on needs the recording's start "
                            "time, which this file does not give: pass seconds instead")
    return (seconds - start_time_s) % 86400.0


def sleep_statistics(labels: Sequence[int], stage_names: Sequence[str], window_s: float, *,
                     lights_off_s: float | None = None, lights_on_s: float | None = None) -> dict:
    """Compute the sleep statistics of a hypnogram as the AASM scoring manual defines them.

    Only windows whose midpoint lies between lights off and lights on count. Without
    lights times, the period is the whole scored recording.

    - ``tib_min``: time in bed, lights off to lights on (the AASM "total recording time").
    - ``tst_min``: total sleep time, the minutes of every sleep stage (all but W and MT).
    - ``sleep_efficiency``: ``100 * TST / TIB``, in percent.
    - ``sol_min``: sleep onset latency, lights off to the first window of any sleep stage.
    - ``waso_min``: wake after sleep onset, ``TIB - SOL - TST``.
    - ``rem_latency_min``: sleep onset to the first REM window.
    - ``stage_min``: minutes of each stage; ``stage_pct``: percent of TST of each sleep
      stage (``None`` for W and MT, which are not part of TST).
    - ``n_awakenings``: runs of W after sleep onset and before the last sleep window
      (the final awakening is not counted).

    Latencies and WASO are ``None`` when the period contains no sleep (or no REM).

    References
    ----------
    Berry RB et al. The AASM Manual for the Scoring of Sleep and Associated Events,
    version 2.6. American Academy of Sleep Medicine, 2020 (sleep scoring data).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scored_s = len(labels) * window_s
    start_s = 0.0 if lights_off_s is None else float(lights_off_s)
    end_s = scored_s if lights_on_s is None else float(lights_on_s)
    if start_s >= scored_s:
        raise SleepnasError(f"lights off at {start_s:g} s is after the end of the scored recording "
                            f"({scored_s:g} s)")
    if end_s <= start_s:
        raise SleepnasError(f"lights on ({end_s:g} s) is not after lights off ({start_s:g} s): "
                            f"expected --lights-on later than --lights-off")
    # NOTE: lights on after the last scored window is moved to the end of that window.
    end_s = min(end_s, scored_s)

    midpoints = (np.arange(len(labels)) + 0.5) * window_s
    inside = (midpoints >= start_s) & (midpoints < end_s)
    period = labels[inside]
    onsets = midpoints[inside] - window_s / 2
    names = np.asarray(stage_names)[period] if len(period) else np.array([], dtype=str)
    sleep = ~np.isin(names, _NOT_SLEEP)

    tib_min = (end_s - start_s) / 60.0
    tst_min = float(sleep.sum()) * window_s / 60.0
    stage_min = {s: float((names == s).sum()) * window_s / 60.0 for s in stage_names}
    stage_pct = {s: (None if s in _NOT_SLEEP or tst_min == 0 else 100.0 * stage_min[s] / tst_min)
                 for s in stage_names}
    stats = {
        "tib_min": tib_min, "tst_min": tst_min, "sleep_efficiency": 100.0 * tst_min / tib_min,
        "sol_min": None, "waso_min": None, "rem_latency_min": None,
        "stage_min": stage_min, "stage_pct": stage_pct, "n_awakenings": 0,
    }
    if not sleep.any():
        return stats

    first, last = np.flatnonzero(sleep)[[0, -1]]
    stats["sol_min"] = max(0.0, float(onsets[first] - start_s) / 60.0)
    stats["waso_min"] = max(0.0, tib_min - stats["sol_min"] - tst_min)
    rem = np.flatnonzero(names == _REM)
    if len(rem):
        stats["rem_latency_min"] = float(onsets[rem[0]] - onsets[first]) / 60.0
    wake = names[first:last + 1] == _WAKE
    stats["n_awakenings"] = int(np.count_nonzero(wake[1:] & ~wake[:-1]))
    return stats


# ---------------------------------------------------------------- reference hypnogram

def find_reference(psg_path: str | os.PathLike, *, exclude: Sequence[str] = ()) -> Path | None:
    """Find the hypnogram beside a PSG file, paired by the first six characters (Sleep-EDF).

    ``SC4001E0-PSG.edf`` pairs with ``SC4001EC-Hypnogram.edf``, and ``night.edf``
    with ``night-Hypnogram.edf``. Among several candidates, files named in ``exclude``
    (hypnograms this tool writes) are dropped; several left raise a `SleepnasError`
    asking for ``--reference``.
    """
    psg_path = Path(psg_path)
    prefixes = (psg_path.name[:6].lower(), psg_path.stem.lower())
    candidates = sorted(
        p for p in psg_path.parent.glob("*")
        if p.is_file() and p != psg_path and p.name.lower().startswith(prefixes)
        and "hypnogram" in p.name.lower() and p.suffix.lower() in (".edf", ".bdf", ".txt", ".csv")
        and not p.name.endswith(".hypnogram.csv")
    )
    if len(candidates) > 1:
        candidates = [p for p in candidates if p.name not in exclude]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise SleepnasError(f"several reference hypnograms for {psg_path.name}: {names}; "
                            f"choose one with --reference")
    return candidates[0] if candidates else None


def reference_labels(stages: Sequence[tuple[float, float, object]], result: ScoreResult,
                     source: str = "") -> np.ndarray:
    """Return the reference class of each scored window, or -1 where it has none.

    A window takes the stage of the annotation that covers its midpoint. Stages the
    scheme drops (unscored, and movement time in ``aasm5``) and windows no
    annotation covers get -1.
    """
    scheme = get_scheme(result.scheme)
    out = np.full(result.n_windows, -1, dtype=np.int64)
    ordered = sorted(stages, key=lambda item: item[0])
    if not ordered:
        return out
    starts = np.array([onset for onset, _, _ in ordered], dtype=np.float64)
    ends = starts + np.array([duration for _, duration, _ in ordered], dtype=np.float64)
    classes = np.array([-1 if (c := scheme.label(stage, source)) is None else c
                        for _, _, stage in ordered], dtype=np.int64)

    midpoints = result.onsets_s + result.window_s / 2
    index = np.searchsorted(starts, midpoints, side="right") - 1
    covered = (index >= 0) & (midpoints < ends[np.clip(index, 0, None)])
    out[covered] = classes[index[covered]]
    return out


def reference_agreement(result: ScoreResult, reference_path: str | os.PathLike) -> dict | None:
    """Compare a scored recording with a reference hypnogram file.

    Returns the `sleepnas.runtime.metrics.agreement` dict (accuracy, macro-F1, kappa,
    per-stage F1, confusion) plus ``reference`` (the file name), or ``None`` when
    the reference covers no scored window.
    """
    from .recordings import read_stages

    reference_path = Path(reference_path)
    if not reference_path.is_file():
        raise SleepnasError(f"reference hypnogram {reference_path} not found")
    truth = reference_labels(read_stages(reference_path), result, reference_path.name)
    keep = truth >= 0
    if not keep.any():
        logger.warning("%s: reference %s covers no scored window; no agreement computed",
                       result.name, reference_path.name)
        return None
    out = agreement(truth[keep], result.labels[keep], result.stage_names)
    out["reference"] = reference_path.name
    return out


def format_agreement(metrics: dict, stage_names: Sequence[str]) -> str:
    """Format agreement metrics as a few lines of text with the confusion matrix."""
    def number(value):
        return "undefined" if value is None else f"{value:.3f}"

    lines = [
        f"agreement with {metrics.get('reference', 'the reference')} over {metrics['n_windows']} "
        f"windows: accuracy {number(metrics['accuracy'])}, macro-F1 {number(metrics['macro_f1'])}, "
        f"kappa {number(metrics['kappa'])}",
        "per-stage F1: " + ", ".join(f"{s} {number(metrics['per_stage_f1'][s])}" for s in stage_names),
        "confusion (rows reference, columns predicted):",
        "      " + "".join(f"{s:>7}" for s in stage_names),
    ]
    for name, row in zip(stage_names, metrics["confusion"]):
        lines.append(f"{name:>6}" + "".join(f"{v:>7d}" for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------- plot and output set

def hypnogram_png(result: ScoreResult) -> bytes:
    """Draw the hypnogram above the hypnodensity and return the PNG bytes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SleepnasError("--plot needs matplotlib: pip install 'sleepnas[plot]'") from None

    names = list(result.stage_names)
    # Conventional order from the top: wake, (movement), REM, then deepening sleep.
    order = [s for s in ("W", "MT", "REM") if s in names] + \
            [s for s in names if s not in ("W", "MT", "REM")]
    level = np.array([order.index(names[k]) for k in result.labels])
    hours = np.append(result.onsets_s, result.onsets_s[-1] + result.window_s) / 3600.0

    figure = Figure(figsize=(11, 5), tight_layout=True)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.step(hours, np.append(level, level[-1]), where="post", color="black", linewidth=0.8)
    top.set_yticks(range(len(order)), order)
    top.set_ylim(len(order) - 0.5, -0.5)
    top.set_ylabel("stage")
    top.set_title(f"{result.name}: hypnogram and hypnodensity")
    density = np.vstack([result.proba, result.proba[-1:]])
    bottom.stackplot(hours, density.T, labels=names, step="post")
    bottom.set_ylim(0, 1)
    bottom.set_xlim(hours[0], hours[-1])
    bottom.set_ylabel("probability")
    bottom.set_xlabel("time from the start of the recording (h)")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def build_summary(result: ScoreResult, *, model_name: str = "", lights_off_s: float | None = None,
                  lights_on_s: float | None = None, agreement_metrics: dict | None = None) -> dict:
    """Return the summary JSON content of a scored recording."""
    summary = {
        "recording": result.name,
        "model": model_name,
        "scheme": result.scheme,
        "window_s": result.window_s,
        "n_windows": result.n_windows,
        "n_flagged": result.n_flagged,
        "recording_min": result.recording_s / 60.0,
        "lights_off_s": lights_off_s,
        "lights_on_s": lights_on_s,
    }
    summary.update(sleep_statistics(result.labels, result.stage_names, result.window_s,
                                    lights_off_s=lights_off_s, lights_on_s=lights_on_s))
    if agreement_metrics is not None:
        summary["agreement"] = agreement_metrics
    return summary


def write_outputs(result: ScoreResult, out_dir: str | os.PathLike, summary: dict, *,
                  plot: bool = False) -> dict[str, Path]:
    """Write the CSV, EDF+ and summary files (and the PNG) of a recording.

    Every file is rendered in memory first and then written atomically. If one write
    fails, the files of this recording already written are removed, so a failure
    leaves no partial set behind.
    """
    paths = output_paths(out_dir, result.name, plot=plot)
    contents: dict[str, bytes] = {
        "csv": hypnogram_csv(result).encode("utf-8"),
        "edf": hypnogram_edf(result),
    }
    if plot:
        contents["png"] = hypnogram_png(result)

    written: list[Path] = []
    try:
        for key, data in contents.items():
            written.append(atomic_write_bytes(paths[key], data))
        written.append(atomic_write_json(paths["summary"], summary))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return paths


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that files can be written in it."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_text(out_dir / ".sleepnas-write-check", "")
        probe.unlink()
    except OSError as err:
        raise SleepnasError(f"cannot write to output directory {out_dir}: {err.strerror or err}; "
                            f"choose a writable folder with -o") from None
    return out_dir


def score_to_files(model, psg_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                   batch_size: int = 64, plot: bool = False,
                   reference: str | os.PathLike | None | bool = None,
                   lights_off: tuple[str, float] | None = None,
                   lights_on: tuple[str, float] | None = None) -> tuple[ScoreResult, dict, dict]:
    """Score one recording and write its hypnogram files into ``out_dir``.

    Parameters
    ----------
    model : SleepModel
    psg_path : path-like
        The PSG file.
    out_dir : path-like
        Folder of the outputs; `check_output_dir` it first.
    batch_size : int
        Windows per onnxruntime call.
    plot : bool
        Also write ``<name>.png``.
    reference : path-like, None or False
        Reference hypnogram to compare with; ``None`` looks for one beside the PSG
        (`find_reference`), ``False`` skips the comparison.
    lights_off, lights_on : tuple, optional
        Parsed by `parse_lights`; they bound the time in bed of the statistics.

    Returns
    -------
    result : ScoreResult
    summary : dict
        The content of ``<name>.summary.json``.
    paths : dict of str to Path
        The files written.
    """
    psg_path = Path(psg_path)
    name = recording_name(psg_path)
    paths = output_paths(out_dir, name, plot=plot)
    if reference is None:
        reference = find_reference(psg_path, exclude=[p.name for p in paths.values()])
    inputs = {psg_path.resolve()} | ({Path(reference).resolve()} if reference else set())
    clash = [p for p in paths.values() if p.resolve() in inputs]
    if clash:
        raise SleepnasError(f"writing {clash[0]} would overwrite an input file of {psg_path.name}: "
                            f"choose another output directory with -o")

    result = score_recording(model, psg_path, batch_size=batch_size, name=name)
    kinds = {value[0] for value in (lights_off, lights_on) if value is not None}
    start_time_s = _start_time_of_day_s(psg_path) if "clock" in kinds else None
    agreement_metrics = reference_agreement(result, reference) if reference else None
    summary = build_summary(result, model_name=model.path.name,
                            lights_off_s=lights_offset_s(lights_off, start_time_s),
                            lights_on_s=lights_offset_s(lights_on, start_time_s),
                            agreement_metrics=agreement_metrics)
    write_outputs(result, out_dir, summary, plot=plot)
    return result, summary, paths


def _start_time_of_day_s(psg_path: Path) -> float | None:
    # Only the time of day is used, to place clock-time lights; it is never written out.
    from .edf import read_edf_header

    start = read_edf_header(psg_path).start
    if start is None:
        return None
    return start.hour * 3600.0 + start.minute * 60.0 + start.second
