"""INT8 quantization: which node types go to INT8, what the report says, and failures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sleepnas.export import quantize
from sleepnas.export.onnx_export import build_metadata, export_onnx, set_metadata
from sleepnas.export.parity import WindowSample, onnx_logits, random_windows
from sleepnas.export.quantize import QuantizationReport, WindowsReader, quantize_int8
from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.metrics import agreement

from .runs import TINY_SPEC


class ConvLstmAttention(nn.Module):
    """Convolutions, an LSTM, self-attention and a linear classifier: every quantized node type."""

    def __init__(self, n_chans: int = 2, n_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(n_chans, width, 50, stride=6), nn.ReLU(),
                                      nn.MaxPool1d(8), nn.Conv1d(width, width, 3, padding=1), nn.ReLU())
        self.lstm = nn.LSTM(width, width // 2, batch_first=True, bidirectional=True)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.projection = nn.Linear(width, width)
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).transpose(1, 2)
        h, _ = self.lstm(h)
        h, _ = self.attention(h, h, h, need_weights=False)
        h = torch.relu(h @ self.projection.weight.T)
        return self.classifier(h.mean(dim=1))


@pytest.fixture(scope="module")
def float_model() -> tuple[bytes, dict[str, str]]:
    torch.manual_seed(0)
    proto = export_onnx(ConvLstmAttention().eval(), TINY_SPEC)
    metadata = build_metadata(TINY_SPEC, model_name="test", genotype_json="", metrics={"accuracy": 0.5})
    set_metadata(proto, metadata)
    return proto.SerializeToString(), metadata


def _samples() -> tuple[WindowSample, WindowSample]:
    calibration = WindowSample(random_windows(TINY_SPEC, 16, seed=1), None, "random: calibration")
    labels = np.random.default_rng(2).integers(0, 5, size=24)
    evaluation = WindowSample(random_windows(TINY_SPEC, 24, seed=2), labels, "random: evaluation")
    return calibration, evaluation


def _node_types(model_bytes: bytes) -> Counter:
    return Counter(node.op_type for node in onnx.load_from_string(model_bytes).graph.node)


def test_float_model_has_quantized_types(float_model):
    types = _node_types(float_model[0])

    assert types["Conv"] == 2
    assert types["LSTM"] == 1
    assert types["MatMul"] >= 1


@pytest.mark.slow
def test_int8_export_reports_change(float_model):
    data, metadata = float_model
    calibration, evaluation = _samples()

    int8, report = quantize_int8(data, calibration, evaluation, repeats=10, warmup=2)

    float_logits = onnx_logits(data, evaluation.windows)
    int8_logits = onnx_logits(int8, evaluation.windows)
    expected_agreement = float(np.mean(float_logits.argmax(1) == int8_logits.argmax(1)))
    assert report.agreement_with_float == expected_agreement
    assert report.agreement_with_float >= 0.5
    assert report.float_accuracy == agreement(evaluation.labels, float_logits.argmax(1),
                                              TINY_SPEC.stage_names)["accuracy"]
    assert report.int8_accuracy == agreement(evaluation.labels, int8_logits.argmax(1),
                                             TINY_SPEC.stage_names)["accuracy"]
    assert report.float_p50_ms > 0
    assert report.int8_p50_ms > 0
    assert report.latency_ratio == pytest.approx(report.int8_p50_ms / report.float_p50_ms)
    assert set(report.type_p50_ms) == {"Conv", "LSTM", "MatMul"}
    assert set(report.quantized_types) | set(report.float_types) == {"Conv", "LSTM", "MatMul"}
    assert report.int8_bytes == len(int8)
    assert report.float_bytes == len(data)
    assert report.n_windows == 24
    assert "equal predicted stages INT8 vs float" in report.describe()
    assert {p.key: p.value for p in onnx.load_from_string(int8).metadata_props} == metadata


@pytest.mark.slow
def test_slower_types_left_in_float(float_model, monkeypatch):
    data, _ = float_model
    calibration, evaluation = _samples()
    # Fixed latencies: Conv and MatMul faster in INT8, LSTM slower.
    latencies = {"float.onnx": 1.0, "only-Conv.onnx": 0.5, "only-LSTM.onnx": 1.2,
                 "only-MatMul.onnx": 0.9, "int8.onnx": 0.45}
    monkeypatch.setattr(quantize, "_p50_ms", lambda path, *args: latencies[path.name])

    int8, report = quantize_int8(data, calibration, evaluation)

    types = _node_types(int8)
    assert report.quantized_types == ("Conv", "MatMul")
    assert "LSTM" in report.float_types
    assert "1.200 ms vs float 1.000 ms" in report.float_types["LSTM"]
    assert report.latency_ratio == pytest.approx(0.45)
    assert types["QuantizeLinear"] > 0
    assert types["MatMulInteger"] > 0
    assert types["LSTM"] == 1
    assert types["DynamicQuantizeLSTM"] == 0


@pytest.mark.slow
def test_no_faster_type_keeps_float(float_model, monkeypatch):
    data, _ = float_model
    calibration, evaluation = _samples()
    monkeypatch.setattr(quantize, "_p50_ms", lambda path, *args: 1.0)

    int8, report = quantize_int8(data, calibration, evaluation)

    assert report.quantized_types == ()
    assert _node_types(int8) == _node_types(data)
    assert report.agreement_with_float == 1.0


@pytest.mark.slow
def test_unsupported_node_type_one_line(float_model, monkeypatch):
    data, _ = float_model
    calibration, evaluation = _samples()

    def unknown_op(prepared, out, types, windows):
        model = onnx.load(str(prepared))
        for node in model.graph.node:
            if node.op_type == types[0]:
                node.op_type = "NoSuchInt8Kernel"
        onnx.save(model, str(out))

    monkeypatch.setattr(quantize, "_quantize", unknown_op)

    with pytest.raises(SleepnasError, match=r"INT8 quantization of node type\(s\) Conv failed: .*"
                                            r"export without --quantize") as info:
        quantize_int8(data, calibration, evaluation)
    assert "\n" not in str(info.value)


def test_windows_reader_batches_and_rewinds():
    windows = random_windows(TINY_SPEC, 5, seed=0)
    reader = WindowsReader(windows, batch_size=2)

    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["windows"]))
    reader.rewind()

    assert sizes == [2, 2, 1]
    np.testing.assert_array_equal(reader.get_next()["windows"], windows[:2])


def test_report_ratio_and_dict():
    report = QuantizationReport(quantized_types=("Conv",), float_types={}, type_p50_ms={"Conv": 1.0},
                                float_p50_ms=2.0, int8_p50_ms=1.5, agreement_with_float=0.95,
                                float_accuracy=None, int8_accuracy=None, float_bytes=10, int8_bytes=5,
                                n_windows=20, calibration_source="c", evaluation_source="e")

    assert report.latency_ratio == 0.75
    assert report.to_dict()["latency_ratio"] == 0.75
    assert "accuracy against labels" not in report.describe()
