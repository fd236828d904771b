"""Agreement between two hypnograms: accuracy, macro-F1, Cohen's kappa, per-stage F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the confusion matrix, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def cohen_kappa(cm: np.ndarray) -> float | None:
    """Cohen's kappa (Cohen 1960) from a confusion matrix; ``None`` if undefined."""
    n = cm.sum()
    if n == 0:
        return None
    observed = np.trace(cm) / n
    expected = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / n**2
    if expected == 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


def agreement(y_true: Sequence[int], y_pred: Sequence[int],
              stage_names: Sequence[str]) -> dict:
    """Compute the agreement metrics sleep-staging papers report.

    A stage absent from ``y_true`` has an undefined F1 (``None``), not 0, and is left
    out of the macro-F1, which averages the stages present in ``y_true``.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``kappa``, ``per_stage_f1`` (stage -> F1 or None),
        ``confusion`` (list of rows, true x predicted), ``n_windows``.
    """
    n_classes = len(stage_names)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    n = int(cm.sum())
    per_stage: dict[str, float | None] = {}
    for k, name in enumerate(stage_names):
        support = cm[k, :].sum()
        if support == 0:
            per_stage[name] = None
            continue
        predicted = cm[:, k].sum()
        tp = cm[k, k]
        per_stage[name] = float(2 * tp / (support + predicted))
    defined = [f for f in per_stage.values() if f is not None]
    return {
        "accuracy": float(np.trace(cm) / n) if n else None,
        "macro_f1": float(np.mean(defined)) if defined else None,
        "kappa": cohen_kappa(cm),
        "per_stage_f1": per_stage,
        "confusion": cm.tolist(),
        "n_windows": n,
    }
