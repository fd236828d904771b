"""Scoring whole recordings: windows, stages, probabilities and quality flags."""

from __future__ import annotations

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import read_signals
from sleepnas.runtime.scoring import score_recording, score_signals, window_flags
from sleepnas.runtime.spec import WindowSpec
from tests.runtime.conftest import CHANNELS, varying_signal
from tests.sleepmodels import expected_logits, write_psg


def _hand_labels(spec, data):
    n = data.shape[1] // spec.n_times
    windows = data[:, :n * spec.n_times].reshape(spec.n_chans, n, spec.n_times).transpose(1, 0, 2)
    return expected_logits(spec, windows).argmax(axis=1)


def test_signals_scored_per_window(linear_model, volt_spec):
    data = varying_signal(12 * 3000 + 1234, seed=2) * 1e-6
    result = score_signals(linear_model, data, batch_size=5, name="test")

    assert result.n_windows == 12
    assert result.leftover_samples == 1234
    np.testing.assert_array_equal(result.onsets_s, np.arange(12) * 30.0)
    np.testing.assert_array_equal(result.labels, _hand_labels(volt_spec, data))
    assert result.proba.shape == (12, 5)
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(result.proba.argmax(axis=1), result.labels)
    assert result.flags == [""] * 12
    assert result.recording_s == pytest.approx((12 * 3000 + 1234) / 100.0)
    assert len(set(result.stages)) > 1, "the test signal should give more than one stage"


def test_recording_matches_its_signals(linear_model, volt_spec, psg_path):
    result = score_recording(linear_model, psg_path, batch_size=4)
    data, sfreq = read_signals(psg_path, volt_spec.channels, sfreq=100.0)

    assert result.name == "night"
    assert result.n_windows == 21
    assert result.leftover_samples == 2000
    np.testing.assert_array_equal(result.labels, _hand_labels(volt_spec, data))


def test_batch_size_does_not_change_stages(linear_model, psg_path):
    single = score_recording(linear_model, psg_path, batch_size=1)
    batched = score_recording(linear_model, psg_path, batch_size=64)
    np.testing.assert_array_equal(single.labels, batched.labels)
    np.testing.assert_allclose(single.proba, batched.proba, atol=1e-6)


def test_signal_shorter_than_window_rejected(linear_model):
    with pytest.raises(SleepnasError, match=r"shorter than one window: 2999 samples.*3000 samples"):
        score_signals(linear_model, np.zeros((2, 2999), np.float32), name="short")


def test_recording_shorter_than_window_rejected(linear_model, tmp_path):
    path = write_psg(tmp_path / "short.edf", dict(zip(CHANNELS, varying_signal(2000))))
    with pytest.raises(SleepnasError, match=r"short is shorter than one window: 2000 samples \(20 s\)"):
        score_recording(linear_model, path)


def test_wrong_channel_count_rejected(linear_model):
    with pytest.raises(SleepnasError, match=r"expected \(2, n_samples\)"):
        score_signals(linear_model, np.zeros((3, 6000), np.float32))


def test_missing_recording_named(linear_model, tmp_path):
    with pytest.raises(SleepnasError, match=r"absent\.edf"):
        score_recording(linear_model, tmp_path / "absent.edf")


def test_truncated_edf_rejected(linear_model, psg_path, tmp_path):
    truncated = tmp_path / "truncated.edf"
    truncated.write_bytes(psg_path.read_bytes()[:-5000])
    with pytest.raises(SleepnasError, match="truncated"):
        score_recording(linear_model, truncated)


def test_missing_channel_lists_present(linear_model, tmp_path):
    path = write_psg(tmp_path / "eeg_only.edf", {"EEG Fpz-Cz": varying_signal(6000)[0],
                                                  "EOG horizontal": varying_signal(6000)[1]})
    with pytest.raises(SleepnasError, match="EMG submental.*EOG horizontal"):
        score_recording(linear_model, path)


def test_unusable_sampling_rate_rejected(linear_model, tmp_path):
    from edfio import Edf, EdfSignal

    # One sample every 7 s gives 30 / 7 samples per window: no whole number.
    signals = [EdfSignal(np.arange(20.0) + k, sampling_frequency=1 / 7, label=label,
                         physical_dimension="uV") for k, label in enumerate(CHANNELS)]
    path = tmp_path / "slow.edf"
    Edf(signals, data_record_duration=7).write(path)
    with pytest.raises(SleepnasError, match="sampling rate"):
        score_recording(linear_model, path)


def test_nan_run_scored_and_flagged(linear_model):
    data = varying_signal(5 * 3000, seed=3) * 1e-6
    data[0, 3000 + 100:3000 + 700] = np.nan
    result = score_signals(linear_model, data)

    assert result.n_windows == 5
    assert result.flags[1] == "NaN in EEG Fpz-Cz"
    assert [f for i, f in enumerate(result.flags) if i != 1] == [""] * 4
    assert np.isfinite(result.proba).all()


def test_flat_channel_scored_and_flagged(linear_model):
    data = varying_signal(4 * 3000, seed=4) * 1e-6
    data[1, 2 * 3000:3 * 3000] = 3e-6
    result = score_signals(linear_model, data)
    assert result.flags == ["", "", "flat EMG submental", ""]
    assert np.isfinite(result.proba).all()


def test_clipped_channel_flagged(linear_model):
    data = varying_signal(3 * 3000, seed=5) * 1e-6
    window = data[0, :3000]
    rail = np.quantile(window, 0.95)
    data[0, :3000] = np.minimum(window, rail)
    result = score_signals(linear_model, data)
    assert result.flags == ["clipped EEG Fpz-Cz", "", ""]


def test_flags_list_every_problem(volt_spec):
    windows = np.random.default_rng(6).normal(0.0, 2e-5, size=(2, 2, 3000))
    windows[0, 0, :50] = np.nan
    windows[0, 1] = 0.0
    flags = window_flags(windows, volt_spec)
    assert flags == ["NaN in EEG Fpz-Cz; flat EMG submental", ""]


def test_marker_channel_never_flat():
    spec = WindowSpec(channels=("EEG Fpz-Cz", "Event marker"), scale=(2e-5, 1.0))
    windows = np.zeros((1, 2, 3000))
    windows[0, 0] = np.random.default_rng(7).normal(0.0, 2e-5, 3000)
    assert window_flags(windows, spec) == [""]


def test_recording_flat_window_flagged(linear_model, tmp_path):
    data = varying_signal(6 * 3000, seed=8)
    data[1, 3 * 3000:4 * 3000] = 7.0
    path = write_psg(tmp_path / "flat.edf", dict(zip(CHANNELS, data)))
    result = score_recording(linear_model, path)
    assert result.flags == ["", "", "", "flat EMG submental", "", ""]
    assert result.n_flagged == 1


def test_recording_flat_all_night_flagged(linear_model, tmp_path):
    data = varying_signal(4 * 3000, seed=10)
    data[1] = 7.0
    path = write_psg(tmp_path / "dead.edf", dict(zip(CHANNELS, data)))
    result = score_recording(linear_model, path)
    assert result.n_windows == 4
    assert result.flags == ["flat EMG submental"] * 4


def test_unit_mismatch_warned(linear_model, caplog):
    picovolts = varying_signal(4 * 3000, seed=9) * 1e-12
    with caplog.at_level("WARNING", logger="sleepnas"):
        result = score_signals(linear_model, picovolts, name="tiny")
    assert result.n_flagged == 4
    assert "tiny: 4 of 4 windows have a flat channel: check that the signal is in the units" in caplog.text
