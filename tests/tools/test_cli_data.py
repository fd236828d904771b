"""The ``sleepnas data`` commands: info, build, fetch (without network) and synth."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import requests

from sleepnas.runtime.errors import SleepnasError
from sleepnas.tools.fetch import locate_downloads, parse_numbers, requested_nights
from tests.clitools import run_cli
from tests.edffiles import (
    TELEMETRY_RATES,
    cassette_dir,  # noqa: F401  (fixture)
    write_hypnogram,
    write_psg,
    write_recording,
)


def test_info_prints_table(cassette_dir):
    code, out, err = run_cli(["data", "info", str(cassette_dir), "--trim-wake-min", "2"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("3 recordings of 2 subjects in")
    assert "scheme aasm5, 2 min of wake kept around sleep" in lines[0]
    assert lines[1].split() == ["recording", "subject", "night", "W", "N1", "N2", "N3", "REM",
                                "total"]
    assert lines[2].split() == ["SC4001E0", "SC400", "1", "8", "2", "7", "4", "3", "24"]
    assert lines[-1].split() == ["total", "24", "6", "21", "12", "9", "72"]


def test_info_json(cassette_dir):
    code, out, err = run_cli(["data", "info", str(cassette_dir), "--trim-wake-min", "2",
                              "--scheme", "rk7", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["recordings"] == 3
    assert summary["subjects"] == 2
    assert summary["windows"] == {"W": 24, "S1": 6, "S2": 21, "S3": 6, "S4": 6, "REM": 9, "MT": 3}


def test_info_without_trim_and_num_classes(cassette_dir):
    code, out, err = run_cli(["data", "info", str(cassette_dir), "--no-trim", "--num-classes",
                              "5", "--json"])
    assert code == 0, err
    assert json.loads(out)["windows"] == {"W": 51, "N1": 6, "N2": 21, "N3": 12, "REM": 9}


def test_info_channel_subset_for_telemetry(tmp_path):
    write_recording(tmp_path, "ST7011J0", "P", rates=TELEMETRY_RATES)
    code, out, err = run_cli(["data", "info", str(tmp_path), "--json", "--on-error", "raise"])
    assert code == 1
    assert err.strip().startswith("Error: ST7011J0-PSG.edf has no channel 'Resp oro-nasal'")
    code, out, err = run_cli(["data", "info", str(tmp_path), "--json", "--trim-wake-min", "2",
                              "--channels", "Fpz-Cz,EOG,EMG"])
    assert code == 0, err
    assert json.loads(out)["recordings"] == 1


def test_info_skip_or_raise_on_bad_recording(cassette_dir):
    bad = cassette_dir / "sleep-cassette" / "SC4002E0-PSG.edf"
    bad.write_bytes(b"nothing useful" * 50)
    code, out, err = run_cli(["data", "info", str(cassette_dir), "--trim-wake-min", "2"])
    assert code == 0, err
    assert "skipped SC4002E0:" in out
    assert "skipped recording SC4002E0" in err
    assert out.splitlines()[0].startswith("2 recordings of 2 subjects")
    code, out, err = run_cli(["data", "info", str(cassette_dir), "--on-error", "raise"])
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("Error: ")
    assert "SC4002E0-PSG.edf is not an EDF or BDF file" in err


@pytest.mark.parametrize("args, message", [
    (["--scheme", "aasm"], "Invalid value for '--scheme'"),
    (["--scheme", "rk7", "--num-classes", "5"], "conflicts with --scheme 'rk7'"),
    (["--channels", "EEG Fpz-Cz,,EOG"], "invalid --channels"),
    (["--trim-wake-min", "-5"], "invalid --trim-wake-min -5"),
])
def test_info_bad_options(cassette_dir, args, message):
    code, _, err = run_cli(["data", "info", str(cassette_dir), *args])
    assert code != 0
    assert message in err


def test_info_folder_without_recordings(tmp_path):
    code, _, err = run_cli(["data", "info", str(tmp_path)])
    assert code == 1
    assert err == f"Error: no recordings found in {tmp_path}: expected EDF/BDF files such as " \
                  f"SC4001E0-PSG.edf with SC4001EC-Hypnogram.edf\n"


def test_build_fills_store(cassette_dir, tmp_path):
    args = ["data", "build", str(cassette_dir), "--cache-dir", str(tmp_path / "cache"),
            "--trim-wake-min", "2"]
    code, out, err = run_cli(args)
    assert code == 0, err
    assert out.startswith("72 windows of 3 recordings (2 subjects) in ")
    assert str(tmp_path / "cache" / "windows") in out
    code, out2, err = run_cli(args)
    assert out2 == out
    assert "loaded 72 windows" in err


def test_synth_passes_options(monkeypatch, tmp_path):
    calls = []

    def synthesize_cohort(out_dir, *, subjects, nights, seed, hours):
        calls.append((out_dir, subjects, nights, seed, hours))
        return [Path(out_dir) / "a", Path(out_dir) / "b"]

    fake = types.ModuleType("sleepnas.tools.synth")
    fake.synthesize_cohort = synthesize_cohort
    monkeypatch.setitem(sys.modules, "sleepnas.tools.synth", fake)
    code, out, err = run_cli(["data", "synth", str(tmp_path), "--subjects", "3", "--nights",
                              "1", "--seed", "7", "--hours", "0.5"])
    assert code == 0, err
    assert calls == [(tmp_path, 3, 1, 7, 0.5)]
    assert out == f"wrote 2 files to {tmp_path}\n"


def _fake_download():
    """Return a stand-in for MNE's fetch_data that writes tiny files as MNE lays them out."""
    calls = []

    def fetch_data(subjects, recording, path, on_missing, verbose):
        calls.append((tuple(subjects), tuple(recording)))
        folder = Path(path) / "physionet-sleep-data"
        for subject in subjects:
            for night in recording:
                key = f"SC4{subject:02d}{night}"
                write_recording(folder, f"{key}E0", "C")
        return []

    return fetch_data, calls


