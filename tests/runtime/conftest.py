"""Fixtures of the runtime tests: a tiny sleepnas ONNX model and small EDF recordings.

The builders live in ``tests/sleepmodels.py`` so tests of other packages can use them.
"""

from __future__ import annotations

import numpy as np
import pytest

from sleepnas.runtime.model import load_model
from tests.sleepmodels import build_linear_model, small_spec, write_psg

#: Scales in volts, as MNE returns EDF signals stored in microvolts.
VOLT_SCALE = (2e-5, 1e-5)
CHANNELS = ("EEG Fpz-Cz", "EMG submental")


@pytest.fixture
def volt_spec():
    return small_spec(CHANNELS, scale=VOLT_SCALE)


@pytest.fixture
def model_path(tmp_path, volt_spec):
    return build_linear_model(tmp_path / "linear.onnx", volt_spec)


@pytest.fixture
def linear_model(model_path):
    return load_model(model_path, threads=1)


def varying_signal(n_samples: int, seed: int = 0, window: int = 3000) -> np.ndarray:
    """Return a (2, n_samples) signal in microvolts whose amplitudes change every window."""
    rng = np.random.default_rng(seed)
    n_windows = -(-n_samples // window)
    amplitude = np.repeat(rng.uniform(5.0, 60.0, size=(2, n_windows)), window, axis=1)
    return rng.normal(0.0, 1.0, size=(2, n_samples)) * amplitude[:, :n_samples]


@pytest.fixture
def psg_path(tmp_path):
    """A 10.5-minute EDF recording: 21 windows at 100 Hz, then 20 s that fill no window."""
    data = varying_signal(21 * 3000 + 2000, seed=1)
    return write_psg(tmp_path / "night.edf", dict(zip(CHANNELS, data)))
