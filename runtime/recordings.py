"""Recordings: finding PSG and hypnogram files, reading signals and stages, cutting windows.

Sleep-EDF names a cassette recording ``SC4ssNE0-PSG.edf`` with its hypnogram
``SC4ssNEx-Hypnogram.edf`` (``ss`` the subject, ``N`` the night, ``x`` the scorer's
letter, which varies), and a telemetry recording ``ST7ssNJ0-PSG.edf``. A PSG and its
hypnogram are paired by the first six characters of their names. Any other EDF/BDF
file is read as a generic recording whose stages come from a sidecar file
(``<stem>-Hypnogram.edf``, ``<stem>.csv``, ``<stem>.txt``) or from its own EDF+
annotations.

Windows start at annotation onsets and last ``window_s``. Windows that run past the
end of the signal are dropped, so a last annotation that runs past the end is fine.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .channels import match_channels
from .edf import EdfHeader, read_edf_header
from .errors import SleepnasError, check_option
from .signals import check_signal_values, read_signals, upsample_fft
from .spec import WindowSpec
from .stages import Stage, annotation_to_stage

# Signal reading lives in `.signals`; these names stay importable from here.
__all__ = ["SLEEP_STAGES", "RecordingFiles", "check_signal_values", "find_recordings",
           "load_recording_windows", "read_signals", "read_stages", "recording_labels",
           "upsample_fft", "window_labels"]

logger = logging.getLogger(__name__)

#: Stages that count as sleep when wake is trimmed around the sleep period.
SLEEP_STAGES = frozenset({Stage.S1, Stage.S2, Stage.S3, Stage.S4, Stage.N1, Stage.N2,
                          Stage.N3, Stage.REM})

_SLEEP_EDF_NAME = re.compile(r"^(S[CT]\d{4})[A-Z0-9]{2}-(PSG|Hypnogram)\.edf$", re.IGNORECASE)
_SIGNAL_SUFFIXES = (".edf", ".bdf")
_TABLE_SUFFIXES = (".csv", ".txt", ".tsv")
_SIDECAR_TAGS = ("-hypnogram", "_hypnogram", ".hypnogram", "")
_TIME_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class RecordingFiles:
    """The files of one recording.

    Attributes
    ----------
    psg : Path
        The PSG (signal) file, EDF or BDF.
    hypnogram : Path or None
        The file with the scored stages: a hypnogram EDF+, an annotation table, or the
        PSG itself when its EDF+ annotations hold the stages. ``None`` if none was found.
    subject : str
        Subject id: ``SC4ss``/``ST7ss`` for Sleep-EDF, else the file stem.
    night : int
        Night of the subject (1 or 2 in Sleep-EDF; 1 for generic files).
    name : str
        Recording name used in logs and outputs, such as ``SC4001E0``.
    """

    psg: Path
    hypnogram: Path | None
    subject: str
    night: int
    name: str


def _is_sidecar_name(path: Path) -> bool:
    stem = path.stem.lower()
    return stem.endswith(("-hypnogram", "_hypnogram", ".hypnogram"))


def _find_sidecar(psg: Path, by_lower_name: dict[str, Path]) -> Path | None:
    for tag in _SIDECAR_TAGS:
        for suffix in _SIGNAL_SUFFIXES + _TABLE_SUFFIXES:
            if not tag and suffix in _SIGNAL_SUFFIXES:
                continue
            candidate = by_lower_name.get((psg.stem + tag + suffix).lower())
            if candidate is not None:
                return candidate
    return None


def _generic_recording(psg: Path, by_lower_name: dict[str, Path],
                       used: set[Path]) -> RecordingFiles:
    hypnogram = _find_sidecar(psg, by_lower_name)
    if hypnogram is not None:
        used.add(hypnogram)
    else:
        try:
            if read_edf_header(psg).has_annotations:
                hypnogram = psg
        except SleepnasError:
            pass  # the file is reported when its signals are read
    return RecordingFiles(psg=psg, hypnogram=hypnogram, subject=psg.stem, night=1, name=psg.stem)


def _sleep_edf_recordings(folder_files: list[Path], on_error: str,
                          used: set[Path]) -> list[RecordingFiles]:
    psgs: dict[str, Path] = {}
    hypnograms: dict[str, list[Path]] = {}
    for path in folder_files:
        match = _SLEEP_EDF_NAME.match(path.name)
        if match is None:
            continue
        used.add(path)
        key = match.group(1).upper()
        if match.group(2).lower() == "psg":
            psgs[key] = path
        else:
            hypnograms.setdefault(key, []).append(path)

    recordings = []
    for key, psg in psgs.items():
        found = sorted(hypnograms.pop(key, []))
        if len(found) > 1:
            raise SleepnasError(
                f"{psg.parent} has {len(found)} hypnograms for {psg.name} "
                f"({', '.join(p.name for p in found)}): keep one"
            )
        recordings.append(RecordingFiles(
            psg=psg, hypnogram=found[0] if found else None, subject=key[:5],
            night=int(key[5]), name=psg.name.split("-")[0],
        ))
    for key, orphans in sorted(hypnograms.items()):
        for orphan in orphans:
            _report(on_error, f"hypnogram {orphan} has no PSG file: expected {key}*-PSG.edf "
                              f"in {orphan.parent}")
    return recordings


def _report(on_error: str, message: str) -> None:
    if on_error == "raise":
        raise SleepnasError(message)
    logger.warning("skipped: %s", message)


def find_recordings(data_path: str | os.PathLike, *, on_error: str = "raise") -> list[RecordingFiles]:
    """Find the recordings under a folder (searched recursively) or in one PSG file.

    Works on PhysioNet's Sleep-EDF layout (``sleep-cassette/``, ``sleep-telemetry/``),
    on MNE's download folder (``physionet-sleep-data/``, flat) and on generic EDF/BDF
    files with a sidecar annotation file or embedded EDF+ annotations.

    Parameters
    ----------
    data_path : path
        A folder, or a single PSG file.
    on_error : {"raise", "skip"}
        What to do with a hypnogram that has no PSG: raise, or log a warning and go on.
        A PSG without a hypnogram is returned with ``hypnogram=None``.

    Returns
    -------
    list of RecordingFiles
        Sorted by subject and night.
    """
    check_option("on_error", on_error, ("raise", "skip"))
    data_path = Path(data_path)
    if not data_path.exists():
        raise SleepnasError(f"data path {data_path} not found: expected a folder of EDF/BDF "
                            f"recordings or one EDF/BDF file")
    if data_path.is_file():
        files = sorted(p for p in data_path.parent.iterdir() if p.is_file())
        by_lower_name = {p.name.lower(): p for p in files}
        match = _SLEEP_EDF_NAME.match(data_path.name)
        if match is not None and match.group(2).lower() == "psg":
            found = _sleep_edf_recordings(files, "skip", set())
            return [r for r in found if r.psg == data_path]
        return [_generic_recording(data_path, by_lower_name, set())]

    recordings: list[RecordingFiles] = []
    folders: dict[Path, list[Path]] = {}
    for path in sorted(data_path.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(data_path).parts):
            folders.setdefault(path.parent, []).append(path)
    for folder_files in folders.values():
        used: set[Path] = set()
        recordings += _sleep_edf_recordings(folder_files, on_error, used)
        by_lower_name = {p.name.lower(): p for p in folder_files}
        for path in folder_files:
            if path in used or path.suffix.lower() not in _SIGNAL_SUFFIXES or _is_sidecar_name(path):
                continue
            recordings.append(_generic_recording(path, by_lower_name, used))
        for path in folder_files:
            if path not in used and _is_sidecar_name(path):
                _report(on_error, f"hypnogram {path} has no PSG file: expected "
                                  f"{path.stem[:-len('-hypnogram')]}.edf beside it")

    if not recordings:
        raise SleepnasError(
            f"no recordings found in {data_path}: expected EDF/BDF files such as "
            f"SC4001E0-PSG.edf with SC4001EC-Hypnogram.edf"
        )
    return sorted(recordings, key=lambda r: (r.subject, r.night, r.name))


def _read_table(path: Path) -> list[tuple[float, float, str]]:
    """Read ``onset,duration,description`` rows (seconds); ``#`` comments and a header row are skipped."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = []
    first_line = True
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        is_first, first_line = first_line, False
        fields = [field.strip() for field in line.split(delimiter, 2)]
        try:
            onset, duration = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            if is_first:
                continue  # a header row such as "onset,duration,description"
            raise SleepnasError(
                f"{path} line {number} is invalid: expected onset (s){delimiter} duration (s)"
                f"{delimiter} description, got {line.strip()!r}"
            ) from None
        if len(fields) < 3:
            raise SleepnasError(f"{path} line {number} has no description: expected onset, "
                                f"duration, description")
        rows.append((onset, duration, fields[2].strip('"')))
    return rows