def test_fetch_offline_is_one_line(monkeypatch, tmp_path):
    from mne.datasets.sleep_physionet import age

    def offline(**kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'physionet.org'")

    monkeypatch.setattr(age, "fetch_data", offline)
    code, out, err = run_cli(["data", "fetch", str(tmp_path), "--subjects", "0"])
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        "Error: download of Sleep-EDF subject 0 night 1 failed (ConnectionError): check the "
        "connection to physionet.org")


def test_fetch_downloads_and_checks(monkeypatch, tmp_path):
    from mne.datasets.sleep_physionet import age

    fetch_data, calls = _fake_download()
    monkeypatch.setattr(age, "fetch_data", fetch_data)
    code, out, err = run_cli(["data", "fetch", str(tmp_path), "--subjects", "0-1,13",
                              "--recordings", "1,2"])
    assert code == 0, err
    # Subject 13 has no night 2 in Sleep-EDF.
    assert calls == [((0,), (1,)), ((0,), (2,)), ((1,), (1,)), ((1,), (2,)), ((13,), (1,))]
    assert out == f"5 recordings in {tmp_path}\n"
    assert "subject 13 has no night 2" in err


def test_locate_downloads_in_mne_layout(tmp_path):
    folder = tmp_path / "physionet-sleep-data"
    write_recording(folder, "SC4001E0", "C")
    write_recording(folder, "SC4002E0", "C")
    write_recording(folder, "SC4011E0", "H")
    found = locate_downloads(tmp_path, [(0, 1), (1, 1)])
    assert [r.name for r in found] == ["SC4001E0", "SC4011E0"]
    assert found[1].hypnogram == folder / "SC4011EH-Hypnogram.edf"
    assert locate_downloads(folder, [(0, 2)])[0].name == "SC4002E0"


def test_locate_downloads_reports_bad_files(tmp_path):
    folder = tmp_path / "physionet-sleep-data"
    write_recording(folder, "SC4001E0", "C")
    with pytest.raises(SleepnasError, match=r"incomplete: SC4021\*-PSG\.edf \(subject 2, night 1\)"):
        locate_downloads(tmp_path, [(0, 1), (2, 1)])

    write_psg(folder / "SC4031E0-PSG.edf", 600)
    with pytest.raises(SleepnasError, match=r"incomplete: SC4031\*-Hypnogram\.edf"):
        locate_downloads(tmp_path, [(3, 1)])

    write_hypnogram(folder / "SC4031EC-Hypnogram.edf")
    psg = folder / "SC4031E0-PSG.edf"
    psg.write_bytes(psg.read_bytes()[:-500])
    with pytest.raises(SleepnasError, match=r"SC4031E0-PSG\.edf is truncated"):
        locate_downloads(tmp_path, [(3, 1)])

    write_psg(psg, 600, TELEMETRY_RATES)
    with pytest.raises(SleepnasError, match="has no channel 'Resp oro-nasal'"):
        locate_downloads(tmp_path, [(3, 1)])


def test_subject_and_night_numbers():
    assert parse_numbers("0-3,7,2", "--subjects") == (0, 1, 2, 3, 7)
    with pytest.raises(SleepnasError, match="invalid --subjects '3-1'"):
        parse_numbers("3-1", "--subjects")
    with pytest.raises(SleepnasError, match="invalid --subjects 'a'"):
        parse_numbers("a", "--subjects")
    assert requested_nights([36, 52, 0], [1, 2]) == [(0, 1), (0, 2), (36, 2), (52, 2)]
    with pytest.raises(SleepnasError, match="invalid subject 39"):
        requested_nights([39], [1])
    with pytest.raises(SleepnasError, match="invalid subject 83"):
        requested_nights([83], [1])
    with pytest.raises(SleepnasError, match="invalid --recordings"):
        requested_nights([0], [3])
