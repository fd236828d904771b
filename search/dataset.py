"""Windows of a subject-wise split, read in mini-batches and normalized, and model evaluation.

Windows stay raw on disk (a memmap is fine) and are read a mini-batch at a time. Each
mini-batch is normalized by the `WindowSpec` fitted on the training subjects only, so a
model gets the same input in training as on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError, check_option
from sleepnas.runtime.metrics import agreement
from sleepnas.runtime.spec import WindowSpec

logger = logging.getLogger(__name__)

#: Training windows the normalization scale is fitted on, at most (a seeded sample).
FIT_SCALE_WINDOWS = 2048


@dataclass
class TrainData:
    """Windows, labels and subjects with a subject-wise split and a fitted window spec.

    Attributes
    ----------
    windows : ndarray, shape (n_windows, n_chans, n_times)
        Raw windows; a memmap is read one mini-batch at a time.
    labels : ndarray of int64, shape (n_windows,)
    subjects : ndarray of str, shape (n_windows,)
    spec : WindowSpec
        Spec whose scale was fitted on training windows only.
    train_index, val_index, test_index : ndarray of int64
        Window indices of each part; ``test_index`` may be empty.
    split : dict
        ``{"train": [...], "val": [...], "test": [...]}`` subject ids.
    """

    windows: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    spec: WindowSpec
    train_index: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray
    split: dict[str, list[str]] = field(default_factory=dict)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.spec.stage_names

    def index(self, part: str) -> np.ndarray:
        """Return the window indices of ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        check_option("part", part, ("train", "val", "test"))
        return getattr(self, f"{part}_index")


def _split_dict(split: Any) -> dict[str, list[str]]:
    if isinstance(split, Mapping):
        parts = {key: split.get(key, ()) for key in ("train", "val", "test")}
    else:
        parts = {key: getattr(split, key, ()) for key in ("train", "val", "test")}
    return {key: [str(s) for s in value] for key, value in parts.items()}