def _read_annotations(path: Path) -> list[tuple[float, float, str]]:
    if path.suffix.lower() in _TABLE_SUFFIXES:
        return _read_table(path)
    read_edf_header(path)
    import mne

    try:
        annotations = mne.read_annotations(path)
    except (ValueError, RuntimeError, OSError) as err:
        raise SleepnasError(f"{path} has no readable EDF+ annotations: {err}") from None
    return [(float(a["onset"]), float(a["duration"]), str(a["description"])) for a in annotations]


def read_stages(hypnogram_path: str | os.PathLike) -> list[tuple[float, float, Stage]]:
    """Read the scored stages of a hypnogram file.

    Parameters
    ----------
    hypnogram_path : path
        An EDF+ file with annotations (a Sleep-EDF hypnogram, or a PSG with embedded
        annotations), or a ``.csv``/``.txt``/``.tsv`` table of onset, duration and
        description, onsets in seconds from the start of the PSG.

    Returns
    -------
    list of (onset_s, duration_s, Stage)
        Sorted by onset.

    Raises
    ------
    SleepnasError
        For a missing or unreadable file, an unknown annotation text, a duration that
        is not positive, or a hypnogram with no scored stage.
    """
    path = Path(hypnogram_path)
    if not path.is_file():
        raise SleepnasError(f"hypnogram {path} not found")
    rows = _read_annotations(path)
    if not rows:
        raise SleepnasError(f"hypnogram {path} is empty: it has no annotations")

    stages = []
    for onset, duration, text in sorted(rows):
        stage = annotation_to_stage(text, source=str(path))
        if not duration > 0:
            raise SleepnasError(
                f"annotation {text!r} at {onset:g} s in {path} has duration {duration:g} s: "
                f"expected the stage's duration in seconds"
            )
        stages.append((onset, duration, stage))
    if all(stage is Stage.UNSCORED for _, _, stage in stages):
        raise SleepnasError(f"hypnogram {path} has only unscored annotations ('Sleep stage ?')")
    return stages


