"""Synthetic polysomnography signals for a given stage sequence, in Sleep-EDF cassette form.

Each stage gets the features a scorer looks for (Rechtschaffen & Kales, 1968):

- W: alpha (8-12 Hz) with the eyes closed, blinks and saccades with the eyes open,
  high chin EMG and beta/muscle activity in the EEG.
- S1: theta, fading alpha (under half the window), slow eye movements, vertex waves,
  chin EMG between wake and S2. It is made to overlap with W and REM, as in real data.
- S2: spindles (11-16 Hz bursts of 0.5-2 s) and K-complexes on a theta/delta background.
- S3 and S4: high-amplitude delta (under 2 Hz, sized for the 75 uV peak-to-peak criterion)
  over 20-50 % and over 50 % of the window.
- REM: low-voltage mixed activity with theta and sawtooth waves, rapid eye movements in
  bursts (phasic windows only) and the lowest chin EMG, with twitches.
- MT: large movement artifacts on every channel.

Each window's physiology blends its scored stage with a neighbouring one, most near bout
edges and in S1, because features change gradually and scorers label the dominant
pattern. Under everything lies a 1/f background. Breathing is slow and regular in deep
sleep and irregular in wake and REM. Rectal temperature follows a circadian curve with
its minimum in the early morning. Amplitudes and rhythms vary between subjects
(`SubjectTraits`), so absolute levels alone do not give the stage away.

Signals are built for the whole night at once with numpy (band-limited noise made in
the frequency domain, events added as waveform tables). ``benchmarks/bench_synth.py``
measured about 2 s for the signals of a 9-h night on a shared 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stage_model import MT, REM, S1, S2, S3, S4, W, WINDOW_S

#: Rate of the EEG and EOG signals and of the slow signals (Hz), as in cassette files.
EEG_SFREQ = 100
SLOW_SFREQ = 1
_PER_WINDOW = int(WINDOW_S * EEG_SFREQ)

# Per-stage levels for a typical subject, indexed by state (W, S1, S2, S3, S4, REM, MT).
# Amplitudes are RMS values in uV on Fpz-Cz before the subject's gain.
_BACKGROUND_UV = np.array([8.0, 8.0, 9.0, 10.0, 10.0, 7.0, 40.0])
_THETA_UV = np.array([3.0, 7.5, 6.0, 5.0, 5.0, 7.5, 10.0])
_LOW_DELTA_UV = np.array([3.0, 5.0, 7.0, 8.0, 8.0, 4.0, 30.0])
_MUSCLE_UV = np.array([4.0, 1.8, 1.0, 0.8, 0.8, 0.5, 35.0])
#: Fraction of the window covered by high-amplitude delta: (low, high) of a uniform draw.
_DELTA_FRACTION = np.array([[0.0, 0.0], [0.0, 0.05], [0.0, 0.12], [0.22, 0.45],
                            [0.53, 0.92], [0.0, 0.03], [0.0, 0.0]])
#: Fraction of the window with alpha. Wake windows with the eyes open get less (see `_eeg_channels`).
_ALPHA_FRACTION = np.array([[0.55, 1.0], [0.0, 0.45], [0.0, 0.05], [0.0, 0.0],
                            [0.0, 0.0], [0.0, 0.15], [0.0, 0.3]])
#: Events per minute.
_SPINDLES_PER_MIN = np.array([0.0, 0.3, 5.0, 3.0, 1.5, 0.0, 0.0])
_K_COMPLEXES_PER_MIN = np.array([0.0, 0.15, 1.5, 1.0, 0.5, 0.0, 0.0])
_VERTEX_WAVES_PER_MIN = np.array([0.0, 2.5, 0.3, 0.0, 0.0, 0.0, 0.0])
_SAWTOOTH_PER_MIN = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 0.0])
_SEM_UV = np.array([8.0, 30.0, 10.0, 3.0, 3.0, 6.0, 40.0])
#: Chin EMG envelope in uV RMS (the cassette EMG is an envelope sampled at 1 Hz).
_EMG_UV = np.array([2.7, 1.9, 1.5, 1.3, 1.25, 0.55, 4.6])


@dataclass(frozen=True)
class SubjectTraits:
    """Amplitudes and rhythms of one subject, shared by that subject's nights."""

    eeg_gain: float
    pz_gain: float
    alpha_hz: float
    alpha_uv: float
    spindle_hz: float
    spindle_rate: float
    delta_gain: float
    emg_gain: float
    eog_gain: float
    breaths_per_min: float
    resp_amplitude: float
    temp_mesor_c: float
    temp_amplitude_c: float
    spectral_exponent: float
    #: Per-stage factors on the EEG and chin EMG levels, so stages differ by subject too.
    stage_levels: tuple[float, ...] = (1.0,) * 7

    @classmethod
    def draw(cls, rng: np.random.Generator) -> SubjectTraits:
        """Draw the traits of one subject."""
        return cls(
            eeg_gain=float(rng.lognormal(0.0, 0.2)),
            pz_gain=float(rng.lognormal(0.0, 0.15)),
            alpha_hz=float(rng.uniform(8.5, 11.5)),
            alpha_uv=float(12.0 * rng.lognormal(0.0, 0.35)),
            spindle_hz=float(rng.uniform(12.0, 14.5)),
            spindle_rate=float(rng.lognormal(0.0, 0.3)),
            delta_gain=float(rng.lognormal(0.0, 0.15)),
            emg_gain=float(rng.lognormal(0.0, 0.3)),
            eog_gain=float(rng.lognormal(0.0, 0.25)),
            breaths_per_min=float(rng.uniform(12.0, 18.0)),
            resp_amplitude=float(rng.uniform(300.0, 900.0)),
            temp_mesor_c=float(rng.uniform(36.6, 37.1)),
            temp_amplitude_c=float(rng.uniform(0.25, 0.5)),
            spectral_exponent=float(rng.uniform(0.8, 1.4)),
            stage_levels=tuple(float(v) for v in rng.lognormal(0.0, 0.15, size=7)),
        )


