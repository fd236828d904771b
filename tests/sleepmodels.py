"""Tiny sleepnas ONNX models built with ``onnx.helper``, for tests that need no torch.

The model computes, for each channel of a normalized window, the mean absolute value,
and returns ``logits = features @ weight.T + bias``. Its predictions are therefore
deterministic, easy to compute by hand (`expected_logits`), and follow the signal:
a window whose channel 0 is large scores differently from one whose channel 1 is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sleepnas.runtime.spec import WindowSpec

METADATA_KEYS = ("sleepnas.format", "sleepnas.window_spec", "sleepnas.stages",
                 "sleepnas.genotype", "sleepnas.model", "sleepnas.metrics", "sleepnas.versions")


def default_parameters(n_classes: int, n_chans: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(weight, bias)`` of a nearest-centroid classifier over the features.

    ``logits_k = 2 c_k . f - |c_k|^2`` ranks classes as ``-|f - c_k|^2`` does, so each
    class wins near its centroid ``c_k`` and every class is reachable. Centroids lie
    between 0.5 and 2 in units of the normalized mean |x|, where signals of a few
    times the channel's scale fall.
    """
    centroids = np.array([[0.5 + 1.5 * ((k + c) % n_classes) / max(n_classes - 1, 1)
                           for c in range(n_chans)] for k in range(n_classes)])
    weight = (2.0 * centroids).astype(np.float32)
    bias = (-(centroids**2).sum(axis=1)).astype(np.float32)
    return weight, bias


def metadata_for(spec: WindowSpec, *, model_name: str = "linear-test") -> dict[str, str]:
    """Return the ``sleepnas.*`` metadata an exported model carries for ``spec``."""
    return {
        "sleepnas.format": "1",
        "sleepnas.window_spec": spec.to_json(),
        "sleepnas.stages": json.dumps(list(spec.stage_names)),
        "sleepnas.genotype": "",
        "sleepnas.model": model_name,
        "sleepnas.metrics": json.dumps({"accuracy": 0.5, "macro_f1": 0.4, "kappa": 0.3,
                                        "per_stage_f1": {}}),
        "sleepnas.versions": json.dumps({"sleepnas": "0.1.0", "onnx": onnx.__version__}),
    }


def build_linear_model(path: str | Path, spec: WindowSpec, *, weight: np.ndarray | None = None,
                       bias: np.ndarray | None = None, metadata: dict[str, str] | None = None,
                       drop_keys: Iterable[str] = (), n_times: int | None = None,
                       n_classes: int | None = None) -> Path:
    """Write a sleepnas ONNX model whose logits are a linear map of per-channel mean |x|.

    Parameters
    ----------
    path : path-like
        Where to write the ``.onnx`` file.
    spec : WindowSpec
        Must have a scale. Its channels and window length give the input shape.
    weight, bias : ndarray, optional
        Shapes (n_classes, n_chans) and (n_classes,); default `default_parameters`.
    metadata : dict, optional
        Replaces values of the default metadata (`metadata_for`).
    drop_keys : iterable of str
        Metadata keys to leave out, to build a file that is not a sleepnas model.
    n_times, n_classes : int, optional
        Override the input length or output width, to build a model that does not match
        its own window spec.
    """
    n_chans = spec.n_chans
    n_times = spec.n_times if n_times is None else n_times
    n_classes = len(spec.stage_names) if n_classes is None else n_classes
    default_weight, default_bias = default_parameters(n_classes, n_chans)
    weight = default_weight if weight is None else np.asarray(weight, np.float32)
    bias = default_bias if bias is None else np.asarray(bias, np.float32)

    graph = helper.make_graph(
        nodes=[
            helper.make_node("Abs", ["windows"], ["magnitude"]),
            helper.make_node("ReduceMean", ["magnitude"], ["features"], axes=[2], keepdims=0),
            helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"], transB=1),
        ],
        name="linear_test_model",
        inputs=[helper.make_tensor_value_info("windows", TensorProto.FLOAT,
                                              ["batch", n_chans, n_times])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="sleepnas-tests")
    model.ir_version = 8

    props = metadata_for(spec)
    props.update(metadata or {})
    for key in drop_keys:
        props.pop(key, None)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)

    path = Path(path)
    onnx.save(model, str(path))
    return path


def expected_logits(spec: WindowSpec, raw_windows: np.ndarray, weight: np.ndarray | None = None,
                    bias: np.ndarray | None = None) -> np.ndarray:
    """Compute by hand, in float64, the logits `build_linear_model` returns for raw windows.

    ``weight`` and ``bias`` default to `default_parameters`, as in `build_linear_model`.
    """
    default_weight, default_bias = default_parameters(len(spec.stage_names), spec.n_chans)
    weight = default_weight if weight is None else weight
    bias = default_bias if bias is None else bias
    normalized = spec.normalize(raw_windows).astype(np.float64)
    features = np.abs(normalized).mean(axis=-1)
    return features @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)


def small_spec(channels: Sequence[str] = ("EEG Fpz-Cz", "EMG submental"), *,
               sfreq: float = 100.0, scheme: str = "aasm5",
               scale: Sequence[float] | None = None) -> WindowSpec:
    """Return a fitted spec for a few channels, for models that run fast in tests."""
    scale = tuple(scale) if scale is not None else tuple(10.0 for _ in channels)
    return WindowSpec(channels=tuple(channels), sfreq=sfreq, scheme=scheme, scale=scale)


def write_psg(path: str | Path, signals: dict[str, np.ndarray], sfreq: float = 100.0) -> Path:
    """Write an EDF file with one signal per name, given in microvolts, at ``sfreq``.

    MNE reads microvolt signals back in volts, so the data seen by the runtime is
    ``signals * 1e-6`` up to the 16-bit quantization of EDF.
    """
    from edfio import Edf, EdfSignal

    edf_signals = []
    for label, data in signals.items():
        data = np.asarray(data, dtype=np.float64)
        low, high = float(np.min(data)), float(np.max(data))
        if high <= low:
            high = low + 1.0
        edf_signals.append(EdfSignal(data, sampling_frequency=sfreq, label=label,
                                     physical_dimension="uV", physical_range=(low, high)))
    path = Path(path)
    Edf(edf_signals).write(path)
    return path


def write_hypnogram(path: str | Path, stages: Sequence[tuple[float, float, str]]) -> Path:
    """Write an EDF+ annotation file of ``(onset_s, duration_s, text)`` stages."""
    from edfio import Edf, EdfAnnotation

    path = Path(path)
    Edf([], annotations=[EdfAnnotation(o, d, t) for o, d, t in stages]).write(path)
    return path