def _window_grid(stages: Sequence[tuple[float, float, Stage]], window_s: float,
                 source: str | None) -> tuple[np.ndarray, list[Stage]]:
    onsets: list[float] = []
    window_stages: list[Stage] = []
    for onset, duration, stage in stages:
        # NOTE: the part of an annotation shorter than one window is dropped.
        n_windows = int(np.floor(duration / window_s + _TIME_TOLERANCE_S))
        onsets.extend(onset + k * window_s for k in range(n_windows))
        window_stages.extend([stage] * n_windows)
    grid = np.asarray(onsets, dtype=np.float64)
    overlaps = np.flatnonzero(np.diff(grid) < window_s - _TIME_TOLERANCE_S)
    if overlaps.size:
        at = grid[overlaps[0] + 1]
        raise SleepnasError(f"annotations of {source or 'the hypnogram'} overlap at {at:g} s: "
                            f"expected one stage at a time")
    return grid, window_stages


def _trim_mask(onsets: np.ndarray, window_stages: Sequence[Stage], trim_wake_min: float,
               source: str | None) -> np.ndarray:
    sleep = np.fromiter((stage in SLEEP_STAGES for stage in window_stages), bool,
                        count=len(window_stages))
    if not sleep.any():
        raise SleepnasError(
            f"{source or 'the hypnogram'} has no sleep window to trim wake around: give "
            f"trim_wake_min=None (keep all windows) for a recording without sleep"
        )
    margin_s = trim_wake_min * 60.0
    first, last = onsets[sleep][0], onsets[sleep][-1]
    return ((onsets >= first - margin_s - _TIME_TOLERANCE_S)
            & (onsets <= last + margin_s + _TIME_TOLERANCE_S))