def make_data(windows: np.ndarray, labels: np.ndarray, subjects: np.ndarray, spec: WindowSpec,
              split: Any, *, fit_windows: int = FIT_SCALE_WINDOWS, seed: int = 0) -> TrainData:
    """Select the windows of each part of a subject-wise split and fit the normalization.

    Parameters
    ----------
    windows : ndarray, shape (n_windows, n_chans, n_times)
        Raw windows (an ndarray or a memmap).
    labels : ndarray of int
        Class index per window.
    subjects : ndarray of str
        Subject id per window.
    spec : WindowSpec
        Channels, rate and scheme; its scale is (re)fitted here on training windows.
    split : SubjectSplit or mapping
        Subject ids of ``train``, ``val`` and optionally ``test``.
    fit_windows : int
        At most this many training windows, a seeded sample, fit the scale, so a large
        cohort is not read whole into memory.
    seed : int
        Seed of that sample.

    Returns
    -------
    TrainData
    """
    labels = np.asarray(labels, dtype=np.int64)
    subjects = np.asarray(subjects).astype(str)
    if windows.ndim != 3 or not len(windows) == len(labels) == len(subjects):
        raise SleepnasError(
            f"windows of shape {tuple(windows.shape)}, {len(labels)} labels and {len(subjects)} "
            f"subjects do not match: expected (n_windows, n_chans, n_times) and n_windows of each")
    if windows.shape[1:] != (spec.n_chans, spec.n_times):
        raise SleepnasError(
            f"windows have shape {tuple(windows.shape[1:])} per window: the window spec expects "
            f"({spec.n_chans}, {spec.n_times}) for channels {', '.join(spec.channels)}")
    n_classes = len(spec.stage_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise SleepnasError(f"labels outside 0..{n_classes - 1} for scheme {spec.scheme!r}")

    parts = _split_dict(split)
    overlap = (set(parts["train"]) & set(parts["val"])) | (set(parts["test"]) & set(parts["train"] + parts["val"]))
    if overlap:
        raise SleepnasError(f"subjects {sorted(overlap)} are in more than one part of the split")
    index = {key: np.flatnonzero(np.isin(subjects, value)).astype(np.int64) for key, value in parts.items()}
    for key in ("train", "val"):
        if len(index[key]) == 0:
            raise SleepnasError(
                f"the {key} subjects {parts[key]} have no windows: give more subjects, "
                f"or a split whose {key} part is not empty")

    rng = np.random.default_rng(seed)
    sample = index["train"]
    if len(sample) > fit_windows:
        sample = np.sort(rng.choice(sample, size=fit_windows, replace=False))
    fitted = spec.fit_scale(np.asarray(windows[sample], dtype=np.float32))
    return TrainData(windows, labels, subjects, fitted, index["train"], index["val"], index["test"], parts)


def data_from_cohort(cohort: Any, split: Any, **kwargs: Any) -> TrainData:
    """Build `TrainData` from a window store cohort (``windows``, ``labels``, ``subjects``, ``spec``).

    Keyword arguments go to `make_data`.
    """
    return make_data(cohort.windows, cohort.labels, cohort.subjects, cohort.spec, split, **kwargs)


def read_batch(data: TrainData, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, normalize and move the windows at ``idx``, in the order of ``idx``."""
    # Sorted indices read a memmap front to back; the inverse order puts them back.
    order = np.argsort(idx, kind="stable")
    raw = np.asarray(data.windows[idx[order]], dtype=np.float32)[np.argsort(order, kind="stable")]
    x = data.spec.normalize(raw)
    return torch.from_numpy(x).to(device), torch.from_numpy(data.labels[idx]).to(device)


@torch.no_grad()
def predict(model: nn.Module, data: TrainData, index: np.ndarray, *, batch_size: int = 128,
            device: torch.device | None = None) -> tuple[np.ndarray, float]:
    """Predict the class of the windows at ``index``; return ``(y_pred, mean cross-entropy)``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions, loss_sum = [], 0.0
    index = np.asarray(index, dtype=np.int64)
    try:
        for start in range(0, len(index), batch_size):
            x, y = read_batch(data, index[start:start + batch_size], device)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            predictions.append(logits.argmax(1).cpu().numpy())
    finally:
        model.train(was_training)
    y_pred = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    return y_pred, loss_sum / max(len(index), 1)


def evaluate_model(model: nn.Module, data: TrainData, part: str | np.ndarray = "test", *,
                   batch_size: int = 128, device: torch.device | None = None,
                   per_subject: bool = True) -> dict[str, Any]:
    """Evaluate ``model`` on one part of the split.

    Parameters
    ----------
    model : nn.Module
    data : TrainData
    part : str or ndarray
        ``"train"``, ``"val"``, ``"test"``, or window indices.
    batch_size : int
        Windows per forward pass.
    device : torch.device, optional
        Default: the device of the model's parameters.
    per_subject : bool
        Add ``per_subject``: subject id -> accuracy, macro-F1, kappa, windows.

    Returns
    -------
    dict
        The keys of `sleepnas.runtime.metrics.agreement` plus ``loss`` (mean unweighted
        cross-entropy), and ``per_subject`` when asked.
    """
    index = data.index(part) if isinstance(part, str) else np.asarray(part, dtype=np.int64)
    if len(index) == 0:
        raise SleepnasError(f"cannot evaluate on {part if isinstance(part, str) else 'the given'} "
                            f"windows: there are none")
    y_pred, loss = predict(model, data, index, batch_size=batch_size, device=device)
    y_true = data.labels[index]
    metrics = agreement(y_true, y_pred, data.stage_names)
    metrics["loss"] = loss
    if per_subject:
        subjects = data.subjects[index]
        metrics["per_subject"] = {}
        for subject in sorted(set(subjects)):
            mask = subjects == subject
            one = agreement(y_true[mask], y_pred[mask], data.stage_names)
            metrics["per_subject"][subject] = {key: one[key] for key in
                                               ("accuracy", "macro_f1", "kappa", "n_windows")}
    return metrics
