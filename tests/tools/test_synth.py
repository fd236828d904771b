"""Tests of the synthetic cohort: file layout, determinism, physiology, night architecture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import edfio
import mne
import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import CASSETTE_CHANNELS
from sleepnas.tools import stage_model as sm
from sleepnas.tools.stage_model_fit import fit_stage_model
from sleepnas.tools.synth import synthesize_cohort, synthesize_recording

SLEEP_EDF = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sleep-edf"
HYPNOGRAMS = SLEEP_EDF / "hypnograms"
needs_real_hypnograms = pytest.mark.skipif(
    not HYPNOGRAMS.is_dir(),
    reason=f"the Sleep-EDF expert hypnograms are not at {HYPNOGRAMS} (a clone without the shared data)",
)

REAL_TEXTS = {"Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4",
              "Sleep stage R", "Sleep stage ?", "Movement time"}
# Rate (Hz), physical dimension and physical range of each cassette signal, as in SC4001E0-PSG.edf.
CASSETTE_LAYOUT = {
    "EEG Fpz-Cz": (100, "uV", -192.0, 192.0),
    "EEG Pz-Oz": (100, "uV", -197.0, 196.0),
    "EOG horizontal": (100, "uV", -1009.0, 1009.0),
    "Resp oro-nasal": (1, "", -2048.0, 2047.0),
    "EMG submental": (1, "uV", -5.0, 5.0),
    "Temp rectal": (1, "DegC", 34.0, 40.0),
    "Event marker": (1, "", -2047.0, 2048.0),
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[Path]:
    return synthesize_cohort(tmp_path_factory.mktemp("cohort"), subjects=2, nights=2, seed=5, hours=1.0)


def _pairs(paths: list[Path]) -> list[tuple[Path, Path]]:
    psgs = sorted(p for p in paths if p.name.endswith("-PSG.edf"))
    hypnograms = sorted(p for p in paths if p.name.endswith("-Hypnogram.edf"))
    return list(zip(psgs, hypnograms))


def _windows(psg: Path, hypnogram: Path) -> tuple[np.ndarray, list[str]]:
    """Cut the PSG into 30-s windows at the annotation onsets, with MNE alone."""
    raw = mne.io.read_raw_edf(psg, preload=True, verbose="error")
    annotations = mne.read_annotations(hypnogram)
    data = raw.get_data()
    windows, texts = [], []
    for onset, duration, text in zip(annotations.onset, annotations.duration, annotations.description):
        for k in range(int(duration // 30)):
            start = int(round((onset + 30 * k) * raw.info["sfreq"]))
            if start + 3000 <= data.shape[1]:
                windows.append(data[:, start:start + 3000])
                texts.append(text)
    return np.stack(windows), texts


def test_cohort_file_names(cohort):
    names = sorted(p.name[:6] for p in cohort)
    assert names == ["SC4001", "SC4001", "SC4002", "SC4002", "SC4011", "SC4011", "SC4012", "SC4012"]
    for psg, hypnogram in _pairs(cohort):
        assert psg.name == f"{psg.name[:6]}E0-PSG.edf"
        assert hypnogram.name[:7] == f"{psg.name[:6]}E"
        assert hypnogram.name[7] in {"C", "H", "J", "P", "U", "V"}
        assert hypnogram.name[8:] == "-Hypnogram.edf"


def test_psg_opens_in_mne_with_cassette_layout(cohort):
    psg, _ = _pairs(cohort)[0]
    raw = mne.io.read_raw_edf(psg, verbose="error")
    assert raw.ch_names == list(CASSETTE_CHANNELS)
    assert raw.info["sfreq"] == 100.0
    assert raw.n_times == 3600 * 100

    edf = edfio.read_edf(psg)
    assert edf.data_record_duration == 30.0
    assert edf.annotations == ()
    for signal in edf.signals:
        rate, dimension, low, high = CASSETTE_LAYOUT[signal.label]
        assert signal.sampling_frequency == rate, signal.label
        assert signal.physical_dimension == dimension, signal.label
        assert signal.physical_range == (low, high), signal.label
        # Digital-to-physical conversion rounds in the last bits.
        assert signal.data.min() >= low - 1e-9 * (high - low), signal.label
        assert signal.data.max() <= high + 1e-9 * (high - low), signal.label


def test_windows_are_7_by_3000(cohort):
    psg, hypnogram = _pairs(cohort)[0]
    windows, texts = _windows(psg, hypnogram)
    assert windows.shape == (120, 7, 3000)
    assert np.isfinite(windows).all()
    assert set(texts) <= REAL_TEXTS - {"Sleep stage ?"}
    # Every signal but the event marker varies inside almost every window.
    varying = windows[:, :6].std(axis=2) > 0
    assert varying.mean(axis=0).min() > 0.95


def test_hypnogram_runs_past_signal_end(cohort):
    for psg, hypnogram in _pairs(cohort):
        annotations = edfio.read_edf(hypnogram).annotations
        assert {a.text for a in annotations} <= REAL_TEXTS
        assert annotations[0].onset == 0.0
        for before, after in zip(annotations, annotations[1:]):
            assert after.onset == before.onset + before.duration
        assert all(a.duration % 30 == 0 for a in annotations)
        assert annotations[-1].text == "Sleep stage ?"
        assert annotations[-1].onset == edfio.read_edf(psg).duration
        assert annotations[-1].duration > 0


def test_headers_say_synthetic(cohort):
    for path in cohort:
        edf = edfio.read_edf(path)
        assert "synthetic" in edf.local_patient_identification.lower(), path.name
        assert "synthetic" in edf.local_recording_identification.lower(), path.name
        assert edf.startdate.year == 1990


def test_same_seed_same_bytes(tmp_path):
    first = synthesize_recording(tmp_path / "a", 3, 2, seed=11, hours=0.5)
    second = synthesize_recording(tmp_path / "b", 3, 2, seed=11, hours=0.5)
    other = synthesize_recording(tmp_path / "c", 3, 2, seed=12, hours=0.5)
    for a, b in zip(first, second):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(first[0].read_bytes()).digest() != hashlib.sha256(other[0].read_bytes()).digest()
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_nights_of_subject_differ(cohort):
    (psg_1, _), (psg_2, _) = _pairs(cohort)[:2]
    assert psg_1.name.startswith("SC4001")
    assert psg_2.name.startswith("SC4002")
    assert psg_1.read_bytes() != psg_2.read_bytes()


def test_short_night_keeps_all_stages():
    for seed in range(30):
        full = sm.sample_night(np.random.default_rng(seed))
        short = sm.sample_night(np.random.default_rng(seed), n_windows=120)
        assert len(short.states) == 120
        assert set(np.unique(short.states)) == set(np.unique(full.states)), seed
        assert short.states[short.sleep_onset] in sm.SLEEP_STATES
        assert short.states[short.sleep_offset - 1] in sm.SLEEP_STATES
        assert short.states[0] == sm.W
        assert short.states[-1] == sm.W
        # The clock still spans the night, so slow rhythms follow it.
        assert short.clock_h[-1] - short.clock_h[0] == pytest.approx(
            full.clock_h[-1] - full.clock_h[0], abs=0.6)


def test_long_night_adds_wake():
    full = sm.sample_night(np.random.default_rng(4))
    long = sm.sample_night(np.random.default_rng(4), n_windows=20 * 120)
    assert len(long.states) == 2400
    np.testing.assert_array_equal(long.states[long.sleep_onset:long.sleep_offset],
                                  full.states[full.sleep_onset:full.sleep_offset])
    assert long.clock_h[long.lights_off] == pytest.approx(full.clock_h[full.lights_off])


def _band_fraction(windows: np.ndarray, low: float, high: float) -> np.ndarray:
    freqs = np.fft.rfftfreq(windows.shape[-1], 0.01)
    power = np.abs(np.fft.rfft(windows - windows.mean(axis=-1, keepdims=True), axis=-1)) ** 2
    total = power[..., (freqs >= 0.5) & (freqs < 30)].sum(axis=-1)
    return power[..., (freqs >= low) & (freqs < high)].sum(axis=-1) / total


@pytest.mark.slow
def test_stage_physiology(tmp_path):
    windows, texts = [], []
    for subject in range(2):
        psg, hypnogram = synthesize_recording(tmp_path, subject, 1, seed=21, hours=2.5)
        w, t = _windows(psg, hypnogram)
        windows.append(w)
        texts += t
    windows = np.concatenate(windows)
    texts = np.array(texts)

    def median(values: np.ndarray, text: str) -> float:
        return float(np.median(values[texts == f"Sleep stage {text}"]))

    alpha = _band_fraction(windows[:, 1], 8.0, 12.0)
    theta = _band_fraction(windows[:, 0], 4.0, 8.0)
    sigma = _band_fraction(windows[:, 0], 11.0, 16.0)
    emg = windows[:, 4].mean(axis=1) * 1e6
    eeg_sd = windows[:, 0].std(axis=1) * 1e6

    assert median(alpha, "W") > 2 * median(alpha, "2")
    assert median(alpha, "1") < median(alpha, "W")
    assert median(theta, "1") > median(theta, "W")
    assert median(theta, "R") > median(theta, "W")
    assert median(sigma, "2") > 1.3 * median(sigma, "R")
    assert median(emg, "W") > median(emg, "2") > median(emg, "R")
    assert median(eeg_sd, "4") > median(eeg_sd, "3") > median(eeg_sd, "2") > median(eeg_sd, "R")


@pytest.mark.parametrize("kwargs, match", [
    ({"subjects": 0}, "--subjects 0"),
    ({"subjects": 101}, "--subjects 101"),
    ({"nights": 10}, "--nights 10"),
    ({"seed": -1}, "--seed -1"),
    ({"hours": 0.1}, "--hours 0.1"),
    ({"hours": 30.0}, "--hours 30.0"),
])
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(SleepnasError, match=match):
        synthesize_cohort(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_is_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SleepnasError, match="is a file"):
        synthesize_cohort(target, subjects=1, nights=1, hours=0.5)


def test_fit_on_synthetic_hypnograms(cohort, capsys):
    folder = cohort[0].parent
    sm.main([str(folder)])
    source = capsys.readouterr().out
    namespace: dict = {}
    exec(compile(source, "fitted", "exec"), namespace)
    model = namespace["STAGE_MODEL"]
    assert model["n_nights"] == 4
    assert model["onset_latency_min"] is None
    transitions = np.asarray(model["transitions"])
    np.testing.assert_allclose(transitions.sum(axis=-1)[transitions.sum(axis=-1) > 0], 1.0, atol=1e-3)


def _trim(states: np.ndarray, wake_windows: int = 60) -> np.ndarray:
    sleep = np.flatnonzero(np.isin(states, sm.SLEEP_STATES))
    trimmed = states[max(0, sleep[0] - wake_windows): sleep[-1] + wake_windows + 1]
    return trimmed[trimmed != sm.UNSCORED]


def _architecture(nights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stage proportions after trimming wake to 30 min, and mean bout length (windows) in the sleep period."""
    trimmed = np.concatenate([_trim(s) for s in nights])
    proportions = np.bincount(trimmed, minlength=len(sm.STATES)) / len(trimmed)
    bouts: dict[int, list[int]] = {s: [] for s in range(len(sm.STATES))}
    for states in nights:
        first, stop = sm.main_sleep_period(states)
        state, _, length = sm.run_lengths(states[first:stop])
        for s, n in zip(state.tolist(), length.tolist()):
            bouts[s].append(n)
    return proportions, np.array([np.mean(bouts[s]) for s in range(len(sm.STATES))])


