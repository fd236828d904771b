"""Score a recording window by window with a sleepnas model, in batch or as a stream.

Batch scoring (`score_recording`, `score_signals`) and streaming (`Scorer`) both cut the
signal into consecutive windows from its first sample. Each window is normalized on its
own with the model's window spec and goes through the same code, so both give the same
hypnogram for the same samples. Windows are scored even when their signal is doubtful,
and a `flag` says why (NaN samples, a flat channel, a clipped channel).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SleepnasError, check_positive
from .model import SleepModel
from .spec import WindowSpec

logger = logging.getLogger(__name__)

#: A channel is flat in a window when its peak-to-peak amplitude is below this
#: fraction of the channel's normalization scale.
FLAT_FRACTION = 1e-3
#: A channel is clipped in a window when at least this fraction of its samples sit
#: exactly at the window's maximum or minimum (a plateau at an amplifier's rail).
CLIP_FRACTION = 0.01
# Channels that are constant or nearly so by nature; they are never flagged as flat.
_SLOW_CHANNEL_WORDS = ("event", "marker", "temp")


@dataclass(frozen=True)
class WindowResult:
    """The stage of one scored window.

    Attributes
    ----------
    index : int
        Window number from the start of the recording or stream, from 0.
    onset_s : float
        Start of the window in seconds from the first sample.
    stage : str
        The stage with the highest probability.
    probabilities : tuple of float
        One probability per stage, in the model's stage order.
    flag : str
        Empty, or why the window is doubtful (for example ``"NaN in EEG Fpz-Cz"``).
    """

    index: int
    onset_s: float
    stage: str
    probabilities: tuple[float, ...]
    flag: str


@dataclass
class ScoreResult:
    """The scored windows of one recording: hypnogram, hypnodensity and flags.

    Attributes
    ----------
    name : str
        The recording's name (its file stem); nothing from the EDF header.
    stage_names : tuple of str
        Stage names in class-index order.
    scheme : str
        The model's scheme (``"aasm5"`` or ``"rk7"``).
    window_s : float
        Window length in seconds.
    onsets_s : ndarray of float64, shape (n_windows,)
    labels : ndarray of int64, shape (n_windows,)
        Class index of each window.
    proba : ndarray of float32, shape (n_windows, n_classes)
        The hypnodensity.
    flags : list of str
        One flag per window, empty when the signal looked fine.
    recording_s : float
        Length of the signal in seconds.
    leftover_samples : int
        Samples per channel after the last whole window, not scored.
    """

    name: str
    stage_names: tuple[str, ...]
    scheme: str
    window_s: float
    onsets_s: np.ndarray
    labels: np.ndarray
    proba: np.ndarray
    flags: list[str]
    recording_s: float
    leftover_samples: int = 0

    @property
    def n_windows(self) -> int:
        return len(self.labels)

    @property
    def stages(self) -> list[str]:
        """The hypnogram as stage names."""
        return [self.stage_names[k] for k in self.labels]

    @property
    def n_flagged(self) -> int:
        return sum(1 for flag in self.flags if flag)

    @classmethod
    def from_windows(cls, results: Sequence[WindowResult], spec: WindowSpec, *, name: str = "stream",
                     leftover_samples: int = 0) -> ScoreResult:
        """Assemble a result from streamed windows, as batch scoring would return it."""
        stage_names = tuple(spec.stage_names)
        n_classes = len(stage_names)
        proba = np.array([r.probabilities for r in results], dtype=np.float32).reshape(-1, n_classes)
        return cls(
            name=name, stage_names=stage_names, scheme=spec.scheme, window_s=spec.window_s,
            onsets_s=np.array([r.onset_s for r in results], dtype=np.float64),
            labels=np.array([stage_names.index(r.stage) for r in results], dtype=np.int64),
            proba=proba, flags=[r.flag for r in results],
            recording_s=(len(results) * spec.n_times + leftover_samples) / spec.sfreq,
            leftover_samples=leftover_samples,
        )


def window_flags(windows: np.ndarray, spec: WindowSpec) -> list[str]:
    """Describe what is doubtful in each raw window, or ``""`` when nothing is.

    A window is flagged for three reasons. Non-finite samples are NaN runs from gaps in
    the recording. A channel is flat when its peak-to-peak amplitude is below
    `FLAT_FRACTION` of its scale, except event, marker and temperature channels, which
    are flat by nature. A channel is clipped when `CLIP_FRACTION` or more of its samples
    sit at the window's maximum or minimum.

    Parameters
    ----------
    windows : ndarray, shape (n_windows, n_chans, n_times)
        Raw windows in physical units.
    spec : WindowSpec
    """
    windows = np.asarray(windows, dtype=np.float32)
    finite = np.isfinite(windows)
    has_nan = ~finite.all(axis=2)
    if has_nan.any():
        high = np.where(finite, windows, -np.inf).max(axis=2)
        low = np.where(finite, windows, np.inf).min(axis=2)
    else:
        high = windows.max(axis=2)
        low = windows.min(axis=2)

    scale = np.asarray(spec.scale if spec.scale is not None else [1.0] * spec.n_chans)
    slow = np.array([any(word in name.lower() for word in _SLOW_CHANNEL_WORDS)
                     for name in spec.channels])
    all_nan = ~finite.any(axis=2)
    flat = ((high - low) < FLAT_FRACTION * scale) & ~slow & ~all_nan

    at_extreme = (windows == high[..., None]) | (windows == low[..., None])
    clipped = (at_extreme.sum(axis=2) >= CLIP_FRACTION * windows.shape[2]) & ~flat & ~all_nan & ~slow

    flags = []
    for i in range(len(windows)):
        parts = []
        for label, mask in (("NaN in", has_nan[i]), ("flat", flat[i]), ("clipped", clipped[i])):
            if mask.any():
                names = ", ".join(spec.channels[c] for c in np.flatnonzero(mask))
                parts.append(f"{label} {names}")
        flags.append("; ".join(parts))
    return flags


def score_windows(model: SleepModel, windows: np.ndarray, *,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score raw windows: normalize, run the model in batches, flag doubtful windows.

    Parameters
    ----------
    model : SleepModel
    windows : ndarray, shape (n_windows, n_chans, n_times)
        Raw windows in physical units, in the model's channel order.
    batch_size : int
        Windows per onnxruntime call; only this many are normalized at a time.

    Returns
    -------
    labels : ndarray of int64, shape (n_windows,)
    proba : ndarray of float32, shape (n_windows, n_classes)
    flags : list of str
    """
    check_positive("--batch-size", batch_size)
    batch_size = int(batch_size)
    n = len(windows)
    proba = np.empty((n, model.n_classes), dtype=np.float32)
    flags: list[str] = []
    for start in range(0, n, batch_size):
        raw = np.asarray(windows[start:start + batch_size], dtype=np.float32)
        proba[start:start + len(raw)] = model.predict_proba(model.spec.normalize(raw), batch_size)
        flags.extend(window_flags(raw, model.spec))
    return proba.argmax(axis=1).astype(np.int64), proba, flags