def window_labels(stages: Sequence[tuple[float, float, Stage]], spec: WindowSpec, *,
                  duration_s: float | None = None, trim_wake_min: float | None = 30.0,
                  source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lay windows over a hypnogram, trim wake and return the labelled ones.

    Windows start at each annotation's onset and follow each other every
    ``spec.window_s`` until the annotation ends. Windows outside the signal are dropped.
    Then, with ``trim_wake_min``, only the windows from that many minutes before the
    first sleep window (S1-S4, N1-N3, REM) to that many minutes after the last are kept.
    Windows whose stage has no class in the scheme (unscored, and movement time in
    ``aasm5``) are dropped last.

    The usual Sleep-EDF preparation scripts also keep 30 min (60 windows) on each side,
    but they anchor the borders on any window that is not wake. Here movement time and
    unscored windows are not sleep, so they do not widen the kept span.

    Parameters
    ----------
    stages : sequence of (onset_s, duration_s, Stage)
        As returned by `read_stages`, sorted by onset.
    spec : WindowSpec
        Gives the window length and the scheme.
    duration_s : float or None
        Length of the signal in seconds; ``None`` keeps windows however late they start.
    trim_wake_min : float or None
        Minutes of wake kept around the sleep period; ``None`` keeps all windows.
    source : str or None
        The hypnogram's name, for error messages.

    Returns
    -------
    labels : ndarray of int64
        Class index of each kept window in ``spec.scheme``.
    onsets_s : ndarray of float64
        Onset of each kept window in seconds from the start of the PSG.
    """
    onsets, window_stages = _window_grid(stages, spec.window_s, source)
    inside = onsets >= -_TIME_TOLERANCE_S
    if duration_s is not None:
        inside &= onsets + spec.window_s <= duration_s + _TIME_TOLERANCE_S
    onsets = onsets[inside]
    window_stages = [s for s, keep in zip(window_stages, inside) if keep]
    if not window_stages:
        raise SleepnasError(f"{source or 'the hypnogram'} has no scored window inside the "
                            f"signal ({duration_s or 0:g} s long)")

    if trim_wake_min is not None:
        keep = _trim_mask(onsets, window_stages, trim_wake_min, source)
        onsets = onsets[keep]
        window_stages = [s for s, k in zip(window_stages, keep) if k]

    scheme = spec.scheme_obj
    labels = [scheme.label(stage, source) for stage in window_stages]
    scored = np.array([label is not None for label in labels], dtype=bool)
    if not scored.any():
        raise SleepnasError(f"{source or 'the hypnogram'} has no window with a class of scheme "
                            f"{scheme.name!r}: every window is unscored or dropped")
    label_array = np.array([label for label in labels if label is not None], dtype=np.int64)
    return label_array, onsets[scored]


def _hypnogram_offset_s(rec: RecordingFiles, psg_header: EdfHeader) -> float:
    """Seconds from the PSG start to the hypnogram start (0 unless both EDF headers differ)."""
    if rec.hypnogram is None or rec.hypnogram == rec.psg:
        return 0.0
    if rec.hypnogram.suffix.lower() not in _SIGNAL_SUFFIXES:
        return 0.0
    hypnogram_start = read_edf_header(rec.hypnogram).start
    if hypnogram_start is None or psg_header.start is None:
        return 0.0
    return (hypnogram_start - psg_header.start).total_seconds()


def recording_labels(rec: RecordingFiles, spec: WindowSpec, *,
                     trim_wake_min: float | None = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, onsets_s)`` of a recording's windows from its hypnogram and PSG header.

    Reads no signal data, so it is fast enough to summarize a whole cohort. The
    channels of ``spec`` are checked against the PSG header.
    """
    if rec.hypnogram is None:
        if _SLEEP_EDF_NAME.match(rec.psg.name):
            expected = f"{rec.psg.name[:6]}??-Hypnogram.edf in {rec.psg.parent}"
        else:
            expected = (f"{rec.psg.stem}-Hypnogram.edf or {rec.psg.stem}.csv beside it, or "
                        f"EDF+ stage annotations in the file")
        raise SleepnasError(f"PSG {rec.psg} has no hypnogram: expected {expected}")
    header = read_edf_header(rec.psg)
    match_channels(header.labels, spec.channels, header.path.name)
    offset_s = _hypnogram_offset_s(rec, header)
    stages = [(onset + offset_s, duration, stage)
              for onset, duration, stage in read_stages(rec.hypnogram)]
    return window_labels(stages, spec, duration_s=header.duration_s,
                         trim_wake_min=trim_wake_min, source=rec.hypnogram.name)


def load_recording_windows(rec: RecordingFiles, spec: WindowSpec,
                           trim_wake_min: float | None = 30.0
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a recording and cut it into labelled raw windows.

    Parameters
    ----------
    rec : RecordingFiles
        The recording; it needs a hypnogram.
    spec : WindowSpec
        Channels, rate, window length and scheme. Its normalization is not applied.
    trim_wake_min : float or None
        Minutes of wake kept around the sleep period; ``None`` keeps all windows.

    Returns
    -------
    windows : ndarray of float32, shape (n_windows, n_chans, n_times)
        Raw windows in SI units.
    labels : ndarray of int64, shape (n_windows,)
    onsets_s : ndarray of float64, shape (n_windows,)
    """
    labels, onsets_s = recording_labels(rec, spec, trim_wake_min=trim_wake_min)
    # The whole file is read, as scoring reads it, because MNE's FFT upsampling of 1-Hz
    # signals is global. Reading only the kept span changed 1-Hz white noise by up to
    # 3 % of its standard deviation in a 9-h test file, so training would see other values.
    data, sfreq = read_signals(rec.psg, spec.channels, spec.sfreq, window_s=spec.window_s)

    # NOTE: onsets that fall between samples are rounded to the nearest sample.
    starts = np.round(onsets_s * sfreq).astype(np.int64)
    n_times = spec.n_times
    windows = np.empty((len(starts), spec.n_chans, n_times), dtype=np.float32)
    if len(starts) and starts[-1] + n_times > data.shape[1]:
        raise SleepnasError(f"{rec.psg} is shorter than its header declares")
    for channel in range(spec.n_chans):
        windows[:, channel, :] = np.lib.stride_tricks.sliding_window_view(
            data[channel], n_times)[starts]
    return windows, labels, onsets_s
