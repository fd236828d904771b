"""Matching requested channel names to the names in a file."""

from __future__ import annotations

import pytest

from sleepnas.runtime.channels import match_channels, normalize_name, parse_channels
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import CASSETTE_CHANNELS

TELEMETRY = ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "EMG submental", "Marker"]


def test_exact_names_keep_request_order():
    wanted = ["EOG horizontal", "EEG Fpz-Cz"]
    assert match_channels(CASSETTE_CHANNELS, wanted, "a.edf") == ["EOG horizontal", "EEG Fpz-Cz"]


@pytest.mark.parametrize("wanted, found", [
    ("eeg fpz-cz", "EEG Fpz-Cz"),
    ("EEG_FPZ_CZ", "EEG Fpz-Cz"),
    ("Fpz-Cz", "EEG Fpz-Cz"),
    ("pz-oz", "EEG Pz-Oz"),
    ("EOG", "EOG horizontal"),
    ("emg", "EMG submental"),
    ("Temp", "Temp rectal"),
    ("event marker", "Event marker"),
])
def test_case_spaces_and_aliases(wanted, found):
    assert match_channels(CASSETTE_CHANNELS, [wanted], "a.edf") == [found]


def test_alias_finds_short_file_name():
    assert match_channels(["Fpz-Cz", "EMG"], ["EEG Fpz-Cz", "EMG submental"], "b.edf") == \
        ["Fpz-Cz", "EMG"]


def test_missing_channel_lists_present_ones():
    with pytest.raises(SleepnasError, match=r"ST7011J0-PSG\.edf has no channel 'Resp oro-nasal', "
                                            r"'Temp rectal': channels present are 'EEG Fpz-Cz'.*"
                                            r"'Marker'"):
        match_channels(TELEMETRY, CASSETTE_CHANNELS, "ST7011J0-PSG.edf")


def test_same_channel_twice_is_an_error():
    with pytest.raises(SleepnasError, match="more than once"):
        match_channels(CASSETTE_CHANNELS, ["Fpz-Cz", "EEG Fpz-Cz"], "a.edf")


def test_normalize_name_drops_separators():
    assert normalize_name(" EEG Fpz-Cz ") == "eegfpzcz"


def test_parse_channels():
    assert parse_channels("EEG Fpz-Cz, EOG horizontal") == ("EEG Fpz-Cz", "EOG horizontal")
    with pytest.raises(SleepnasError, match="invalid --channels"):
        parse_channels("EEG Fpz-Cz,,EOG")
    with pytest.raises(SleepnasError, match="invalid --channels"):
        parse_channels("")
