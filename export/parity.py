"""Parity between a torch model and its ONNX export, on real windows where the data allows.

The check feeds the same normalized windows to the torch model (eager, float32) and
to onnxruntime, and compares the logits and the predicted stages. Windows come from
the run's test subjects when the recordings can be read, else from a seeded random
draw of normalized-looking windows, and the report names which.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.spec import WindowSpec

logger = logging.getLogger(__name__)

#: Largest absolute logit difference accepted between torch and onnxruntime.
#: Both compute in float32 but sum in different orders, because onnxruntime fuses
#: and reorders convolutions, GEMMs and LSTM gates. On the test models that moved
#: logits by less than 1e-6; deeper networks add up more (an estimate, not a bound).
#: A wrong export moves logits by far more than 1e-4.
DEFAULT_TOLERANCE = 1e-4

#: Windows compared by default.
DEFAULT_PARITY_WINDOWS = 64


@dataclass(frozen=True)
class WindowSample:
    """Normalized windows for a check, their labels when known, and where they came from.

    Attributes
    ----------
    windows : ndarray of float32, shape (n_windows, n_chans, n_times)
        Windows normalized with the run's window spec.
    labels : ndarray of int64 or None
        Class index per window; ``None`` for random windows.
    source : str
        ``"data set: ..."`` naming the data path and split, or ``"random: ..."``.
    """

    windows: np.ndarray
    labels: np.ndarray | None
    source: str


@dataclass(frozen=True)
class ParityReport:
    """Outcome of a parity check of torch against onnxruntime.

    Attributes
    ----------
    max_abs_diff : float
        Largest absolute difference of any logit over all windows.
    stage_agreement : float
        Share of windows whose predicted stage (argmax of the logits) is equal.
    n_windows : int
        Windows compared.
    source : str
        Where the windows came from (see `WindowSample.source`).
    tolerance : float
        The bound on ``max_abs_diff`` that the check applied.
    """

    max_abs_diff: float
    stage_agreement: float
    n_windows: int
    source: str
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        """Return one line with both figures, the tolerance and the window source."""
        return (f"largest logit difference {self.max_abs_diff:.3g} (tolerance {self.tolerance:g}), "
                f"equal predicted stages {self.stage_agreement:.2%} of {self.n_windows} windows "
                f"({self.source})")


def random_windows(spec: WindowSpec, n_windows: int, seed: int = 0) -> np.ndarray:
    """Draw seeded standard-normal windows clipped like normalized ones.

    Normalized EEG is roughly zero-median with unit robust spread, so this is a
    fair stand-in for parity and timing, but not for accuracy or calibration.
    """
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((n_windows, spec.n_chans, spec.n_times), dtype=np.float32)
    return np.clip(windows, -spec.clip, spec.clip, out=windows)


def _split_subjects(run_dir: Path, split: str) -> tuple[str, ...] | None:
    path = run_dir / "split.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SleepnasError(f"invalid split file {path}: {err}") from None
    subjects = data.get(split) if isinstance(data, dict) else None
    return tuple(str(s) for s in subjects) if subjects else None


def sample_windows(run_dir: str | Path, spec: WindowSpec, *, split: str = "test",
                   n_windows: int = DEFAULT_PARITY_WINDOWS, data_path: str | Path | None = None,
                   seed: int = 0, cache_dir: str | Path | None = None) -> WindowSample:
    """Pick normalized windows of one split of a run's data set, or random ones.

    Parameters
    ----------
    run_dir : path
        Run directory; its ``split.json`` names the subjects of each split and its
        ``config.json`` the data path, unless ``data_path`` is given.
    spec : WindowSpec
        The run's window spec (channels, length, fitted normalization).
    split : {"test", "train", "val"}
        Which subjects to draw windows from.
    n_windows : int
        Windows to return at most; they are spread evenly over the split.
    data_path : path, optional
        Folder of recordings; overrides the run's own data path and must exist.
    seed : int
        Seed of the random fallback.
    cache_dir : path, optional
        Cache folder of the window store; the default cache when ``None``.

    Returns
    -------
    WindowSample
        Real windows when the data path exists and the split has windows,
        otherwise random ones, with ``source`` saying which and why.
    """
    run_dir = Path(run_dir)
    if data_path is not None and not Path(data_path).exists():
        raise SleepnasError(f"--data-path {data_path} not found: give the folder of the run's "
                            f"recordings, or leave it out to use the run's own data path")
    if data_path is None:
        data_path = _config_data_path(run_dir)
    if data_path is None or not Path(data_path).exists():
        reason = "no data path in the run" if data_path is None else f"data path {data_path} not found"
        return _random_sample(spec, n_windows, seed, reason)

    subjects = _split_subjects(run_dir, split)
    from sleepnas.runtime.store import load_cohort

    cohort = load_cohort(data_path, spec, subjects=list(subjects) if subjects else None,
                         cache_dir=cache_dir)
    chosen = np.flatnonzero(np.isin(cohort.subjects, subjects)) if subjects else np.arange(
        len(cohort.labels))
    if len(chosen) == 0:
        return _random_sample(spec, n_windows, seed, f"no {split} windows in {data_path}")
    if len(chosen) > n_windows:
        chosen = chosen[np.linspace(0, len(chosen) - 1, n_windows).round().astype(np.int64)]

    windows = spec.normalize(np.asarray(cohort.windows[chosen]))
    labels = np.asarray(cohort.labels[chosen], dtype=np.int64)
    which = f"{split} subjects" if subjects else "all subjects (the run has no split.json)"
    source = f"data set: {len(chosen)} windows of the {which} in {data_path}"
    return WindowSample(windows=windows, labels=labels, source=source)


def _random_sample(spec: WindowSpec, n_windows: int, seed: int, reason: str) -> WindowSample:
    logger.info("using %d seeded random windows: %s", n_windows, reason)
    return WindowSample(windows=random_windows(spec, n_windows, seed), labels=None,
                        source=f"random: {n_windows} seeded normalized windows, {reason}")


def _config_data_path(run_dir: Path) -> str | None:
    """Return the data path a run was trained on: ``config.json`` top level or its ``options``."""
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    options = config.get("options") if isinstance(config.get("options"), dict) else {}
    value = config.get("data_path") or options.get("data_path")
    return str(value) if value else None


def onnx_logits(model: bytes | str | Path, windows: np.ndarray, *, batch_size: int = 64,
                threads: int | None = None) -> np.ndarray:
    """Run an ONNX model on windows in batches with onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [session.run(None, {input_name: windows[i:i + batch_size]})[0]
               for i in range(0, len(windows), batch_size)]
    return np.concatenate(outputs).astype(np.float32)


