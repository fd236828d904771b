"""INT8 quantization of an exported model with onnxruntime's quantization tools.

Convolutions are quantized statically in QDQ format: activation ranges come from
calibration windows (normalized training windows) run through the float model, and
weights are quantized per output channel. LSTM and MatMul nodes are quantized
dynamically (int8 weights, activation ranges computed per run), because their inputs
vary too much between windows for a fixed range. Each node type is timed alone
against the float model, and a type that is not faster in INT8 on this CPU stays in float.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sleepnas.runtime.errors import SleepnasError

from .parity import WindowSample, onnx_logits

logger = logging.getLogger(__name__)

#: Node types quantized statically (QDQ, calibrated) and dynamically.
STATIC_TYPES = ("Conv",)
DYNAMIC_TYPES = ("LSTM", "MatMul")

#: A node type stays in INT8 only if that makes the model's p50 at least 3 % lower.
#: A smaller gain is within the spread of repeated p50 measurements on a shared CPU
#: (an estimate), so it would cost accuracy for nothing.
MIN_SPEEDUP = 0.03

#: Batch size of the calibration runs.
_CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class QuantizationReport:
    """Accuracy and latency of an INT8 model against its float model.

    Attributes
    ----------
    quantized_types : tuple of str
        Node types in INT8 in the written model.
    float_types : dict
        Node type -> why it stayed in float (not faster in INT8, or not in the graph).
    type_p50_ms : dict
        Node type -> p50 latency (ms, batch 1) of the float model with only that type in INT8.
    float_p50_ms, int8_p50_ms : float
        p50 latency at batch 1 of the float and the written INT8 model, in ms.
    agreement_with_float : float
        Share of evaluation windows whose predicted stage is the float model's.
    float_accuracy, int8_accuracy : float or None
        Accuracy against the labels, when the evaluation windows have labels.
    float_bytes, int8_bytes : int
        Serialized sizes.
    n_windows : int
        Evaluation windows.
    calibration_source, evaluation_source : str
        Where the calibration and evaluation windows came from.
    threads : int
        Intra-op threads of the latency measurements.
    """

    quantized_types: tuple[str, ...]
    float_types: dict[str, str]
    type_p50_ms: dict[str, float]
    float_p50_ms: float
    int8_p50_ms: float
    agreement_with_float: float
    float_accuracy: float | None
    int8_accuracy: float | None
    float_bytes: int
    int8_bytes: int
    n_windows: int
    calibration_source: str
    evaluation_source: str
    threads: int = 1

    @property
    def latency_ratio(self) -> float:
        """INT8 p50 latency over float p50 latency (below 1 means INT8 is faster)."""
        return self.int8_p50_ms / self.float_p50_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "latency_ratio": self.latency_ratio}

    def describe(self) -> str:
        """Return a few lines with the latency and accuracy change."""
        lines = [
            f"INT8 node types: {', '.join(self.quantized_types) or 'none'}",
            f"p50 latency at batch 1, {self.threads} thread(s): float {self.float_p50_ms:.3f} ms, "
            f"INT8 {self.int8_p50_ms:.3f} ms (ratio {self.latency_ratio:.2f})",
            f"equal predicted stages INT8 vs float: {self.agreement_with_float:.2%} of "
            f"{self.n_windows} windows ({self.evaluation_source})",
            f"size: float {self.float_bytes} bytes, INT8 {self.int8_bytes} bytes",
        ]
        if self.float_accuracy is not None:
            lines.append(f"accuracy against labels: float {self.float_accuracy:.2%}, "
                         f"INT8 {self.int8_accuracy:.2%}")
        lines.extend(f"{kind} left in float: {why}" for kind, why in self.float_types.items())
        return "\n".join(lines)


class WindowsReader:
    """Feed normalized windows to onnxruntime's calibration in fixed-size batches.

    Implements onnxruntime's ``CalibrationDataReader`` protocol (``get_next``,
    ``rewind``), returning ``None`` when the windows are used up.
    """

    def __init__(self, windows: np.ndarray, input_name: str = "windows",
                 batch_size: int = _CALIBRATION_BATCH) -> None:
        self.windows = np.ascontiguousarray(windows, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.windows):
            return None
        batch = self.windows[self._start:self._start + self.batch_size]
        self._start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._start = 0


def _node_types(model_bytes: bytes) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load_from_string(model_bytes).graph.node)


def _quantize(prepared: Path, out: Path, types: tuple[str, ...], calibration: np.ndarray) -> None:
    """Write ``prepared`` with ``types`` quantized to ``out``: static types first, then dynamic."""
    with _quiet_root_logger():
        _quantize_types(prepared, out, types, calibration)


@contextlib.contextmanager
def _quiet_root_logger():
    """Hide onnxruntime's quantization messages, which it logs on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_types(prepared: Path, out: Path, types: tuple[str, ...], calibration: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    static = [t for t in types if t in STATIC_TYPES]
    dynamic = [t for t in types if t in DYNAMIC_TYPES]
    current = prepared
    if static:
        quantize_static(str(current), str(out), WindowsReader(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=static, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        current = out
    if dynamic:
        quantize_dynamic(str(current), str(out), op_types_to_quantize=dynamic,
                         weight_type=QuantType.QInt8)


def _quantize_checked(prepared: Path, out: Path, types: tuple[str, ...], calibration: np.ndarray,
                      probe: np.ndarray) -> None:
    """Quantize and run once, turning a failure into one line that names the node types."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    try:
        _quantize(prepared, out, types, calibration)
        onnx_logits(out.read_bytes(), probe, threads=1)
    except (ort_state.Fail, ort_state.NotImplemented, ort_state.InvalidGraph,
            ort_state.RuntimeException, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SleepnasError(f"INT8 quantization of node type(s) {', '.join(types)} failed: {first_line}; "
                            f"export without --quantize to keep the float model") from err


def _p50_ms(path: Path, threads: int, warmup: int, repeats: int) -> float:
    from sleepnas.runtime.timing import time_model

    return time_model(path, threads=threads, batch_size=1, warmup=warmup, repeats=repeats).p50_ms


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return float(np.mean(logits.argmax(axis=1) == labels))


def quantize_int8(float_model: bytes, calibration: WindowSample, evaluation: WindowSample, *,
                  metadata: dict[str, str] | None = None,
                  threads: int = 1, warmup: int = 10, repeats: int = 50) -> tuple[bytes, QuantizationReport]:
    """Quantize a float ONNX model to INT8 where that makes it faster on this CPU.

    Parameters
    ----------
    float_model : bytes
        The serialized float model (input ``windows``, output ``logits``).
    calibration : WindowSample
        Normalized windows whose activation ranges calibrate the static quantization;
        training windows, so the test windows stay unseen.
    evaluation : WindowSample
        Windows on which INT8 predictions are compared with float ones and with labels.
    metadata : dict, optional
        ``metadata_props`` to write into the INT8 model; those of the float model by default.
    threads : int
        Intra-op threads of the latency measurements.
    warmup, repeats : int
        Untimed and timed runs of each latency measurement at batch 1.

    Returns
    -------
    bytes
        The INT8 model.
    QuantizationReport

    Raises
    ------
    SleepnasError
        If onnxruntime cannot quantize or run a node type.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    present = _node_types(float_model)
    candidates = tuple(t for t in STATIC_TYPES + DYNAMIC_TYPES if present[t])
    float_types = {t: "not in the graph" for t in STATIC_TYPES + DYNAMIC_TYPES if not present[t]}
    probe = evaluation.windows[:2]

    with tempfile.TemporaryDirectory(prefix="sleepnas-int8-") as tmp:
        tmp_dir = Path(tmp)
        float_path = tmp_dir / "float.onnx"
        float_path.write_bytes(float_model)
        prepared = tmp_dir / "prepared.onnx"
        with _quiet_root_logger():
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        float_p50 = _p50_ms(float_path, threads, warmup, repeats)

        # NOTE: each type is timed alone, so two types that are slower alone are never tried together.
        type_p50: dict[str, float] = {}
        int8_types: list[str] = []
        for kind in candidates:
            variant = tmp_dir / f"only-{kind}.onnx"
            _quantize_checked(prepared, variant, (kind,), calibration.windows, probe)
            type_p50[kind] = _p50_ms(variant, threads, warmup, repeats)
            if type_p50[kind] <= (1.0 - MIN_SPEEDUP) * float_p50:
                int8_types.append(kind)
            else:
                float_types[kind] = (f"not faster in INT8 ({type_p50[kind]:.3f} ms vs float "
                                     f"{float_p50:.3f} ms at batch 1)")
            logger.info("%s in INT8: p50 %.3f ms, float %.3f ms", kind, type_p50[kind], float_p50)

        final_path = tmp_dir / "int8.onnx"
        if int8_types:
            _quantize_checked(prepared, final_path, tuple(int8_types), calibration.windows, probe)
        else:
            final_path.write_bytes(float_model)
        int8_model = onnx.load(str(final_path))
        if metadata is None:
            metadata = {p.key: p.value for p in onnx.load_from_string(float_model).metadata_props}
        del int8_model.metadata_props[:]
        for key, value in metadata.items():
            int8_model.metadata_props.add(key=key, value=value)
        int8_bytes = int8_model.SerializeToString()
        final_path.write_bytes(int8_bytes)
        int8_p50 = _p50_ms(final_path, threads, warmup, repeats)

    float_logits = onnx_logits(float_model, evaluation.windows)
    int8_logits = onnx_logits(int8_bytes, evaluation.windows)
    equal = float(np.mean(float_logits.argmax(axis=1) == int8_logits.argmax(axis=1)))
    report = QuantizationReport(
        quantized_types=tuple(int8_types), float_types=float_types, type_p50_ms=type_p50,
        float_p50_ms=float_p50, int8_p50_ms=int8_p50, agreement_with_float=equal,
        float_accuracy=_accuracy(float_logits, evaluation.labels),
        int8_accuracy=_accuracy(int8_logits, evaluation.labels),
        float_bytes=len(float_model), int8_bytes=len(int8_bytes), n_windows=len(evaluation.windows),
        calibration_source=calibration.source, evaluation_source=evaluation.source, threads=threads)
    return int8_bytes, report