@needs_real_hypnograms
def test_generated_hypnograms_match_real():
    real = [sm.read_hypnogram_states(p) for p in sorted(HYPNOGRAMS.glob("*-Hypnogram.edf"))]
    assert len(real) == 44
    generated = [sm.sample_night(np.random.default_rng([2, i])).states for i in range(120)]
    real_proportions, real_bouts = _architecture(real)
    proportions, bouts = _architecture(generated)

    # Proportions within 5 points: the model has no afternoon naps (three real nights have
    # one, which adds wake between them and the night) and slightly more late REM sleep.
    for s, stage in enumerate(sm.STATES):
        assert abs(proportions[s] - real_proportions[s]) < 0.05, stage
    # Mean bout lengths within 15 % for every stage but movement time (almost always one window).
    for s, stage in enumerate(sm.STATES[:-1]):
        assert bouts[s] == pytest.approx(real_bouts[s], rel=0.15), stage


@needs_real_hypnograms
def test_fit_reproduces_stored_model():
    paths = sorted(HYPNOGRAMS.glob("*-Hypnogram.edf"))
    fitted = fit_stage_model(paths)
    stored = sm.default_stage_model()
    for key, value in fitted.items():
        if key in ("onset_latency_min", "lights_off_clock_h"):
            continue  # fitted only with the lights-off times of SC-subjects.xls
        assert value == stored[key], key