def torch_logits(model, windows: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Run a torch model (eval mode, no gradients) on windows in batches."""
    import torch

    model.eval()
    with torch.inference_mode():
        outputs = [model(torch.from_numpy(np.ascontiguousarray(windows[i:i + batch_size]))).numpy()
                   for i in range(0, len(windows), batch_size)]
    return np.concatenate(outputs).astype(np.float32)


def check_parity(model, onnx_model: bytes | str | Path, sample: WindowSample, *,
                 tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Compare torch and onnxruntime logits on the same windows.

    Parameters
    ----------
    model : torch.nn.Module
        The torch model, in eval mode.
    onnx_model : bytes or path
        The exported model, serialized or on disk.
    sample : WindowSample
        Normalized windows to feed both.
    tolerance : float
        Bound on the largest absolute logit difference; see `DEFAULT_TOLERANCE`.

    Returns
    -------
    ParityReport
        Its ``passed`` is False above the tolerance; the caller decides to raise.
    """
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    reference = torch_logits(model, sample.windows)
    try:
        exported = onnx_logits(onnx_model, sample.windows)
    except (ort_state.Fail, ort_state.InvalidGraph, ort_state.NotImplemented,
            ort_state.InvalidArgument) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SleepnasError(f"onnxruntime {ort.__version__} cannot run the exported model: {reason}; "
                            f"try another --opset") from None
    if reference.shape != exported.shape:
        raise SleepnasError(f"the ONNX model returns logits of shape {exported.shape}, "
                            f"torch {reference.shape}: the export is wrong")
    diff = float(np.max(np.abs(reference - exported))) if reference.size else 0.0
    if not np.isfinite(diff):
        diff = float("inf")
    equal = float(np.mean(reference.argmax(axis=1) == exported.argmax(axis=1)))
    return ParityReport(max_abs_diff=diff, stage_agreement=equal, n_windows=len(sample.windows),
                        source=sample.source, tolerance=float(tolerance))
