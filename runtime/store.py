"""The window store: the labelled windows of a cohort, cached on disk as memory-mapped arrays.

An entry lives in ``<cache>/windows/<key>/`` and contains ``windows.npy`` (float32,
shape (n_windows, n_chans, n_times), raw and not normalized), ``labels.npy``,
``recording_index.npy``, ``onsets_s.npy`` and ``meta.json``. The key is a hash of

- the content of every PSG and hypnogram file (a BLAKE2b digest of the whole file),
  with the recording names, subjects and nights taken from the file names, and
- the parts of the window spec that change raw windows (channels, sampling rate,
  window length, scheme) and the wake trimming.

Content digests, not paths and modification times, make the key, so a copied or
moved data folder still finds its entry and a re-downloaded file that changed does
not. Hashing 50 MiB took 0.07 s on a 2-core development machine (BLAKE2b from
``hashlib``). Digests are remembered in ``<cache>/windows/digests.json`` by path, size
and modification time, so a second load only calls ``stat``.

An entry is built in a temporary folder and renamed into place, so a reader never
sees a half-written entry. An entry that fails to open is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SleepnasError, check_option
from .recordings import RecordingFiles, find_recordings, load_recording_windows, recording_labels
from .spec import WindowSpec
from .utils import atomic_write_json, cache_dir as default_cache_dir, progress

logger = logging.getLogger(__name__)

#: Version of the entry layout; a change makes every older entry a cache miss.
STORE_FORMAT = 1
_DIGEST_CHUNK_BYTES = 1 << 20


@dataclass
class Cohort:
    """The labelled windows of a set of recordings.

    Attributes
    ----------
    windows : ndarray of float32, shape (n_windows, n_chans, n_times)
        Raw windows (not normalized), memory-mapped read-only from the window store.
    labels : ndarray of int64, shape (n_windows,)
        Class index of each window in ``spec.scheme``.
    subjects : ndarray of str, shape (n_windows,)
        Subject id of each window.
    recording_index : ndarray of int64, shape (n_windows,)
        Index into ``recordings`` of each window.
    onsets_s : ndarray of float64, shape (n_windows,)
        Onset of each window in seconds from the start of its PSG.
    recordings : list of RecordingFiles
        The recordings that gave windows (skipped ones are not listed).
    spec : WindowSpec
    skipped : list of (str, str)
        Name and error message of each recording that was skipped.
    path : Path or None
        The store entry the windows are mapped from.
    """

    windows: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    recording_index: np.ndarray
    onsets_s: np.ndarray
    recordings: list[RecordingFiles]
    spec: WindowSpec
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def subject_ids(self) -> tuple[str, ...]:
        """Sorted unique subject ids."""
        return tuple(sorted({rec.subject for rec in self.recordings}))

    def indices(self, subjects: Sequence[str]) -> np.ndarray:
        """Return the indices of the windows of ``subjects``, in store order."""
        return np.flatnonzero(np.isin(self.subjects, list(subjects)))

    def stage_counts(self, indices: np.ndarray | None = None) -> dict[str, int]:
        """Count windows per stage name, over all windows or over ``indices``."""
        labels = self.labels if indices is None else self.labels[indices]
        counts = np.bincount(labels, minlength=len(self.spec.stage_names))
        return {name: int(n) for name, n in zip(self.spec.stage_names, counts)}


def _file_digest(path: Path, memo: dict[str, dict]) -> str:
    stat = path.stat()
    key = str(path.resolve())
    known = memo.get(key)
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return known["digest"]
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_DIGEST_CHUNK_BYTES):
            digest.update(chunk)
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": digest.hexdigest()}
    return memo[key]["digest"]


def _load_memo(path: Path) -> dict[str, dict]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def store_key(recordings: Sequence[RecordingFiles], spec: WindowSpec,
              trim_wake_min: float | None, memo: dict[str, dict] | None = None) -> str:
    """Return the store key of a cohort: a hash of its files' content and the window parameters."""
    memo = {} if memo is None else memo
    payload = {
        "format": STORE_FORMAT,
        "channels": list(spec.channels),
        "sfreq": spec.sfreq,
        "window_s": spec.window_s,
        "scheme": spec.scheme,
        "trim_wake_min": trim_wake_min,
        "recordings": [
            [rec.name, rec.subject, rec.night, _file_digest(rec.psg, memo),
             None if rec.hypnogram is None else _file_digest(rec.hypnogram, memo)]
            for rec in recordings
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class _CorruptEntry(Exception):
    pass


def _open_entry(entry: Path, recordings: Sequence[RecordingFiles], spec: WindowSpec) -> Cohort:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != STORE_FORMAT:
            raise _CorruptEntry(f"format {meta.get('format')!r}, expected {STORE_FORMAT}")
        windows = np.load(entry / "windows.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
        recording_index = np.load(entry / "recording_index.npy")
        onsets_s = np.load(entry / "onsets_s.npy")
        by_name = {rec.name: rec for rec in recordings}
        included = [by_name[name] for name in meta["recordings"]]
        skipped = [(item[0], item[1]) for item in meta["skipped"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise _CorruptEntry(str(err)) from None

    n = meta.get("n_windows")
    expected = (n, spec.n_chans, spec.n_times)
    if windows.shape != expected or windows.dtype != np.float32:
        raise _CorruptEntry(f"windows.npy is {windows.dtype} {windows.shape}, expected float32 {expected}")
    for name, array in (("labels", labels), ("recording_index", recording_index), ("onsets_s", onsets_s)):
        if array.shape != (n,):
            raise _CorruptEntry(f"{name}.npy has shape {array.shape}, expected ({n},)")
    if n and (recording_index.min() < 0 or recording_index.max() >= len(included)):
        raise _CorruptEntry("recording_index.npy points outside the recordings")

    subjects = np.array([rec.subject for rec in included], dtype=str)[recording_index]
    return Cohort(windows=windows, labels=labels, subjects=subjects,
                  recording_index=recording_index, onsets_s=onsets_s, recordings=included,
                  spec=spec, skipped=skipped, path=entry)


def _read_parts(recordings: Sequence[RecordingFiles], spec: WindowSpec,
                trim_wake_min: float | None, on_error: str, folder: Path):
    """Read each recording's windows into ``folder/part-<i>.npy``; return parts, labels and skips."""
    parts: list[tuple[Path, int]] = []
    included: list[RecordingFiles] = []
    labels, onsets, skipped = [], [], []
    for rec in progress(recordings, desc="reading recordings", unit="recording"):
        try:
            windows, rec_labels, rec_onsets = load_recording_windows(rec, spec, trim_wake_min)
        except SleepnasError as err:
            if on_error == "raise":
                raise
            logger.warning("skipped recording %s: %s", rec.name, err)
            skipped.append((rec.name, str(err)))
            continue
        part = folder / f"part-{len(parts)}.npy"
        np.save(part, windows)
        parts.append((part, len(windows)))
        included.append(rec)
        labels.append(rec_labels)
        onsets.append(rec_onsets)
    return parts, included, labels, onsets, skipped


def _write_entry(entry: Path, recordings: Sequence[RecordingFiles], spec: WindowSpec,
                 trim_wake_min: float | None, on_error: str) -> None:
    """Build an entry in a temporary folder beside ``entry`` and rename it into place."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        parts, included, labels, onsets, skipped = _read_parts(
            recordings, spec, trim_wake_min, on_error, tmp)
        if not included:
            first = skipped[0][1] if skipped else "no recordings"
            raise SleepnasError(f"none of the {len(recordings)} recordings could be read; "
                                f"the first error was: {first}")

        n_windows = sum(n for _, n in parts)
        windows = np.lib.format.open_memmap(tmp / "windows.npy", mode="w+", dtype=np.float32,
                                            shape=(n_windows, spec.n_chans, spec.n_times))
        position = 0
        for part, n in parts:
            windows[position:position + n] = np.load(part, mmap_mode="r")
            position += n
            part.unlink()
        windows.flush()
        del windows

        index = np.concatenate([np.full(len(lab), i, dtype=np.int64) for i, lab in enumerate(labels)])
        np.save(tmp / "labels.npy", np.concatenate(labels).astype(np.int64))
        np.save(tmp / "recording_index.npy", index)
        np.save(tmp / "onsets_s.npy", np.concatenate(onsets).astype(np.float64))
        # meta.json is written last: an entry without it is incomplete.
        atomic_write_json(tmp / "meta.json", {
            "format": STORE_FORMAT, "n_windows": n_windows,
            "spec": spec.to_dict(), "trim_wake_min": trim_wake_min,
            "recordings": [rec.name for rec in included],
            "skipped": [list(item) for item in skipped],
        })
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process renamed its entry into place first; keep that one.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _select_subjects(recordings: list[RecordingFiles], subjects: Sequence[str] | None,
                     data_path: Path) -> list[RecordingFiles]:
    if subjects is None:
        return recordings
    known = sorted({rec.subject for rec in recordings})
    unknown = [s for s in subjects if s not in known]
    if unknown:
        raise SleepnasError(f"subject {unknown[0]!r} not found in {data_path}: subjects "
                            f"present are {', '.join(known)}")
    return [rec for rec in recordings if rec.subject in set(subjects)]


def _discard(entry: Path) -> None:
    trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.corrupt.", dir=entry.parent))
    try:
        os.rename(entry, trash / "entry")
    except OSError:
        pass  # another process removed or rebuilt it
    shutil.rmtree(trash, ignore_errors=True)


def load_cohort(data_path: str | os.PathLike, spec: WindowSpec, *,
                cache_dir: str | os.PathLike | None = None, trim_wake_min: float | None = 30.0,
                on_error: str = "skip", subjects: Sequence[str] | None = None) -> Cohort:
    """Load the labelled windows of every recording under ``data_path``, through the store.

    Parameters
    ----------
    data_path : path
        A folder of recordings (searched recursively) or one PSG file.
    spec : WindowSpec
        Channels, rate, window length and scheme; the normalization is not applied.
    cache_dir : path or None
        Cache folder; default ``$SLEEPNAS_CACHE`` or ``~/.cache/sleepnas``.
    trim_wake_min : float or None
        Minutes of wake kept around each sleep period; ``None`` keeps all windows.
    on_error : {"skip", "raise"}
        A recording that cannot be read is logged and skipped, or raises.
    subjects : sequence of str or None
        Only these subjects; default all.

    Returns
    -------
    Cohort
    """
    check_option("on_error", on_error, ("skip", "raise"))
    if trim_wake_min is not None and not trim_wake_min >= 0:
        raise SleepnasError(f"invalid --trim-wake-min {trim_wake_min!r}: expected minutes >= 0")
    data_path = Path(data_path)
    recordings = _select_subjects(find_recordings(data_path, on_error=on_error), subjects,
                                  data_path)

    store = default_cache_dir(cache_dir) / "windows"
    memo_path = store / "digests.json"
    memo = _load_memo(memo_path)
    memo_before = json.dumps(memo, sort_keys=True)
    key = store_key(recordings, spec, trim_wake_min, memo)
    if json.dumps(memo, sort_keys=True) != memo_before or not memo_path.exists():
        atomic_write_json(memo_path, memo)

    entry = store / key
    if entry.exists():
        try:
            cohort = _open_entry(entry, recordings, spec)
        except _CorruptEntry as err:
            logger.warning("window store entry %s is corrupt (%s): rebuilding it", entry, err)
            _discard(entry)
        else:
            logger.info("loaded %d windows of %d recordings from the window store %s",
                        len(cohort), len(cohort.recordings), entry)
            for name, message in cohort.skipped:
                logger.warning("skipped recording %s: %s", name, message)
            return cohort

    _write_entry(entry, recordings, spec, trim_wake_min, on_error)
    try:
        return _open_entry(entry, recordings, spec)
    except _CorruptEntry as err:
        raise SleepnasError(f"window store entry {entry} could not be opened after it was "
                            f"built ({err}): remove it and run again") from None


def summarize_recordings(data_path: str | os.PathLike, spec: WindowSpec, *,
                         trim_wake_min: float | None = 30.0, on_error: str = "skip",
                         subjects: Sequence[str] | None = None) -> dict:
    """Count recordings, subjects and windows per stage from hypnograms and PSG headers.

    No signal data is read, so this is fast on a whole data set, but a PSG whose
    signals are flat or contain NaN is only found by `load_cohort`.

    Returns
    -------
    dict
        ``recordings`` (count), ``subjects`` (count), ``windows`` (stage name -> count,
        all stages of the scheme), ``scheme``, ``per_recording`` (name, subject, night,
        windows per stage) and ``skipped`` (name, error).
    """
    check_option("on_error", on_error, ("skip", "raise"))
    data_path = Path(data_path)
    recordings = _select_subjects(find_recordings(data_path, on_error=on_error), subjects,
                                  data_path)
    names = spec.stage_names
    totals = np.zeros(len(names), dtype=np.int64)
    per_recording, skipped = [], []
    for rec in recordings:
        try:
            labels, _ = recording_labels(rec, spec, trim_wake_min=trim_wake_min)
        except SleepnasError as err:
            if on_error == "raise":
                raise
            logger.warning("skipped recording %s: %s", rec.name, err)
            skipped.append({"recording": rec.name, "error": str(err)})
            continue
        counts = np.bincount(labels, minlength=len(names))
        totals += counts
        per_recording.append({"name": rec.name, "subject": rec.subject, "night": rec.night,
                              "windows": {n: int(c) for n, c in zip(names, counts)}})
    if not per_recording:
        raise SleepnasError(f"none of the {len(recordings)} recordings in {data_path} could be "
                            f"read; the first error was: {skipped[0]['error']}")
    return {
        "recordings": len(per_recording),
        "subjects": len({item["subject"] for item in per_recording}),
        "windows": {n: int(c) for n, c in zip(names, totals)},
        "scheme": spec.scheme,
        "per_recording": per_recording,
        "skipped": skipped,
    }
