"""Reading PSG signals by name with MNE, brought to the model's sampling rate.

Signals are read one sampling rate at a time. Slower signals, such as Sleep-EDF's
1-Hz signals, are upsampled the way MNE's EDF reader does it for files of mixed
rates, and faster ones are downsampled with ``Raw.resample``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .channels import match_channels, normalize_name
from .edf import EdfHeader, read_edf_header
from .errors import SleepnasError

_TIME_TOLERANCE_S = 1e-6


def _check_rates(header: EdfHeader, names: Sequence[str], sfreq: float, window_s: float) -> None:
    target_samples = sfreq * window_s
    if not sfreq > 0 or abs(target_samples - round(target_samples)) > _TIME_TOLERANCE_S:
        raise SleepnasError(
            f"invalid sampling rate {sfreq:g} Hz for {window_s:g}-s windows: expected a rate "
            f"that gives a whole number of samples per window, such as 100 Hz"
        )
    if not header.record_duration_s > 0:
        raise SleepnasError(f"{header.path} has data record duration {header.record_duration_s:g} s: "
                            f"expected a positive duration for a file with signals")
    for name in names:
        rate = header.sfreq(name)
        samples = rate * window_s
        # A rate with a fractional number of samples per window puts window borders
        # between samples, so no resampling gives windows that match the hypnogram.
        if abs(samples - round(samples)) > 1e-6 or round(samples) < 1:
            raise SleepnasError(
                f"signal {name!r} of {header.path} has sampling rate {rate:g} Hz, which cannot "
                f"be brought to {sfreq:g} Hz for {window_s:g}-s windows: expected a rate that "
                f"gives a whole number of samples per window"
            )


def _may_be_flat(name: str) -> bool:
    key = normalize_name(name)
    return any(word in key for word in ("event", "marker", "status", "trigger"))


def check_signal_values(data: np.ndarray, names: Sequence[str], source: str) -> None:
    """Raise a `SleepnasError` if a signal contains NaN or is flat over the whole recording.

    Event and marker channels may be flat: an unused event marker is constant.
    """
    for row, name in zip(data, names):
        if np.isnan(row).any():
            raise SleepnasError(f"signal {name!r} of {source} contains NaN values")
        if not _may_be_flat(name) and row.size and row.min() == row.max():
            raise SleepnasError(
                f"signal {name!r} of {source} is flat (constant {row[0]:g}) over the whole "
                f"recording: check the recording or choose other --channels"
            )


def upsample_fft(signal: np.ndarray, factor: int) -> np.ndarray:
    """Upsample a signal by an integer factor with FFT (trigonometric) interpolation.

    The result equals ``mne.filter.resample(signal, factor, 1, npad=0)``, the
    resampling MNE's EDF reader applies to the slower signals of a file with mixed
    rates, up to float64 rounding. It is computed as ``factor`` inverse FFTs of the
    input length, one per output phase, instead of one inverse FFT of ``factor``
    times the input length, whose size often has a large prime factor and is slow.

    Parameters
    ----------
    signal : ndarray, shape (n_times,)
    factor : int
        Output samples per input sample.

    Returns
    -------
    ndarray of float64, shape (n_times * factor,)
    """
    n = len(signal)
    spectrum = np.fft.rfft(np.asarray(signal, dtype=np.float64))

    # Output sample j * factor + p is the input's interpolant at j + p / factor: the
    # input spectrum shifted by that fraction of a sample, transformed back. For an
    # even n, MNE halves the Nyquist bin and a long inverse FFT counts it twice, while
    # an inverse FFT of length n counts its real part once, so the two agree unchanged.
    bins = np.arange(len(spectrum))
    out = np.empty((n, factor), dtype=np.float64)
    for phase in range(factor):
        shift = np.exp(2j * np.pi * bins * phase / (n * factor))
        out[:, phase] = np.fft.irfft(spectrum * shift, n)
    return out.reshape(-1)


def _read_group(reader, header: EdfHeader, group: list[str], rate: float, sfreq: float,
                n_times: int) -> dict[str, np.ndarray]:
    """Read signals that share one rate and bring each to ``sfreq``, as float32."""
    import mne

    try:
        raw = reader(header.path, include=list(group), preload=True, verbose="error")
    except (ValueError, RuntimeError, OSError) as err:
        raise SleepnasError(f"{header.path} could not be read as {header.kind}: {err}") from None
    if rate > sfreq + _TIME_TOLERANCE_S:
        raw.resample(sfreq, verbose="error")

    signals = {}
    for name in group:
        signal = raw.get_data(picks=[name])[0]
        if rate < sfreq - _TIME_TOLERANCE_S:
            # The same FFT resampling, over the whole signal and without padding, that
            # MNE's EDF reader applies when it reads signals of mixed rates together.
            if n_times % len(signal) == 0:
                signal = upsample_fft(signal, n_times // len(signal))
            else:
                signal = mne.filter.resample(signal, n_times, len(signal), npad=0,
                                             verbose="error")
        if len(signal) != n_times:
            raise SleepnasError(f"signal {name!r} of {header.path} has {len(signal)} samples at "
                                f"{sfreq:g} Hz: expected {n_times} from its header")
        signals[name] = signal.astype(np.float32)
    return signals


def read_signals(psg_path: str | os.PathLike, channels: Sequence[str], sfreq: float = 100.0,
                 *, window_s: float = 30.0, check_values: bool = True) -> tuple[np.ndarray, float]:
    """Read signals of a PSG file by name, brought to ``sfreq``.

    Signals are read with MNE one rate at a time. Slower signals (Sleep-EDF's 1-Hz
    signals) are upsampled with the FFT resampling over the whole recording that
    MNE's reader applies to signals of mixed rates, so the values equal those of
    ``mne.io.read_raw_edf(..., preload=True)`` on the whole file. Faster signals are
    downsampled with ``Raw.resample``. Reading one rate at a time needs far less
    memory than MNE's mixed-rate reader.

    Parameters
    ----------
    psg_path : path
        EDF or BDF file.
    channels : sequence of str
        Channel names in the order wanted; matched as in `match_channels`.
    sfreq : float
        Output sampling rate in Hz.
    window_s : float
        Window length in seconds; every signal's rate must give whole samples per window.
    check_values : bool
        Reject a signal with NaN values or one flat over the whole recording
        (`check_signal_values`). Scoring turns this off because it flags such windows.

    Returns
    -------
    data : ndarray of float32, shape (n_chans, n_times)
        Signals in SI units as MNE returns them (volts for signals stored in uV).
    sfreq : float
        The sampling rate of ``data`` in Hz.
    """
    import mne

    header = read_edf_header(psg_path)
    source = header.path.name
    names = match_channels(header.labels, channels, source)
    _check_rates(header, names, sfreq, window_s)

    groups: dict[float, list[str]] = {}
    for name in names:
        groups.setdefault(header.sfreq(name), []).append(name)
    reader = mne.io.read_raw_bdf if header.kind == "BDF" else mne.io.read_raw_edf
    n_times = int(round(header.duration_s * sfreq))
    data = np.empty((len(names), n_times), dtype=np.float32)
    for rate, group in groups.items():
        for name, signal in _read_group(reader, header, group, rate, sfreq, n_times).items():
            data[names.index(name)] = signal

    if check_values:
        check_signal_values(data, names, source)
    return data, float(sfreq)
