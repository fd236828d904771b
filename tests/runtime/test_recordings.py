"""Finding recordings, reading signals and stages, and cutting windows."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pytest

from sleepnas.runtime.edf import read_edf_header
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import (
    check_signal_values,
    find_recordings,
    load_recording_windows,
    read_signals,
    read_stages,
    upsample_fft,
    window_labels,
)
from sleepnas.runtime.spec import CASSETTE_CHANNELS, WindowSpec
from sleepnas.runtime.stages import Stage
from tests.edffiles import (
    SHORT_NIGHT,
    TELEMETRY_RATES,
    cassette_dir,  # noqa: F401  (fixture)
    eeg_signal,
    temp_signal,
    write_bdf,
    write_hypnogram,
    write_psg,
    write_recording,
)

# Labels of SHORT_NIGHT in aasm5 with 2 min of wake kept: 4 W, 2 N1, 5 N2, 4 N3 (S3 + S4),
# MT dropped, 3 REM, 2 N2, 4 W; the unscored windows lie past the signal end.
SHORT_NIGHT_LABELS = [0] * 4 + [1] * 2 + [2] * 5 + [3] * 4 + [4] * 3 + [2] * 2 + [0] * 4
# Windows from 180 s to 900 s; 630 s is movement time, which aasm5 drops.
SHORT_NIGHT_ONSETS = [o for o in [180.0 + 30 * k for k in range(25)] if o != 630.0]


def test_find_physionet_layout(cassette_dir):
    telemetry = cassette_dir / "sleep-telemetry"
    write_recording(telemetry, "ST7022J0", "M", rates=TELEMETRY_RATES)
    recordings = find_recordings(cassette_dir)
    assert [r.name for r in recordings] == ["SC4001E0", "SC4002E0", "SC4011E0", "ST7022J0"]
    assert [r.subject for r in recordings] == ["SC400", "SC400", "SC401", "ST702"]
    assert [r.night for r in recordings] == [1, 2, 1, 2]
    assert recordings[1].hypnogram.name == "SC4002EH-Hypnogram.edf"
    assert recordings[3].hypnogram.name == "ST7022JM-Hypnogram.edf"


def test_find_mne_download_layout(tmp_path):
    flat = tmp_path / "mne_data" / "physionet-sleep-data"
    write_recording(flat, "SC4001E0", "C")
    write_recording(flat, "SC4012E0", "V")
    recordings = find_recordings(tmp_path / "mne_data")
    assert [(r.psg.name, r.hypnogram.name) for r in recordings] == [
        ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf"),
        ("SC4012E0-PSG.edf", "SC4012EV-Hypnogram.edf"),
    ]


def test_psg_without_hypnogram_found_but_not_loadable(tmp_path):
    write_psg(tmp_path / "SC4001E0-PSG.edf", 600)
    (recording,) = find_recordings(tmp_path)
    assert recording.hypnogram is None
    with pytest.raises(SleepnasError, match=r"SC4001E0-PSG\.edf has no hypnogram: expected "
                                            r"SC4001\?\?-Hypnogram\.edf"):
        load_recording_windows(recording, WindowSpec())


def test_hypnogram_without_psg(tmp_path, caplog):
    write_recording(tmp_path, "SC4001E0", "C")
    write_hypnogram(tmp_path / "SC4002EC-Hypnogram.edf")
    with pytest.raises(SleepnasError, match=r"SC4002EC-Hypnogram\.edf has no PSG file"):
        find_recordings(tmp_path)
    with caplog.at_level(logging.WARNING):
        recordings = find_recordings(tmp_path, on_error="skip")
    assert [r.name for r in recordings] == ["SC4001E0"]
    assert "SC4002EC-Hypnogram.edf has no PSG file" in caplog.text


def test_folder_without_recordings(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SleepnasError, match="no recordings found in"):
        find_recordings(tmp_path)
    with pytest.raises(SleepnasError, match="not found"):
        find_recordings(tmp_path / "missing")


def test_generic_sidecars_and_embedded_annotations(tmp_path):
    write_psg(tmp_path / "night_a.edf", 1020)
    write_hypnogram(tmp_path / "night_a-Hypnogram.edf")
    write_psg(tmp_path / "night_b.edf", 1020)
    (tmp_path / "night_b.csv").write_text("onset,duration,description\n0,600,W\n600,420,N2\n")
    write_psg(tmp_path / "night_c.edf", 1020, annotations=SHORT_NIGHT)
    recordings = {r.name: r for r in find_recordings(tmp_path)}
    assert sorted(recordings) == ["night_a", "night_b", "night_c"]
    assert recordings["night_a"].hypnogram.name == "night_a-Hypnogram.edf"
    assert recordings["night_b"].hypnogram.name == "night_b.csv"
    assert recordings["night_c"].hypnogram == recordings["night_c"].psg
    assert recordings["night_b"].subject == "night_b"


def test_generic_recordings_give_windows(tmp_path):
    write_psg(tmp_path / "night_b.edf", 1020)
    (tmp_path / "night_b.csv").write_text("onset,duration,description\n0,600,W\n600,420,N2\n")
    write_psg(tmp_path / "night_c.edf", 1020, annotations=SHORT_NIGHT)
    recordings = {r.name: r for r in find_recordings(tmp_path)}

    _, labels, onsets = load_recording_windows(recordings["night_b"], WindowSpec(),
                                               trim_wake_min=1.0)
    assert labels.tolist() == [0, 0] + [2] * 14
    assert onsets[0] == 540.0
    _, labels, onsets = load_recording_windows(recordings["night_c"], WindowSpec(),
                                               trim_wake_min=2.0)
    assert labels.tolist() == SHORT_NIGHT_LABELS
    assert onsets.tolist() == SHORT_NIGHT_ONSETS


def test_bdf_recording_windows(tmp_path):
    write_bdf(tmp_path / "night.bdf", 1020, {"EEG Fpz-Cz": 100, "EMG": 200, "Temp rectal": 1})
    (tmp_path / "night.txt").write_text("".join(
        f"{onset},{duration},{text}\n" for onset, duration, text in _table_rows(SHORT_NIGHT)))
    (recording,) = find_recordings(tmp_path)
    assert recording.hypnogram.name == "night.txt"
    spec = WindowSpec(channels=("EEG Fpz-Cz", "EMG submental", "Temp rectal"))
    windows, labels, onsets = load_recording_windows(recording, spec, trim_wake_min=2.0)
    assert windows.shape == (len(SHORT_NIGHT_LABELS), 3, 3000)
    assert labels.tolist() == SHORT_NIGHT_LABELS
    medians_uv = np.median(windows[:, 0, :], axis=1) * 1e6
    np.testing.assert_allclose(medians_uv, onsets / 30.0, atol=0.05)
    t_s = onsets[:, None] + np.arange(3000) / 100.0
    # The 200-Hz EMG, a 20-Hz sine of 5 uV, keeps its RMS after downsampling to 100 Hz.
    np.testing.assert_allclose(windows[:, 1, :].std(axis=1) * 1e6, 5.0 / np.sqrt(2), atol=0.01)
    np.testing.assert_allclose(windows[:, 2, :], temp_signal(t_s), atol=1e-3)


def _table_rows(stages):
    onset = 0
    for text, duration in stages:
        yield onset, duration, text
        onset += duration


def test_single_psg_path(cassette_dir):
    psg = cassette_dir / "sleep-cassette" / "SC4002E0-PSG.edf"
    (recording,) = find_recordings(psg)
    assert recording.name == "SC4002E0"
    assert recording.hypnogram.name == "SC4002EH-Hypnogram.edf"


def test_read_signals_values_and_units(tmp_path):
    psg = write_psg(tmp_path / "SC4001E0-PSG.edf", 600)
    data, sfreq = read_signals(psg, ["Temp rectal", "EEG Fpz-Cz"])
    t_s = np.arange(data.shape[1]) / 100.0
    assert sfreq == 100.0
    assert data.dtype == np.float32
    assert data.shape == (2, 60000)
    # MNE returns volts for uV signals; 400 uV over 16 bits quantizes to 0.006 uV.
    np.testing.assert_allclose(data[1] * 1e6, eeg_signal(t_s), atol=0.01)
    # 1-Hz temperature upsampled by MNE's FFT resampling follows the slow sine.
    np.testing.assert_allclose(data[0], temp_signal(t_s), atol=1e-3)


def test_read_signals_equals_mne_whole_file(tmp_path):
    import mne

    psg = write_psg(tmp_path / "SC4001E0-PSG.edf", 1020, seed=4)
    data, _ = read_signals(psg, CASSETTE_CHANNELS)
    raw = mne.io.read_raw_edf(psg, preload=True, verbose="error")
    reference = raw.get_data(picks=list(CASSETTE_CHANNELS)).astype(np.float32)
    assert data.shape == reference.shape
    for row, name in enumerate(CASSETTE_CHANNELS):
        np.testing.assert_allclose(data[row], reference[row], rtol=1e-6,
                                   atol=1e-6 * np.abs(reference[row]).max(), err_msg=name)


@pytest.mark.parametrize("n_times", [7, 8, 1000, 1001])
def test_upsample_fft_equals_mne_resample(n_times):
    import mne

    signal = np.random.default_rng(n_times).normal(size=n_times)
    expected = mne.filter.resample(signal, n_times * 100, n_times, npad=0, verbose="error")
    np.testing.assert_allclose(upsample_fft(signal, 100), expected, rtol=0, atol=1e-12)


def test_only_slow_channels_reach_target_rate(tmp_path):
    psg = write_psg(tmp_path / "SC4001E0-PSG.edf", 600)
    data, sfreq = read_signals(psg, ["Temp rectal", "Event marker"])
    assert data.shape == (2, 60000)
    np.testing.assert_allclose(data[0], temp_signal(np.arange(60000) / 100.0), atol=1e-3)
    assert np.all(data[1] == 0.0)


def test_faster_signal_resampled_down(tmp_path):
    psg = write_psg(tmp_path / "fast.edf", 600, {"EEG Fpz-Cz": 200, "Temp rectal": 1})
    data, _ = read_signals(psg, ["EEG Fpz-Cz"])
    t_s = np.arange(data.shape[1]) / 100.0
    assert data.shape == (1, 60000)
    # Away from the 1-uV steps at window borders, the 10-Hz sine passes unchanged.
    inner = (t_s % 30 > 1) & (t_s % 30 < 29)
    np.testing.assert_allclose(data[0, inner] * 1e6, eeg_signal(t_s[inner]), atol=0.05)


def test_rate_without_whole_samples_per_window(tmp_path):
    psg = write_psg(tmp_path / "slow.edf", 600, {"EEG Fpz-Cz": 100, "Resp": 0.05}, record_s=20)
    with pytest.raises(SleepnasError, match=r"'Resp'.*0\.05 Hz, which cannot be brought to 100 Hz"):
        read_signals(psg, ["EEG Fpz-Cz", "Resp"])
    with pytest.raises(SleepnasError, match=r"invalid sampling rate 33\.33 Hz"):
        read_signals(psg, ["EEG Fpz-Cz"], sfreq=33.33)


def test_missing_channel_lists_present(tmp_path):
    psg = write_psg(tmp_path / "ST7011J0-PSG.edf", 600, TELEMETRY_RATES)
    with pytest.raises(SleepnasError, match=r"no channel 'Resp oro-nasal', 'Temp rectal': "
                                            r"channels present are 'EEG Fpz-Cz'"):
        read_signals(psg, CASSETTE_CHANNELS)


def test_not_edf_and_truncated_files(tmp_path):
    text = tmp_path / "notes.edf"
    text.write_text("this is not an EDF file " * 20)
    with pytest.raises(SleepnasError, match="is not an EDF or BDF file"):
        read_signals(text, ["EEG Fpz-Cz"])
    short = tmp_path / "short.edf"
    short.write_bytes(b"0       ")
    with pytest.raises(SleepnasError, match="only 8 bytes long"):
        read_signals(short, ["EEG Fpz-Cz"])

    psg = write_psg(tmp_path / "SC4001E0-PSG.edf", 600)
    content = psg.read_bytes()
    psg.write_bytes(content[:-1000])
    with pytest.raises(SleepnasError, match=r"is truncated: its header declares 20 data records"):
        read_signals(psg, ["EEG Fpz-Cz"])


def test_flat_signal_rejected(tmp_path):
    psg = write_psg(tmp_path / "flat.edf", 600, {"EEG Fpz-Cz": 100, "EMG submental": 1})
    data, _ = read_signals(psg, ["EEG Fpz-Cz"])
    check_signal_values(data, ["EEG Fpz-Cz"], "flat.edf")
    flat = np.full((1, 100), 3.0, dtype=np.float32)
    with pytest.raises(SleepnasError, match=r"'EEG Fpz-Cz' of flat\.edf is flat \(constant 3\)"):
        check_signal_values(flat, ["EEG Fpz-Cz"], "flat.edf")
    check_signal_values(flat, ["Event marker"], "flat.edf")  # an unused marker may be flat


def test_flat_signal_in_file(tmp_path):
    psg = write_psg(tmp_path / "m.edf", 600, {"EEG Fpz-Cz": 100, "Marker": 10})
    data, _ = read_signals(psg, ["Marker"])
    assert np.all(data == 0.0)


def test_nan_signal_rejected():
    data = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    data[1, 3] = np.nan
    with pytest.raises(SleepnasError, match=r"'EMG submental' of x\.edf contains NaN"):
        check_signal_values(data, ["EEG Fpz-Cz", "EMG submental"], "x.edf")


def test_read_stages_sleep_edf_texts(tmp_path):
    hypnogram = write_hypnogram(tmp_path / "SC4001EC-Hypnogram.edf")
    stages = read_stages(hypnogram)
    assert [s for _, _, s in stages] == [
        Stage.W, Stage.S1, Stage.S2, Stage.S3, Stage.S4, Stage.MT, Stage.REM, Stage.S2,
        Stage.W, Stage.UNSCORED]
    assert stages[1][:2] == (300.0, 60.0)
    assert stages[-1][:2] == (1020.0, 120.0)


def test_read_stages_tables(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("# scored by hand\nonset,duration,description\n30,60,N2\n0,30,Sleep stage W\n")
    assert read_stages(csv) == [(0.0, 30.0, Stage.W), (30.0, 60.0, Stage.N2)]
    txt = tmp_path / "b.txt"
    txt.write_text("0, 90, REM\n")
    assert read_stages(txt) == [(0.0, 90.0, Stage.REM)]
    bad = tmp_path / "c.csv"
    bad.write_text("0,30,W\nlater,30,W\n")
    with pytest.raises(SleepnasError, match=r"c\.csv line 2 is invalid"):
        read_stages(bad)


@pytest.mark.parametrize("stages, message", [
    ((("Sleep stage ?", 600),), "only unscored"),
    ((("Sleep stage W", 60), ("Lights off", 30)), r"unknown annotation text 'Lights off' in .*h\.edf"),
])
def test_bad_hypnograms(tmp_path, stages, message):
    hypnogram = write_hypnogram(tmp_path / "h.edf", stages)
    with pytest.raises(SleepnasError, match=message):
        read_stages(hypnogram)


def test_empty_hypnogram_rejected(tmp_path):
    table = tmp_path / "empty.csv"
    table.write_text("onset,duration,description\n")
    with pytest.raises(SleepnasError, match=r"hypnogram .*empty\.csv is empty"):
        read_stages(table)


def test_zero_duration_rejected(tmp_path):
    table = tmp_path / "z.csv"
    table.write_text("0,0,W\n")
    with pytest.raises(SleepnasError, match="has duration 0 s"):
        read_stages(table)


def test_window_labels_trim_and_signal_end():
    stages = [(onset, duration, stage) for onset, duration, stage in _short_night_stages()]
    labels, onsets = window_labels(stages, WindowSpec(), duration_s=1020.0, trim_wake_min=2.0)
    assert labels.tolist() == SHORT_NIGHT_LABELS
    assert onsets.tolist() == SHORT_NIGHT_ONSETS

    labels, _ = window_labels(stages, WindowSpec(), duration_s=1020.0, trim_wake_min=None)
    assert np.bincount(labels).tolist() == [17, 2, 7, 4, 3]
    labels, _ = window_labels(stages, WindowSpec(scheme="rk7"), duration_s=1020.0,
                              trim_wake_min=0.0)
    assert np.bincount(labels, minlength=7).tolist() == [0, 2, 7, 2, 2, 3, 1]


def test_window_labels_errors():
    wake = [(0.0, 600.0, Stage.W)]
    with pytest.raises(SleepnasError, match="no sleep window"):
        window_labels(wake, WindowSpec(), trim_wake_min=30.0)
    overlapping = [(0.0, 60.0, Stage.W), (30.0, 60.0, Stage.N2)]
    with pytest.raises(SleepnasError, match="overlap at 30 s"):
        window_labels(overlapping, WindowSpec())
    movement = [(0.0, 60.0, Stage.MT), (60.0, 30.0, Stage.UNSCORED)]
    with pytest.raises(SleepnasError, match="no window with a class of scheme 'aasm5'"):
        window_labels(movement, WindowSpec(), trim_wake_min=None)


def _short_night_stages():
    onset = 0.0
    from sleepnas.runtime.stages import annotation_to_stage
    for text, duration in SHORT_NIGHT:
        yield onset, float(duration), annotation_to_stage(text)
        onset += duration


def test_load_windows_shapes_labels_and_alignment(cassette_dir):
    recording = find_recordings(cassette_dir)[0]
    windows, labels, onsets = load_recording_windows(recording, WindowSpec(), trim_wake_min=2.0)
    assert windows.shape == (len(SHORT_NIGHT_LABELS), 7, 3000)
    assert windows.dtype == np.float32
    assert labels.dtype == np.int64
    assert labels.tolist() == SHORT_NIGHT_LABELS
    assert onsets.tolist() == SHORT_NIGHT_ONSETS
    # Channel 0 carries its window index as an offset, so each window is the right one.
    medians_uv = np.median(windows[:, 0, :], axis=1) * 1e6
    np.testing.assert_allclose(medians_uv, np.asarray(SHORT_NIGHT_ONSETS) / 30.0, atol=0.05)
    t_s = np.asarray(SHORT_NIGHT_ONSETS)[:, None] + np.arange(3000) / 100.0
    np.testing.assert_allclose(windows[:, 5, :], temp_signal(t_s), atol=1e-3)


def test_hypnogram_starting_later_shifts_onsets(tmp_path):
    write_psg(tmp_path / "SC4001E0-PSG.edf", 1080)
    later = dt.time(22, 11, 0)  # the PSG starts at 22:10:00
    write_hypnogram(tmp_path / "SC4001EC-Hypnogram.edf", SHORT_NIGHT, start=later)
    (recording,) = find_recordings(tmp_path)
    windows, _, onsets = load_recording_windows(recording, WindowSpec(), trim_wake_min=2.0)
    assert onsets[0] == 240.0
    np.testing.assert_allclose(np.median(windows[0, 0]) * 1e6, 8.0, atol=0.05)


def test_telemetry_subset_of_channels(tmp_path):
    write_recording(tmp_path, "ST7011J0", "P", rates=TELEMETRY_RATES)
    (recording,) = find_recordings(tmp_path)
    spec = WindowSpec(channels=("EEG Fpz-Cz", "EOG horizontal", "EMG submental"))
    windows, labels, _ = load_recording_windows(recording, spec, trim_wake_min=2.0)
    assert windows.shape == (len(SHORT_NIGHT_LABELS), 3, 3000)
    with pytest.raises(SleepnasError, match="no channel 'Resp oro-nasal'"):
        load_recording_windows(recording, WindowSpec())


def test_edf_header_fields(cassette_dir):
    header = read_edf_header(cassette_dir / "sleep-cassette" / "SC4001E0-PSG.edf")
    assert header.kind == "EDF"
    assert header.labels == CASSETTE_CHANNELS
    assert header.sfreq("EEG Fpz-Cz") == 100.0
    assert header.sfreq("Temp rectal") == 1.0
    assert header.duration_s == 1020.0
    assert not header.has_annotations