def _fast_fft_length(n: int) -> int:
    """Return the smallest 5-smooth number (2**a * 3**b * 5**c) >= n.

    A night of a prime number of windows would otherwise make the FFT many times slower.
    """
    best = 2 * n
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35
            while length < n:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


def _band_noise(rng: np.random.Generator, n: int, sfreq: float, low: float, high: float,
                exponent: float = 0.0) -> np.ndarray:
    """Make Gaussian noise of unit RMS with power in ``[low, high]`` Hz falling as 1/f**exponent.

    Made in single precision, which is 16-bit EDF's resolution many times over and makes
    the inverse FFT several times faster.
    """
    n_fft = _fast_fft_length(n)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sfreq).astype(np.float32)
    first, stop = np.searchsorted(freqs, [low, high], side="left")[0], np.searchsorted(freqs, high, side="right")
    gain = freqs[first:stop] ** np.float32(-exponent / 2.0)
    spectrum = np.zeros(len(freqs), dtype=np.complex64)
    spectrum.real[first:stop] = rng.standard_normal(stop - first, dtype=np.float32) * gain
    spectrum.imag[first:stop] = rng.standard_normal(stop - first, dtype=np.float32) * gain
    x = np.fft.irfft(spectrum, n_fft)[:n]
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float32))))
    return x / np.float32(rms or 1.0)


