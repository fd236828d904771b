"""Download Sleep-EDF cassette recordings with MNE, and check what the download left.

``mne.datasets.sleep_physionet.age.fetch_data`` downloads the files of the
Sleep-EDF Expanded "sleep-cassette" study (Kemp et al., IEEE-BME 47(9), 2000) from
PhysioNet into ``<path>/physionet-sleep-data/``, flat, and checks their SHA-1
digests. Subjects are numbered 0-82 as in that study. Subjects 39, 68, 69, 78 and
79 do not exist, and night 2 of subject 13 and night 1 of subjects 36 and 52 were
not recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from sleepnas.runtime.channels import match_channels
from sleepnas.runtime.edf import read_edf_header
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.recordings import RecordingFiles, find_recordings
from sleepnas.runtime.spec import CASSETTE_CHANNELS

logger = logging.getLogger(__name__)

N_SUBJECTS = 83
MISSING_SUBJECTS = frozenset({39, 68, 69, 78, 79})
#: (subject, night) pairs that the study does not have.
MISSING_NIGHTS = frozenset({(13, 2), (36, 1), (52, 1)})
#: The folder that MNE's download creates inside the path it is given.
DOWNLOAD_FOLDER = "physionet-sleep-data"


def parse_numbers(text: str, name: str) -> tuple[int, ...]:
    """Parse ``"0-3,7"`` into ``(0, 1, 2, 3, 7)``; ``name`` is the option for errors."""
    numbers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            start, stop = int(first), int(last or first)
            if stop < start:
                raise ValueError(part)
            numbers.extend(range(start, stop + 1))
    except ValueError:
        raise SleepnasError(f"invalid {name} {text!r}: expected numbers and ranges such as "
                            f"'0-3,7'") from None
    return tuple(sorted(set(numbers)))


def sleep_edf_key(subject: int, night: int) -> str:
    """Return the first six characters of a cassette file name: ``SC4`` + subject + night."""
    return f"SC4{subject:02d}{night}"


def requested_nights(subjects: Iterable[int], nights: Iterable[int]) -> list[tuple[int, int]]:
    """Check subject and night numbers and return the (subject, night) pairs that exist."""
    subjects, nights = sorted(set(subjects)), sorted(set(nights))
    if not subjects:
        raise SleepnasError("no --subjects given: expected subject numbers 0-82")
    for subject in subjects:
        if not 0 <= subject < N_SUBJECTS or subject in MISSING_SUBJECTS:
            raise SleepnasError(
                f"invalid subject {subject} in --subjects: expected 0-{N_SUBJECTS - 1} except "
                f"{', '.join(map(str, sorted(MISSING_SUBJECTS)))}, which the study lacks"
            )
    if not nights or any(night not in (1, 2) for night in nights):
        raise SleepnasError(f"invalid --recordings {nights}: expected nights 1, 2 or both")
    pairs = []
    for subject in subjects:
        for night in nights:
            if (subject, night) in MISSING_NIGHTS:
                logger.warning("subject %d has no night %d in Sleep-EDF; skipping it", subject, night)
            else:
                pairs.append((subject, night))
    return pairs


def locate_downloads(out_dir: str | os.PathLike,
                     pairs: Sequence[tuple[int, int]]) -> list[RecordingFiles]:
    """Find and check the recordings a download of ``pairs`` (subject, night) left in ``out_dir``.

    Each PSG must be a complete EDF with the 7 cassette signals, beside its hypnogram.
    Looks in ``out_dir/physionet-sleep-data`` if that folder exists, else in ``out_dir``.
    """
    out_dir = Path(out_dir)
    folder = out_dir / DOWNLOAD_FOLDER
    if not folder.is_dir():
        folder = out_dir
    found = {rec.name[:6]: rec for rec in find_recordings(folder, on_error="skip")}

    recordings = []
    for subject, night in pairs:
        key = sleep_edf_key(subject, night)
        rec = found.get(key)
        if rec is None:
            raise SleepnasError(f"the download is incomplete: {key}*-PSG.edf (subject {subject}, "
                                f"night {night}) not found in {folder}; run the command again")
        if rec.hypnogram is None:
            raise SleepnasError(f"the download is incomplete: {key}*-Hypnogram.edf (subject "
                                f"{subject}, night {night}) not found in {folder}; run the "
                                f"command again")
        header = read_edf_header(rec.psg)
        match_channels(header.labels, CASSETTE_CHANNELS, rec.psg.name)
        read_edf_header(rec.hypnogram)
        recordings.append(rec)
    return recordings


def fetch_sleep_edf(out_dir: str | os.PathLike, subjects: Iterable[int],
                    nights: Iterable[int] = (1, 2)) -> list[RecordingFiles]:
    """Download Sleep-EDF cassette recordings into ``out_dir`` and check them.

    Files already present are not downloaded again. Needs an internet connection
    to physionet.org.

    Parameters
    ----------
    out_dir : path
        Folder; the files go to ``out_dir/physionet-sleep-data/``.
    subjects : iterable of int
        Subject numbers, 0-82.
    nights : iterable of int
        Nights, 1 and/or 2.

    Returns
    -------
    list of RecordingFiles
        The recordings requested, checked.
    """
    pairs = requested_nights(subjects, nights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from mne.datasets.sleep_physionet import age

    for subject, night in pairs:
        logger.info("fetching subject %d night %d into %s", subject, night, out_dir / DOWNLOAD_FOLDER)
        try:
            age.fetch_data(subjects=[subject], recording=[night], path=str(out_dir),
                           on_missing="warn", verbose="error")
        except OSError as err:
            # requests and urllib connection errors are OSErrors.
            raise SleepnasError(
                f"download of Sleep-EDF subject {subject} night {night} failed "
                f"({type(err).__name__}): check the connection to physionet.org, then run "
                f"the command again; finished files in {out_dir} are kept"
            ) from None
        except ValueError as err:
            # pooch raises ValueError when a file's digest does not match.
            raise SleepnasError(f"download of Sleep-EDF subject {subject} night {night} "
                                f"failed: {err}") from None
    return locate_downloads(out_dir, pairs)