def score_signals(model: SleepModel, data: np.ndarray, *, batch_size: int = 64,
                  name: str = "recording") -> ScoreResult:
    """Score a whole signal already at the model's rate and in its channel order.

    Parameters
    ----------
    model : SleepModel
    data : ndarray, shape (n_chans, n_samples)
        Signal in physical units.
    batch_size : int
        Windows per onnxruntime call.
    name : str
        The recording's name, used in messages and in the result.

    Raises
    ------
    SleepnasError
        Wrong number of channels, or a signal shorter than one window.
    """
    spec = model.spec
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != spec.n_chans:
        raise SleepnasError(
            f"{name}: signal of shape {data.shape} does not fit the model: expected "
            f"({spec.n_chans}, n_samples) with channels {', '.join(spec.channels)}"
        )
    n_samples = data.shape[1]
    n_windows = n_samples // spec.n_times
    if n_windows == 0:
        raise SleepnasError(
            f"{name} is shorter than one window: {n_samples} samples ({n_samples / spec.sfreq:g} s) "
            f"at {spec.sfreq:g} Hz, but a window needs {spec.n_times} samples ({spec.window_s:g} s)"
        )

    # A view, not a copy: windows are cut and normalized one batch at a time.
    windows = data[:, :n_windows * spec.n_times].reshape(spec.n_chans, n_windows, spec.n_times)
    windows = windows.transpose(1, 0, 2)
    labels, proba, flags = score_windows(model, windows, batch_size=batch_size)

    n_flat = sum("flat" in flag for flag in flags)
    if n_flat > n_windows / 2:
        logger.warning("%s: %d of %d windows have a flat channel: check that the signal is in the "
                       "units the model was trained on (its scale per channel is %s)",
                       name, n_flat, n_windows, ", ".join(f"{scale:g}" for scale in spec.scale))

    leftover = n_samples - n_windows * spec.n_times
    if leftover:
        logger.info("%s: the last %d samples (%.1f s) do not fill a window and are not scored",
                    name, leftover, leftover / spec.sfreq)
    return ScoreResult(
        name=name, stage_names=tuple(spec.stage_names), scheme=spec.scheme, window_s=spec.window_s,
        onsets_s=np.arange(n_windows, dtype=np.float64) * spec.window_s, labels=labels,
        proba=proba, flags=flags, recording_s=n_samples / spec.sfreq, leftover_samples=leftover,
    )


def recording_name(psg_path: str | os.PathLike) -> str:
    """Return the name outputs of a recording carry: its file stem, nothing from the header."""
    return Path(psg_path).stem