def _band_power_features(windows: np.ndarray) -> np.ndarray:
    """Log band powers of the EEG and EOG, log chin EMG and breathing spread, z-scored per recording."""
    freqs = np.fft.rfftfreq(windows.shape[-1], 0.01)
    power = np.abs(np.fft.rfft(windows[:, :3], axis=-1)) ** 2
    bands = ((0.5, 2), (2, 4), (4, 8), (8, 12), (11, 16), (16, 30), (30, 45))
    columns = [np.log(power[:, c][:, (freqs >= low) & (freqs < high)].sum(axis=-1) + 1e-20)
               for c in range(3) for low, high in bands]
    columns.append(np.log(windows[:, 4].mean(axis=-1) + 1e-9))
    columns.append(np.log(windows[:, 3].std(axis=-1) + 1e-9))
    features = np.stack(columns, axis=1)
    return (features - features.mean(axis=0)) / features.std(axis=0)


@pytest.mark.slow
def test_staging_not_trivial(tmp_path):
    # Staging from band powers (a linear discriminant trained on the other subjects) has
    # to stay well below perfect and confuse N1 most, as with real recordings. Otherwise
    # a search would tune models to an easy task.
    aasm = np.array([0, 1, 2, 3, 3, 4])
    features, labels, subjects = [], [], []
    for subject in range(4):
        psg, hypnogram = synthesize_recording(tmp_path, subject, 1, seed=8, hours=2.5)
        windows, texts = _windows(psg, hypnogram)
        states = np.array([sm.ANNOTATION_TEXTS.index(t) for t in texts])
        keep = states != sm.MT
        features.append(_band_power_features(windows[keep]))
        labels.append(aasm[states[keep]])
        subjects += [subject] * int(keep.sum())
    x, y, subjects = np.concatenate(features), np.concatenate(labels), np.array(subjects)

    confusion = np.zeros((5, 5), dtype=np.int64)
    for held_out in range(4):
        train, test = subjects != held_out, subjects == held_out
        means = np.stack([x[train & (y == k)].mean(axis=0) for k in range(5)])
        covariance = np.cov((x[train] - means[y[train]]).T) + 1e-3 * np.eye(x.shape[1])
        inverse = np.linalg.inv(covariance)
        log_prior = np.log(np.bincount(y[train], minlength=5) / train.sum())
        scores = x[test] @ inverse @ means.T - 0.5 * np.sum(means @ inverse * means, axis=1) + log_prior
        np.add.at(confusion, (y[test], scores.argmax(axis=1)), 1)

    accuracy = np.trace(confusion) / confusion.sum()
    recall = np.diag(confusion) / confusion.sum(axis=1)
    assert accuracy > 0.6, confusion
    assert accuracy < 0.95, confusion
    assert recall[1] < 0.7, confusion  # N1
    assert recall[0] > 0.7, confusion  # W
    assert recall[2] > 0.6, confusion  # N2
    assert recall[4] > 0.6, confusion  # REM
