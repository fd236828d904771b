"""Loading sleepnas ONNX models and running them on windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sleepnas.runtime.errors import SleepnasError
from sleepnas.runtime.model import REQUIRED_KEYS, load_model, resolve_providers
from sleepnas.runtime.spec import WindowSpec
from tests.sleepmodels import build_linear_model, expected_logits


def test_load_reads_spec_and_metadata(linear_model, volt_spec):
    assert linear_model.spec == volt_spec
    assert linear_model.stage_names == ("W", "N1", "N2", "N3", "REM")
    assert linear_model.metadata["model"] == "linear-test"
    assert linear_model.metadata["genotype"] == ""
    assert linear_model.metadata["metrics"]["kappa"] == 0.3
    assert "onnx" in linear_model.metadata["versions"]
    assert linear_model.providers == ["CPUExecutionProvider"]


def test_logits_match_hand_computation(linear_model, volt_spec):
    rng = np.random.default_rng(3)
    raw = rng.normal(0.0, 1.0, size=(7, 2, 3000)) * np.array([3e-5, 5e-6])[:, None]
    logits = linear_model.predict_logits(volt_spec.normalize(raw), batch_size=3)
    expected = expected_logits(volt_spec, raw)
    assert logits.shape == (7, 5)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_proba_is_softmax_of_logits(linear_model, volt_spec):
    rng = np.random.default_rng(4)
    windows = volt_spec.normalize(rng.normal(0.0, 2e-5, size=(5, 2, 3000)))
    logits = linear_model.predict_logits(windows).astype(np.float64)
    proba = linear_model.predict_proba(windows)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(proba, expected, atol=1e-6)


def test_batch_size_does_not_change_logits(linear_model, volt_spec):
    windows = volt_spec.normalize(np.random.default_rng(5).normal(0.0, 2e-5, size=(10, 2, 3000)))
    reference = linear_model.predict_logits(windows, batch_size=10)
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(linear_model.predict_logits(windows, batch_size), reference,
                                   atol=1e-6)


def test_windows_of_wrong_shape_rejected(linear_model):
    with pytest.raises(SleepnasError, match=r"expected \(n_windows, 2, 3000\)"):
        linear_model.predict_logits(np.zeros((4, 3, 3000), np.float32))
    with pytest.raises(SleepnasError, match="expected"):
        linear_model.predict_logits(np.zeros((2, 3000), np.float32))


def test_missing_file_named(tmp_path):
    missing = tmp_path / "none.onnx"
    with pytest.raises(SleepnasError, match=r"none\.onnx not found"):
        load_model(missing)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all", b"\x08\x07" * 40])
def test_corrupt_file_rejected(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(SleepnasError, match=r"bad\.onnx: not a valid ONNX file"):
        load_model(path)


def test_truncated_model_rejected(tmp_path, model_path):
    data = model_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SleepnasError, match="not a valid ONNX file"):
        load_model(truncated)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_metadata_key_named(tmp_path, volt_spec, key):
    path = build_linear_model(tmp_path / "plain.onnx", volt_spec, drop_keys=[key])
    with pytest.raises(SleepnasError, match=rf"not a sleepnas model: metadata key '{key}' is missing"):
        load_model(path)


def test_optional_metadata_may_be_absent(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "bare.onnx", volt_spec,
                              drop_keys=["sleepnas.genotype", "sleepnas.model", "sleepnas.metrics",
                                         "sleepnas.versions"])
    model = load_model(path)
    assert model.metadata["metrics"] == {}
    assert model.metadata["versions"] == {}
    assert model.metadata["model"] == ""


def test_unknown_format_rejected(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "future.onnx", volt_spec, metadata={"sleepnas.format": "2"})
    with pytest.raises(SleepnasError, match="format '2'.*reads format '1'"):
        load_model(path)


def test_invalid_window_spec_rejected(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "spec.onnx", volt_spec,
                              metadata={"sleepnas.window_spec": "{not json"})
    with pytest.raises(SleepnasError, match="invalid sleepnas.window_spec"):
        load_model(path)


def test_spec_without_scale_rejected(tmp_path):
    spec = WindowSpec(channels=("EEG Fpz-Cz",), scale=None)
    path = build_linear_model(tmp_path / "unfitted.onnx", spec.fit_scale(np.ones((1, 1, 3000))),
                              metadata={"sleepnas.window_spec": spec.to_json()})
    with pytest.raises(SleepnasError, match="without a normalization scale"):
        load_model(path)


def test_stages_not_matching_scheme_rejected(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "stages.onnx", volt_spec,
                              metadata={"sleepnas.stages": json.dumps(["W", "S"])})
    with pytest.raises(SleepnasError, match=r"sleepnas.stages \['W', 'S'\].*aasm5"):
        load_model(path)


def test_input_shape_not_matching_spec_rejected(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "short.onnx", volt_spec, n_times=2500)
    with pytest.raises(SleepnasError, match=r"input of shape \['batch', 2, 2500\].*\(batch, 2, 3000\)"):
        load_model(path)


def test_output_width_not_matching_stages_rejected(tmp_path, volt_spec):
    path = build_linear_model(tmp_path / "wide.onnx", volt_spec, n_classes=7)
    with pytest.raises(SleepnasError, match=r"logits of shape \['batch', 7\].*\(batch, 5\)"):
        load_model(path)


def test_provider_names_resolved():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(None) == ["CPUExecutionProvider"]


def test_unknown_provider_lists_available(model_path):
    with pytest.raises(SleepnasError, match="'NoSuchGPU' is not available.*CPUExecutionProvider"):
        load_model(model_path, providers="NoSuchGPU")


def test_invalid_threads_rejected(model_path):
    with pytest.raises(SleepnasError, match="--threads 0"):
        load_model(model_path, threads=0)