def _per_sample(values: np.ndarray, repeat: int, smooth: int) -> np.ndarray:
    """Hold one value per window for ``repeat`` samples, with linear ramps of ``smooth`` samples between windows.

    The result equals the held steps blurred by a moving average of ``smooth`` samples
    (for ``smooth <= repeat``), made by interpolation because that is much faster.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values) * repeat
    if smooth <= 1 or len(values) == 1:
        return np.repeat(values, repeat).astype(np.float32)
    half = min(smooth, repeat) / 2.0
    edges = np.arange(1, len(values)) * repeat - 0.5
    knots = np.column_stack([edges - half, edges + half]).ravel()
    levels = np.column_stack([values[:-1], values[1:]]).ravel()
    return np.interp(np.arange(n, dtype=np.float64), knots, levels).astype(np.float32)


def _gate(rng: np.random.Generator, fractions: np.ndarray) -> np.ndarray:
    """Make a 0-1 mask at 100 Hz that is on over ``fractions[i]`` of window ``i``, in slow waxing spells."""
    n_windows = len(fractions)
    slow = _band_noise(rng, n_windows * 300, 10.0, 0.03, 0.4).reshape(n_windows, 300)
    order = np.sort(slow, axis=1)
    k = np.clip(np.round((1.0 - fractions) * 300).astype(np.int64), 0, 299)
    threshold = np.where(fractions <= 0, np.inf, order[np.arange(n_windows), k])
    mask = (slow >= threshold[:, None]).astype(np.float64).ravel()
    return _per_sample(mask, EEG_SFREQ // 10, 20)


def _events(rng: np.random.Generator, per_min: np.ndarray) -> np.ndarray:
    """Sample positions (at 100 Hz) of Poisson events with ``per_min[i]`` events per minute in window ``i``."""
    counts = rng.poisson(np.asarray(per_min) * WINDOW_S / 60.0)
    windows = np.repeat(np.arange(len(counts)), counts)
    return windows * _PER_WINDOW + rng.integers(0, _PER_WINDOW, size=len(windows))


def _add(signal: np.ndarray, positions: np.ndarray, waves: np.ndarray) -> None:
    """Add waveform rows ``waves[i]`` to ``signal`` starting at ``positions[i]`` (cut at the end)."""
    if len(positions) == 0:
        return
    index = positions[:, None] + np.arange(waves.shape[1])
    keep = index < len(signal)
    signal += np.bincount(index[keep], weights=waves[keep], minlength=len(signal))


def _time_axis(length_s: float) -> np.ndarray:
    return np.arange(int(round(length_s * EEG_SFREQ))) / EEG_SFREQ


def _spindles(rng: np.random.Generator, n: int, hz: float) -> np.ndarray:
    t = _time_axis(2.0)
    duration = rng.uniform(0.5, 2.0, size=(n, 1))
    envelope = np.where(t < duration, np.sin(np.pi * t / duration) ** 2, 0.0)
    freq = rng.normal(hz, 0.5, size=(n, 1))
    return rng.uniform(15.0, 35.0, size=(n, 1)) * envelope * np.sin(
        2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, size=(n, 1)))


def _k_complexes(rng: np.random.Generator, n: int) -> np.ndarray:
    t = _time_axis(1.5)
    sharp = np.exp(-0.5 * ((t - 0.3) / 0.08) ** 2)
    slow = np.exp(-0.5 * ((t - 0.75) / 0.2) ** 2)
    amplitude = rng.uniform(45.0, 95.0, size=(n, 1))
    return amplitude * (slow * rng.uniform(0.6, 0.9, size=(n, 1)) - sharp)


def _vertex_waves(rng: np.random.Generator, n: int) -> np.ndarray:
    t = _time_axis(0.4)
    return -rng.uniform(25.0, 60.0, size=(n, 1)) * np.exp(-0.5 * ((t - 0.15) / 0.05) ** 2)


def _sawtooth_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    t = _time_axis(4.0)
    duration = rng.uniform(1.5, 4.0, size=(n, 1))
    cycles = rng.uniform(2.0, 4.0, size=(n, 1)) * t
    ramp = 1.0 - 2.0 * (cycles % 1.0) ** 0.6
    envelope = np.sqrt(np.clip(np.sin(np.pi * np.minimum(t / duration, 1.0)), 0.0, None))
    return rng.uniform(15.0, 35.0, size=(n, 1)) * envelope * ramp


def _eye_movements(rng: np.random.Generator, n: int, amplitude: tuple[float, float],
                   rise_s: tuple[float, float]) -> np.ndarray:
    """Make eye-movement waveforms: steps of gaze seen through the recorder's 0.5 Hz high-pass."""
    t = _time_axis(1.5)
    rise = rng.uniform(*rise_s, size=(n, 1))
    sign = rng.choice([-1.0, 1.0], size=(n, 1))
    onset = np.clip(t / rise, 0.0, 1.0)
    decay = np.exp(-np.maximum(t - rise, 0.0) / 0.32)
    return sign * rng.uniform(*amplitude, size=(n, 1)) * onset * onset * (3 - 2 * onset) * decay


def _blinks(rng: np.random.Generator, n: int) -> np.ndarray:
    t = _time_axis(0.6)
    return rng.uniform(50.0, 140.0, size=(n, 1)) * np.exp(-0.5 * ((t - 0.2) / 0.06) ** 2)


