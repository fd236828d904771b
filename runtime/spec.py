"""The window spec: what a model expects as input, and the normalization it was trained with.

Training writes a `WindowSpec`, the ONNX file carries it in its metadata, and the
runtime reads it from there. Batch training, batch scoring and streaming all call
`WindowSpec.normalize`, so a model sees the same numbers everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .errors import SleepnasError
from .stages import Scheme, get_scheme

#: The seven signals of a Sleep-EDF cassette recording, in file order.
CASSETTE_CHANNELS: tuple[str, ...] = (
    "EEG Fpz-Cz",
    "EEG Pz-Oz",
    "EOG horizontal",
    "Resp oro-nasal",
    "EMG submental",
    "Temp rectal",
    "Event marker",
)

#: 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class WindowSpec:
    """Channels, rate, window length, scheme and normalization of a model's input.

    Attributes
    ----------
    channels : tuple of str
        Channel names in the model's input order.
    sfreq : float
        Sampling rate in Hz that the model expects.
    window_s : float
        Window length in seconds.
    scheme : str
        Name of the class scheme (``"aasm5"`` or ``"rk7"``).
    scale : tuple of float or None
        Per-channel robust spread learned on the training split; ``None`` until fitted.
    clip : float
        Normalized values are clipped to ``[-clip, clip]``.
    """

    channels: tuple[str, ...] = CASSETTE_CHANNELS
    sfreq: float = 100.0
    window_s: float = 30.0
    scheme: str = "aasm5"
    scale: tuple[float, ...] | None = None
    clip: float = 20.0
    format_version: int = field(default=1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.scale is not None:
            object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
            if len(self.scale) != len(self.channels):
                raise SleepnasError(
                    f"window spec has {len(self.scale)} scales for {len(self.channels)} "
                    f"channels: expected one scale per channel"
                )
        get_scheme(self.scheme)

    @property
    def n_chans(self) -> int:
        return len(self.channels)

    @property
    def n_times(self) -> int:
        """Samples per window."""
        return int(round(self.sfreq * self.window_s))

    @property
    def scheme_obj(self) -> Scheme:
        return get_scheme(self.scheme)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.scheme_obj.stage_names

    def fit_scale(self, windows: np.ndarray) -> WindowSpec:
        """Return a copy whose per-channel scale is learned from training windows.

        The scale of a channel is the median over windows of that window's median
        absolute deviation, times 1.4826. A channel that is flat in every window
        (an unused event marker, say) gets scale 1.0 so it does not divide by zero.

        Parameters
        ----------
        windows : ndarray, shape (n_windows, n_chans, n_times)
            Raw training windows.
        """
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[1] != self.n_chans or len(windows) == 0:
            raise SleepnasError(
                f"cannot fit the normalization on windows of shape {windows.shape}: expected "
                f"(n_windows > 0, {self.n_chans}, {self.n_times})"
            )
        centred = windows - np.median(windows, axis=2, keepdims=True)
        mad = np.median(np.abs(centred), axis=2)
        scale = np.median(mad, axis=0) * MAD_TO_STD
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return replace(self, scale=tuple(float(s) for s in scale))

    def normalize(self, windows: np.ndarray) -> np.ndarray:
        """Normalize raw windows: subtract each window's per-channel median, divide by scale, clip.

        Each window is normalized on its own, so streaming and batch scoring agree.
        NaN samples become 0 after normalization.

        Parameters
        ----------
        windows : ndarray, shape (n_windows, n_chans, n_times) or (n_chans, n_times)

        Returns
        -------
        ndarray of float32, same shape
        """
        if self.scale is None:
            raise SleepnasError("the window spec has no normalization scale: fit it on training windows first")
        x = np.asarray(windows, dtype=np.float32)
        if x.shape[-2] != self.n_chans:
            raise SleepnasError(
                f"windows have {x.shape[-2]} channels: the model expects {self.n_chans} "
                f"({', '.join(self.channels)})"
            )
        median = np.nanmedian(x, axis=-1, keepdims=True) if np.isnan(x).any() else np.median(
            x, axis=-1, keepdims=True)
        scale = np.asarray(self.scale, dtype=np.float32)[:, None]
        out = (x - median) / scale
        np.nan_to_num(out, copy=False, nan=0.0)
        return np.clip(out, -self.clip, self.clip, out=out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["scale"] = None if self.scale is None else list(self.scale)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> WindowSpec:
        """Build a spec from `to_dict` output; unknown or missing keys raise a `SleepnasError`."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SleepnasError(f"invalid window spec: unknown keys {unknown}; expected {sorted(known)}")
        if "channels" not in data:
            raise SleepnasError("invalid window spec: missing key 'channels'")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WindowSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SleepnasError(f"invalid window spec JSON: {err}") from None
        if not isinstance(data, dict):
            raise SleepnasError("invalid window spec JSON: expected an object")
        return cls.from_dict(data)
