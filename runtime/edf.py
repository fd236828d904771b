"""Read and check the fixed-size header of an EDF, EDF+ or BDF file, without its data.

The header gives the signal labels, rates and length of a recording, so a file can
be checked (is it EDF at all, is it truncated, which channels does it have) before
MNE reads megabytes of samples from it. The patient and recording fields are never
parsed: nothing that identifies a person leaves this module.

Format: B. Kemp et al., "A simple format for exchange of digitized polygraphic
recordings", Electroencephalogr. Clin. Neurophysiol. 82:391-393 (1992), and
B. Kemp, J. Olivan, "European data format 'plus' (EDF+)", Clin. Neurophysiol.
114:1755-1761 (2003). BDF is the BioSemi variant with 24-bit samples.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SleepnasError

_FIXED_BYTES = 256
_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")


@dataclass(frozen=True)
class EdfHeader:
    """The parts of an EDF/BDF header that sleepnas uses.

    Attributes
    ----------
    path : Path
        The file.
    kind : str
        ``"EDF"`` or ``"BDF"``.
    labels : tuple of str
        Labels of the data signals, stripped, without EDF+ annotation signals.
    samples_per_record : tuple of int
        Samples per data record of each signal in ``labels``.
    record_duration_s : float
        Duration of one data record in seconds.
    n_records : int
        Number of data records.
    has_annotations : bool
        Whether the file has an EDF+/BDF+ annotation signal.
    start : datetime or None
        Start of the recording, or ``None`` if the header's date or time is invalid.
    """

    path: Path
    kind: str
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    record_duration_s: float
    n_records: int
    has_annotations: bool
    start: dt.datetime | None

    @property
    def duration_s(self) -> float:
        """Length of the recording in seconds."""
        return self.n_records * self.record_duration_s

    def sfreq(self, label: str) -> float:
        """Sampling rate in Hz of the signal called ``label``."""
        index = self.labels.index(label)
        return self.samples_per_record[index] / self.record_duration_s


def _field(raw: bytes, start: int, width: int) -> str:
    return raw[start:start + width].decode("latin-1").strip()


def _number(text: str, name: str, path: Path, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise SleepnasError(
            f"{path} has an invalid EDF header: {name} is {text!r}, not a number; "
            f"the file is damaged or not an EDF/BDF file"
        ) from None


def _parse_start(date_text: str, time_text: str) -> dt.datetime | None:
    try:
        day, month, year = (int(part) for part in date_text.split("."))
        hour, minute, second = (int(part) for part in time_text.split("."))
        # EDF stores two-digit years; 85-99 mean 1985-1999 (the EDF spec's clipping date).
        year += 1900 if year >= 85 else 2000
        return dt.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def read_edf_header(path: str | os.PathLike) -> EdfHeader:
    """Read and check the header of an EDF/EDF+/BDF file.

    Raises
    ------
    SleepnasError
        If the file is missing, is not EDF or BDF, has an invalid header, or is
        shorter than its header declares (truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise SleepnasError(f"{path} not found: expected an EDF or BDF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        fixed = f.read(_FIXED_BYTES)
        if len(fixed) < _FIXED_BYTES:
            raise SleepnasError(f"{path} is not an EDF or BDF file: it is only {size} bytes long")
        if fixed[:8] == b"0       ":
            kind, sample_bytes = "EDF", 2
        elif fixed[:8] == b"\xffBIOSEMI":
            kind, sample_bytes = "BDF", 3
        else:
            raise SleepnasError(
                f"{path} is not an EDF or BDF file: it does not start with an EDF or BDF "
                f"version field"
            )
        n_signals = int(_number(_field(fixed, 252, 4), "the number of signals", path, int))
        if n_signals <= 0:
            raise SleepnasError(f"{path} has an invalid EDF header: it declares {n_signals} signals")
        signal_part = f.read(256 * n_signals)
    if len(signal_part) < 256 * n_signals:
        raise SleepnasError(f"{path} is truncated: its header ends before the {n_signals} signal "
                            f"descriptions it declares")

    header_bytes = int(_number(_field(fixed, 184, 8), "the header size", path, int))
    n_records = int(_number(_field(fixed, 236, 8), "the number of data records", path, int))
    record_duration_s = float(_number(_field(fixed, 244, 8), "the data record duration", path,
                                      float))
    labels = [_field(signal_part, 16 * i, 16) for i in range(n_signals)]
    offset = 216 * n_signals
    samples = [int(_number(_field(signal_part, offset + 8 * i, 8), "a samples-per-record field",
                           path, int)) for i in range(n_signals)]
    if min(samples) <= 0:
        raise SleepnasError(f"{path} has an invalid EDF header: a signal has {min(samples)} "
                            f"samples per data record")

    record_bytes = sum(samples) * sample_bytes
    data_bytes = size - header_bytes
    if n_records < 0:
        # EDF allows -1 while a recording is being written; count whole records instead.
        n_records = max(data_bytes, 0) // record_bytes
    elif data_bytes < n_records * record_bytes:
        raise SleepnasError(
            f"{path} is truncated: its header declares {n_records} data records "
            f"({header_bytes + n_records * record_bytes} bytes) but the file has {size} bytes"
        )
    if n_records == 0:
        raise SleepnasError(f"{path} has no data records: the file is empty or truncated")

    is_annotation = [label in _ANNOTATION_LABELS for label in labels]
    return EdfHeader(
        path=path,
        kind=kind,
        labels=tuple(label for label, a in zip(labels, is_annotation) if not a),
        samples_per_record=tuple(n for n, a in zip(samples, is_annotation) if not a),
        record_duration_s=record_duration_s,
        n_records=n_records,
        has_annotations=any(is_annotation),
        start=_parse_start(_field(fixed, 168, 8), _field(fixed, 176, 8)),
    )
