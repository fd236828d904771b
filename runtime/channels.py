"""Channel names: matching the names a user requests to the names a file contains.

Names match ignoring case, spaces, hyphens and underscores, so ``"eeg fpz-cz"``
finds ``"EEG Fpz-Cz"``. A short list of aliases maps common shorter spellings to
the Sleep-EDF signal names (``"Fpz-Cz"`` finds ``"EEG Fpz-Cz"``, and the other
way round).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import SleepnasError

# Each group lists spellings of one signal; the first is the Sleep-EDF name.
_ALIAS_GROUPS: tuple[tuple[str, ...], ...] = (
    ("EEG Fpz-Cz", "Fpz-Cz", "FpzCz"),
    ("EEG Pz-Oz", "Pz-Oz", "PzOz"),
    ("EOG horizontal", "EOG", "HEOG", "EOG horiz"),
    ("Resp oro-nasal", "Resp", "Respiration", "Airflow"),
    ("EMG submental", "EMG", "EMG chin", "Chin EMG"),
    ("Temp rectal", "Temp", "Temperature"),
    ("Event marker", "Event", "Marker"),
)


def normalize_name(name: str) -> str:
    """Return the matching key of a channel name: lower case without spaces, ``-`` or ``_``."""
    return re.sub(r"[\s\-_]+", "", name).lower()


def _alias_group(key: str) -> frozenset[str]:
    for group in _ALIAS_GROUPS:
        keys = frozenset(normalize_name(name) for name in group)
        if key in keys:
            return keys
    return frozenset((key,))


def _find_one(available: Sequence[str], wanted: str) -> str | None:
    if wanted in available:
        return wanted
    key = normalize_name(wanted)
    for name in available:
        if normalize_name(name) == key:
            return name
    group = _alias_group(key)
    for name in available:
        if normalize_name(name) in group:
            return name
    return None


def match_channels(available: Sequence[str], wanted: Sequence[str], source: str) -> list[str]:
    """Find each requested channel among the channels of a file.

    Parameters
    ----------
    available : sequence of str
        Channel names as the file spells them.
    wanted : sequence of str
        Requested channel names, in the order the caller needs.
    source : str
        The file name, used in error messages.

    Returns
    -------
    list of str
        The file's spelling of each requested channel, in the order of ``wanted``.

    Raises
    ------
    SleepnasError
        If a requested channel is missing (the message lists the channels present),
        or two requested names find the same channel.
    """
    available = list(available)
    found: list[str] = []
    missing: list[str] = []
    for name in wanted:
        match = _find_one(available, name)
        if match is None:
            missing.append(name)
        else:
            found.append(match)
    if missing:
        present = ", ".join(repr(name) for name in available) or "none"
        raise SleepnasError(
            f"{source} has no channel {', '.join(repr(m) for m in missing)}: channels present "
            f"are {present}; choose others with --channels"
        )
    duplicates = sorted({name for name in found if found.count(name) > 1})
    if duplicates:
        raise SleepnasError(
            f"--channels requests channel {duplicates[0]!r} of {source} more than once: "
            f"give each channel once"
        )
    return found


def parse_channels(text: str) -> tuple[str, ...]:
    """Split a comma-separated ``--channels`` value into names; empty names are an error."""
    names = tuple(part.strip() for part in text.split(","))
    if not names or any(not name for name in names):
        raise SleepnasError(
            f"invalid --channels {text!r}: expected comma-separated channel names, "
            f"such as 'EEG Fpz-Cz,EOG horizontal'"
        )
    return names