@dataclass(frozen=True)
class _Blend:
    """The physiology of each window: its scored stage blended with a neighbouring stage.

    Scorers label a window by its dominant pattern, and features change gradually at
    stage transitions, so a window near a bout edge looks partly like the next stage.
    S1 windows blend most (with W, S2 or REM), which keeps S1 as ambiguous as in real
    recordings.
    """

    states: np.ndarray
    other: np.ndarray
    weight: np.ndarray

    def per_window(self, table: np.ndarray) -> np.ndarray:
        """Blend a per-stage table into one value per window."""
        return (1.0 - self.weight) * table[self.states] + self.weight * table[self.other]

    def draw(self, rng: np.random.Generator, ranges: np.ndarray) -> np.ndarray:
        """Blend uniform draws from per-stage ``(low, high)`` ranges."""
        own = ranges[self.states, 0] + np.ptp(ranges, axis=1)[self.states] * rng.random(len(self.states))
        other = ranges[self.other, 0] + np.ptp(ranges, axis=1)[self.other] * rng.random(len(self.states))
        return (1.0 - self.weight) * own + self.weight * other


#: Largest extra blend weight a window of each stage draws, on top of the weight near a bout edge.
_EXTRA_BLEND = np.array([0.2, 0.6, 0.2, 0.1, 0.1, 0.2, 0.0])


def _blend(rng: np.random.Generator, states: np.ndarray) -> _Blend:
    """Choose, per window, the neighbouring stage its physiology leans to, and how far."""
    from .stage_model import run_lengths

    state, start, length = run_lengths(states)
    bout = np.repeat(np.arange(len(state)), length)
    position = np.arange(len(states)) - start[bout]
    to_start, to_end = position, length[bout] - 1 - position
    previous = np.concatenate([[state[0]], state[:-1]])[bout]
    following = np.concatenate([state[1:], [state[-1]]])[bout]
    other = np.where(to_start <= to_end, previous, following)

    # Inside a long S1 bout the physiology leans to W, S2 or REM at random.
    lone_s1 = (states == S1) & (other == S1)
    other[lone_s1] = rng.choice(np.array([W, S2, REM]), size=int(lone_s1.sum()), p=[0.4, 0.3, 0.3])
    other[states == MT] = states[states == MT]

    edge = 0.35 * np.exp(-np.minimum(to_start, to_end) / 1.5)
    weight = np.clip(edge + _EXTRA_BLEND[states] * rng.random(len(states)), 0.0, 0.8)
    weight[other == states] = 0.0
    return _Blend(states=states, other=other, weight=weight)


def _eyes_open(rng: np.random.Generator, states: np.ndarray, lights_off: int) -> np.ndarray:
    """Draw whether the eyes are open in each wake window: mostly before lights-off, seldom after.

    The state persists for a few minutes, as it does in a subject reading or lying in bed.
    """
    p_open = np.where(np.arange(len(states)) < lights_off, 0.75, 0.25)
    flips = rng.random(len(states)) < 0.15
    draws = rng.random(len(states)) < p_open
    open_ = np.empty(len(states), dtype=bool)
    current = bool(draws[0])
    for i in range(len(states)):
        if flips[i]:
            current = bool(draws[i])
        open_[i] = current
    return open_ & (states == W)