def score_recording(model: SleepModel, psg_path: str | os.PathLike, *, batch_size: int = 64,
                    name: str | None = None) -> ScoreResult:
    """Read a PSG file and score it window by window.

    The model's channels are picked by name (common aliases accepted), brought to its
    sampling rate, cut into windows from the first sample, normalized with its window
    spec and scored. Samples after the last whole window are not scored.

    Parameters
    ----------
    model : SleepModel
    psg_path : path-like
        EDF or BDF file.
    batch_size : int
        Windows per onnxruntime call.
    name : str, optional
        Name for messages and outputs; default the file stem.

    Raises
    ------
    SleepnasError
        The file is missing or unreadable, a channel is missing, the rate cannot be
        brought to the model's, or the recording is shorter than one window.
    """
    from .recordings import read_signals

    psg_path = Path(psg_path)
    name = name or recording_name(psg_path)
    if not psg_path.is_file():
        raise SleepnasError(f"recording {psg_path} not found: expected an EDF or BDF file")

    spec = model.spec
    try:
        data, sfreq = read_signals(psg_path, spec.channels, sfreq=spec.sfreq, check_values=False)
    except (ValueError, RuntimeError, EOFError) as err:
        # MNE reports a truncated or malformed EDF with these.
        raise SleepnasError(f"cannot read {psg_path.name}: {err}; expected a complete EDF/BDF "
                            f"file") from None
    if not np.isclose(sfreq, spec.sfreq):
        raise SleepnasError(
            f"{psg_path.name} gives signals at {sfreq:g} Hz but model {model.path.name} "
            f"needs {spec.sfreq:g} Hz"
        )
    return score_signals(model, data, batch_size=batch_size, name=name)


class Scorer:
    """Score a signal that arrives in chunks, one result per completed window.

    Memory stays bounded: the scorer keeps at most one incomplete window, and scores
    completed windows in batches of ``batch_size``. For the same samples it returns
    the same stages as `score_signals`, whatever the chunk sizes.

    Parameters
    ----------
    model : SleepModel
    batch_size : int
        Windows per onnxruntime call when a chunk completes several windows.

    Examples
    --------
    >>> scorer = Scorer(load_model("model.onnx"))          # doctest: +SKIP
    >>> for chunk in chunks:                                  # doctest: +SKIP
    ...     for window in scorer.push(chunk):
    ...         print(window.onset_s, window.stage)
    >>> leftover = scorer.flush()                             # doctest: +SKIP
    """

    def __init__(self, model: SleepModel, *, batch_size: int = 64) -> None:
        check_positive("--batch-size", batch_size)
        self.model = model
        self.batch_size = int(batch_size)
        spec = model.spec
        self._buffer = np.empty((spec.n_chans, spec.n_times), dtype=np.float32)
        self._filled = 0
        self._next_index = 0

    @property
    def n_windows(self) -> int:
        """Windows scored so far."""
        return self._next_index

    @property
    def pending_samples(self) -> int:
        """Samples per channel of the incomplete window waiting for more data."""
        return self._filled

    def push(self, samples: np.ndarray) -> list[WindowResult]:
        """Add samples and score every window they complete.

        Parameters
        ----------
        samples : ndarray, shape (n_chans, n_samples)
            Samples at the model's rate, in its channel order; any length, also 0.

        Returns
        -------
        list of WindowResult
            One per window completed by this chunk, in order.
        """
        spec = self.model.spec
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[0] != spec.n_chans:
            raise SleepnasError(
                f"pushed samples of shape {samples.shape}: expected ({spec.n_chans}, n_samples) "
                f"in channel order {', '.join(spec.channels)}"
            )

        results: list[WindowResult] = []
        pending: list[np.ndarray] = []
        position = 0
        n_samples = samples.shape[1]
        while position < n_samples:
            take = min(spec.n_times - self._filled, n_samples - position)
            self._buffer[:, self._filled:self._filled + take] = samples[:, position:position + take]
            self._filled += take
            position += take
            if self._filled == spec.n_times:
                pending.append(self._buffer.copy())
                self._filled = 0
            if len(pending) == self.batch_size:
                results.extend(self._score(pending))
                pending = []
        if pending:
            results.extend(self._score(pending))
        return results

    def flush(self) -> int:
        """End the stream: drop the incomplete window and return its samples per channel."""
        leftover = self._filled
        if leftover:
            logger.debug("stream ended mid-window: %d samples per channel (%.1f s) not scored",
                        leftover, leftover / self.model.spec.sfreq)
        self._filled = 0
        return leftover

    def _score(self, windows: list[np.ndarray]) -> list[WindowResult]:
        spec = self.model.spec
        labels, proba, flags = score_windows(self.model, np.stack(windows), batch_size=self.batch_size)
        results = []
        for label, p, flag in zip(labels, proba, flags):
            index = self._next_index
            results.append(WindowResult(index=index, onset_s=index * spec.window_s,
                                        stage=spec.stage_names[label],
                                        probabilities=tuple(float(v) for v in p), flag=flag))
            self._next_index += 1
        return results