def _eeg_channels(rng: np.random.Generator, blend: _Blend, eyes_open: np.ndarray, sleep_h: np.ndarray,
                  traits: SubjectTraits) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the cortical part of Fpz-Cz and Pz-Oz, the delta that reaches the EOG, and the muscle noise."""
    n_windows = len(blend.states)
    n = n_windows * _PER_WINDOW
    sfreq = float(EEG_SFREQ)
    jitter = rng.lognormal(0.0, 0.25, size=(4, n_windows))

    stage_levels = np.asarray(traits.stage_levels)

    def level(per_stage: np.ndarray, row: int) -> np.ndarray:
        return _per_sample(blend.per_window(per_stage * stage_levels) * jitter[row], _PER_WINDOW, 200)

    # 1/f background: a part both derivations share and a part of their own.
    exponent = traits.spectral_exponent
    background = level(_BACKGROUND_UV, 0)
    shared = _band_noise(rng, n, sfreq, 0.5, 40.0, exponent)
    fpz = background * (0.8 * shared + 0.6 * _band_noise(rng, n, sfreq, 0.5, 40.0, exponent))
    pz = background * (0.8 * shared + 0.6 * _band_noise(rng, n, sfreq, 0.5, 40.0, exponent))

    theta = level(_THETA_UV, 1) * _band_noise(rng, n, sfreq, 4.0, 7.5)
    low_delta = level(_LOW_DELTA_UV, 2) * _band_noise(rng, n, sfreq, 0.5, 3.0, 1.0)

    # High-amplitude slow waves (under 2 Hz) over the scored fraction of the window. Their
    # amplitude declines over the night as sleep pressure dissipates.
    decline = _per_sample(np.clip(1.15 - 0.04 * sleep_h, 0.8, 1.15), _PER_WINDOW, 200)
    slow_waves = (42.0 * traits.delta_gain * decline * _gate(rng, blend.draw(rng, _DELTA_FRACTION))
                  * _band_noise(rng, n, sfreq, 0.6, 1.8))

    # Alpha comes with eyes-closed wake, fades in S1 and is brief in REM. Open eyes block it.
    alpha_fraction = blend.draw(rng, _ALPHA_FRACTION)
    alpha_fraction[eyes_open] = rng.uniform(0.0, 0.12, size=int(eyes_open.sum()))
    alpha = (traits.alpha_uv * _gate(rng, alpha_fraction)
             * _band_noise(rng, n, sfreq, traits.alpha_hz - 0.7, traits.alpha_hz + 0.7))

    muscle = level(_MUSCLE_UV, 3) * _band_noise(rng, n, sfreq, 20.0, 45.0)
    fpz += theta + low_delta + slow_waves + 0.5 * alpha + muscle
    pz += 0.8 * theta + 0.6 * low_delta + 0.55 * slow_waves + 1.3 * alpha + 0.5 * muscle

    # Graphoelements, on both derivations with the weights of their scalp maxima.
    for per_min, waves, pz_weight in (
        (_SPINDLES_PER_MIN * traits.spindle_rate, None, 0.7),
        (_K_COMPLEXES_PER_MIN, _k_complexes, 0.5),
        (_VERTEX_WAVES_PER_MIN, _vertex_waves, 0.4),
        (_SAWTOOTH_PER_MIN, _sawtooth_bursts, 0.5),
    ):
        positions = _events(rng, blend.per_window(per_min))
        if waves is None:
            table = _spindles(rng, len(positions), traits.spindle_hz)
        else:
            table = waves(rng, len(positions))
        _add(fpz, positions, table)
        _add(pz, positions, pz_weight * table)

    gain = traits.eeg_gain
    return gain * fpz, gain * traits.pz_gain * pz, gain * (low_delta + slow_waves), muscle


def _eye_channels(rng: np.random.Generator, blend: _Blend, eyes_open: np.ndarray,
                  traits: SubjectTraits) -> tuple[np.ndarray, np.ndarray]:
    """Return horizontal eye movements (the EOG derivation) and blinks (which reach Fpz)."""
    states = blend.states
    n = len(states) * _PER_WINDOW
    sem_uv = blend.per_window(_SEM_UV) * rng.lognormal(0.0, 0.4, len(states))
    horizontal = _per_sample(sem_uv, _PER_WINDOW, 300) * _band_noise(rng, n, float(EEG_SFREQ), 0.25, 0.7)

    # Saccades and blinks come with open eyes. Closed eyes and drowsiness bring fewer blinks.
    saccade_rate = np.where(eyes_open, 20.0, 0.0)
    blink_rate = np.where(eyes_open, 14.0, np.where(states == W, 3.0, np.where(states == S1, 1.0, 0.0)))
    positions = _events(rng, saccade_rate)
    _add(horizontal, positions, _eye_movements(rng, len(positions), (30.0, 120.0), (0.03, 0.05)))

    # Rapid eye movements come in bursts, in the phasic windows of REM (about half of them).
    rem_share = blend.per_window((np.arange(7) == REM).astype(np.float64))
    phasic = rng.random(len(states)) < 0.55 * rem_share
    bursts = _events(rng, np.where(phasic, 6.0, 0.0))
    per_burst = rng.integers(2, 7, size=len(bursts))
    gaps = rng.uniform(0.3, 1.0, size=int(per_burst.sum())) * EEG_SFREQ
    steps = np.concatenate([np.arange(k) for k in per_burst]) if len(per_burst) else np.zeros(0)
    positions = np.repeat(bursts, per_burst) + (gaps * steps).astype(np.int64)
    _add(horizontal, positions, _eye_movements(rng, len(positions), (80.0, 250.0), (0.05, 0.1)))

    blinks = np.zeros(n, dtype=np.float32)
    positions = _events(rng, blink_rate)
    _add(blinks, positions, _blinks(rng, len(positions)))
    return traits.eog_gain * horizontal, traits.eog_gain * blinks


def _movement_artifacts(rng: np.random.Generator, states: np.ndarray) -> np.ndarray:
    """Large slow swings and broadband bursts in movement-time windows (and a few in wake)."""
    n = len(states) * _PER_WINDOW
    weight = np.where(states == MT, 1.0, np.where(states == W, 0.05 * (rng.random(len(states)) < 0.1), 0.0))
    envelope = _per_sample(weight, _PER_WINDOW, 100)
    if not envelope.any():
        return np.zeros(n, dtype=np.float32)
    swings = 150.0 * _band_noise(rng, n, float(EEG_SFREQ), 0.3, 3.0)
    bursts = 80.0 * _band_noise(rng, n, float(EEG_SFREQ), 3.0, 45.0)
    return envelope * (swings + bursts)


def _emg_envelope(rng: np.random.Generator, blend: _Blend, traits: SubjectTraits) -> np.ndarray:
    """Chin EMG as the cassette recorder gives it: an RMS envelope in uV sampled at 1 Hz."""
    per_window = int(WINDOW_S * SLOW_SFREQ)
    level = blend.per_window(_EMG_UV * np.asarray(traits.stage_levels)) * rng.lognormal(0.0, 0.2, len(blend.states))
    # Tone changes over a minute or so, so S1 next to REM is nearly as slack as REM.
    level = np.convolve(np.pad(level, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    envelope = _per_sample(level, per_window, 5) * traits.emg_gain
    envelope *= rng.lognormal(0.0, 0.08, len(envelope)).astype(np.float32)

    # Twitches in REM and body movements in wake: a few seconds of higher tone.
    for stage, per_min, size in ((REM, 0.8, 1.5), (W, 0.6, 2.5)):
        positions = _events(rng, np.where(blend.states == stage, per_min, 0.0)) // EEG_SFREQ
        if len(positions):
            twitch = np.outer(rng.uniform(0.3, 1.0, len(positions)) * size, [0.5, 1.0, 0.6, 0.2])
            _add(envelope, positions, twitch * traits.emg_gain)

    # The recorder's envelope saturates smoothly below the 5 uV top of the file's range.
    knee = 3.5
    return np.where(envelope > knee, knee + 1.4 * np.tanh((envelope - knee) / 1.4), envelope)


def _respiration(rng: np.random.Generator, blend: _Blend, traits: SubjectTraits) -> np.ndarray:
    """Oro-nasal thermistor airflow at 1 Hz: regular in deep sleep, irregular in wake and REM."""
    per_window = int(WINDOW_S * SLOW_SFREQ)
    rate_factor = blend.per_window(np.array([1.08, 1.0, 0.95, 0.92, 0.92, 1.05, 1.15]))
    variability = blend.per_window(np.array([0.15, 0.1, 0.06, 0.03, 0.03, 0.15, 0.25]))
    amplitude = blend.per_window(np.array([1.0, 0.85, 0.8, 0.8, 0.8, 0.7, 1.4]))
    n = len(blend.states) * per_window

    rate_hz = traits.breaths_per_min / 60.0 * _per_sample(rate_factor, per_window, 20)
    rate_hz *= 1.0 + _per_sample(variability, per_window, 20) * _band_noise(rng, n, 1.0, 0.01, 0.1)
    phase = 2 * np.pi * np.cumsum(np.clip(rate_hz, 0.08, 0.45), dtype=np.float64) / SLOW_SFREQ
    depth = _per_sample(amplitude, per_window, 20) * (
        1.0 + _per_sample(variability, per_window, 20) * 2 * _band_noise(rng, n, 1.0, 0.005, 0.05))
    flow = np.sin(phase) + 0.25 * np.sin(2 * phase + 0.5)
    return traits.resp_amplitude * np.clip(depth, 0.2, 3.0) * flow


def _temperature(rng: np.random.Generator, plan_clock_h: np.ndarray, asleep: np.ndarray,
                 traits: SubjectTraits) -> np.ndarray:
    """Rectal temperature in degC at 1 Hz: circadian curve (minimum near 05:00) and a drop in sleep."""
    per_window = int(WINDOW_S * SLOW_SFREQ)
    clock = np.interp(np.arange(len(plan_clock_h) * per_window) / per_window,
                      np.arange(len(plan_clock_h)), plan_clock_h)
    # Hours after noon: the circadian minimum near 05:00 is at 17.0.
    circadian = -traits.temp_amplitude_c * np.cos(2 * np.pi * (clock - 17.0) / 24.0)
    # Sleep lowers core temperature by a few tenths of a degree, with a lag of about half an hour.
    lagged = np.empty(len(asleep))
    current = 0.0
    for i, value in enumerate(asleep):
        current += (float(value) - current) / 60.0
        lagged[i] = current
    sleep_drop = -0.15 * _per_sample(lagged, per_window, per_window)
    drift = 0.02 * _band_noise(rng, len(clock), 1.0, 0.0002, 0.01)
    return traits.temp_mesor_c + circadian + sleep_drop + drift


def synthesize_signals(rng: np.random.Generator, states: np.ndarray, clock_h: np.ndarray,
                       lights_off: int, traits: SubjectTraits) -> dict[str, np.ndarray]:
    """Build the seven cassette signals of one night in physical units.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    states : ndarray of int
        State index per 30-s window (see `sleepnas.tools.stage_model.STATES`).
    clock_h : ndarray of float
        Clock time of each window in hours after noon.
    lights_off : int
        Window index of lights-off; the event marker is pressed there.
    traits : SubjectTraits
        The subject's amplitudes and rhythms.

    Returns
    -------
    dict
        Signal name to float array: the EEG and EOG at 100 Hz in uV, the others at
        1 Hz (``Resp oro-nasal`` in the recorder's units, ``EMG submental`` in uV RMS,
        ``Temp rectal`` in degC, ``Event marker``). Values are not yet clipped to the
        channel's physical range.
    """
    states = np.asarray(states, dtype=np.int64)
    blend = _blend(rng, states)
    eyes_open = _eyes_open(rng, states, lights_off)
    asleep = np.isin(states, (S1, S2, S3, S4, REM))
    onset_h = clock_h[np.argmax(asleep)] if asleep.any() else clock_h[0]
    sleep_h = np.maximum(np.asarray(clock_h) - onset_h, 0.0)
    fpz, pz, frontal_delta, muscle = _eeg_channels(rng, blend, eyes_open, sleep_h, traits)
    horizontal, blinks = _eye_channels(rng, blend, eyes_open, traits)
    artifacts = _movement_artifacts(rng, states)
    n = len(fpz)

    fpz += blinks + 0.12 * horizontal + artifacts
    pz += 0.3 * artifacts
    eog = (horizontal + 0.2 * blinks + 0.35 * frontal_delta + 0.5 * muscle + 1.5 * artifacts
           + 4.0 * _band_noise(rng, n, float(EEG_SFREQ), 0.5, 45.0))

    marker = np.zeros(len(states) * int(WINDOW_S * SLOW_SFREQ))
    press = lights_off * int(WINDOW_S * SLOW_SFREQ)
    marker[press:press + 2] = 1000.0
    return {
        "EEG Fpz-Cz": fpz,
        "EEG Pz-Oz": pz,
        "EOG horizontal": eog,
        "Resp oro-nasal": _respiration(rng, blend, traits),
        "EMG submental": _emg_envelope(rng, blend, traits),
        "Temp rectal": _temperature(rng, clock_h, asleep, traits),
        "Event marker": marker,
    }
